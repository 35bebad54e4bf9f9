"""The link core: handshake, then secure channel, behind one stream API (STYLE.md §1).

``receive_data(data, now)``, ``data_to_send()``, ``send_message(data, now)``,
``close(code, reason, now)``, ``get_timer()``, ``handle_timer(now)`` and
``connection_lost(now)``.  ``now`` is Unix time in seconds: certificates carry
wall-clock validity windows, so the link needs the calendar, not a monotonic clock.

The one decision worth knowing: when the handshake completes, its last bytes (the
initiator's FINISH) are taken out before the channel is created, and bytes the peer sent
after its final handshake message are fed straight into the channel, so nothing is lost
or reordered at the hand-over.  Application messages cannot be sent before
``Established``: there is no early data, by design (the responder is not yet sure who the
initiator is until FINISH verifies).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qudag_core.channel import ChannelConfig, SecureChannel
from qudag_core.channel.events import Terminated as ChannelTerminated
from qudag_core.errors import LocalProtocolError
from qudag_core.handshake import (
    HANDSHAKE_TIMEOUT,
    HandshakeComplete,
    InitiatorHandshake,
    ResponderContext,
    ResponderHandshake,
)
from qudag_core.handshake import Terminated as HandshakeTerminated
from qudag_core.identity import Identity, NodeCertificate
from qudag_core.link.events import Established, Terminated

__all__ = ["Link", "LinkConfig", "LinkNotEstablished"]


def _default_channel_config() -> ChannelConfig:
    return ChannelConfig(keepalive_interval=15.0, idle_timeout=45.0)


@dataclass(frozen=True, kw_only=True, slots=True)
class LinkConfig:
    """Timers and limits of one link.  Both ends should agree on the channel limits."""

    handshake_timeout: float = HANDSHAKE_TIMEOUT
    """Seconds the whole handshake may take before the link is dropped."""
    channel: ChannelConfig = field(default_factory=_default_channel_config)
    """Secure-channel limits: frame size, rekeying, keepalive (15 s) and idle close (45 s)."""
    cookie_threshold: int = 64
    """Listeners switch responders to cookie mode above this many handshakes in progress."""


class LinkNotEstablished(LocalProtocolError):
    """``send_message`` was called before the handshake completed or after the link ended."""


class Link:
    """One side of an authenticated link.  Build with ``Link.initiator`` or ``Link.responder``."""

    __slots__ = ("_hs", "_ch", "_config", "_out", "_terminated", "_established")

    def __init__(self, handshake, config: LinkConfig) -> None:
        self._hs = handshake
        self._ch: SecureChannel | None = None
        self._config = config
        self._out: list[bytes] = []
        self._terminated = False
        self._established: Established | None = None

    # -- construction -------------------------------------------------------------------
    @classmethod
    def initiator(
        cls,
        *,
        identity: Identity,
        now: float,
        rng,
        peer_certificate: NodeCertificate | bytes | None = None,
        expected_peer_id: bytes | None = None,
        certificate: NodeCertificate | None = None,
        config: LinkConfig | None = None,
    ) -> "Link":
        """The dialling side.  Without ``peer_certificate`` the handshake first asks the
        responder for its certificate (one extra round trip); ``expected_peer_id`` then
        pins who it must be."""
        cfg = config or LinkConfig()
        if certificate is None:
            certificate = identity.issue_certificate((), now=now)
        hs = InitiatorHandshake(
            identity,
            certificate,
            rng=rng,
            now=now,
            peer_certificate=peer_certificate,
            expected_peer_id=expected_peer_id,
            timeout=cfg.handshake_timeout,
        )
        return cls(hs, cfg)

    @classmethod
    def responder(
        cls, *, context: ResponderContext, now: float, peer_address=None, config: LinkConfig | None = None
    ) -> "Link":
        """The listening side; ``context`` is shared by every link of one listener."""
        cfg = config or LinkConfig()
        hs = ResponderHandshake(context, now=now, peer_address=peer_address, timeout=cfg.handshake_timeout)
        return cls(hs, cfg)

    # -- facts --------------------------------------------------------------------------
    @property
    def established(self) -> Established | None:
        return self._established

    @property
    def is_closed(self) -> bool:
        """True once the link has ended; pending bytes may still need sending."""
        return self._terminated

    @property
    def channel(self) -> SecureChannel | None:
        return self._ch

    @property
    def in_handshake(self) -> bool:
        return self._hs is not None and not self._terminated

    # -- driving ------------------------------------------------------------------------
    def receive_data(self, data: bytes, now: float) -> list:
        if self._terminated:
            return []
        if self._ch is not None:
            return self._from_channel(self._ch.receive_data(data, now))
        return self._from_handshake(self._hs.receive_data(data, now), now)

    def data_to_send(self) -> bytes:
        if self._hs is not None:
            self._out.append(self._hs.data_to_send())
        if self._ch is not None:
            self._out.append(self._ch.data_to_send())
        data = b"".join(self._out)
        self._out.clear()
        return data

    def send_message(self, data: bytes, now: float) -> None:
        if self._ch is None or self._terminated:
            raise LinkNotEstablished("the link is not established" if not self._terminated else "the link has ended")
        self._ch.send_message(data)

    def ping(self, data: bytes = b"") -> None:
        if self._ch is None or self._terminated:
            raise LinkNotEstablished("the link is not established")
        self._ch.ping(data)

    def close(self, code: int = 0, reason: str = "", now: float | None = None) -> None:
        """End the link: an authenticated CLOSE once established, otherwise just stop."""
        if self._terminated:
            return
        self._terminated = True
        if self._ch is not None:
            self._ch.close(code, reason)
        elif self._hs is not None:
            self._out.append(self._hs.data_to_send())

    def connection_lost(self, now: float) -> list:
        """The transport went away: report it unless the link had already ended."""
        if self._terminated:
            return []
        self._terminated = True
        return [
            Terminated(
                error_code=0,
                reason="transport closed by peer",
                by_peer=True,
                during_handshake=self._ch is None,
            )
        ]

    def get_timer(self) -> float | None:
        if self._terminated:
            return None
        if self._ch is not None:
            return self._ch.get_timer()
        return self._hs.get_timer()

    def handle_timer(self, now: float) -> list:
        if self._terminated:
            return []
        if self._ch is not None:
            return self._from_channel(self._ch.handle_timer(now))
        return self._from_handshake(self._hs.handle_timer(now), now)

    # -- event mapping ------------------------------------------------------------------
    def _from_handshake(self, events: list, now: float) -> list:
        out: list = []
        for ev in events:
            if isinstance(ev, HandshakeComplete):
                # FINISH (initiator side) must leave before any channel frame.
                self._out.append(self._hs.data_to_send())
                self._hs = None
                self._ch = SecureChannel(
                    tx_key=ev.tx_key, rx_key=ev.rx_key, session_id=ev.session_id, now=now,
                    config=self._config.channel,
                )
                self._established = Established(
                    peer_node_id=ev.peer_node_id,
                    peer_certificate=ev.peer_certificate,
                    session_id=ev.session_id,
                    version=ev.version,
                )
                out.append(self._established)
                if ev.trailing_data:
                    out.extend(self._from_channel(self._ch.receive_data(ev.trailing_data, now)))
                    if self._terminated:
                        break
            elif isinstance(ev, HandshakeTerminated):
                self._terminated = True
                out.append(Terminated(error_code=ev.error_code, reason=ev.reason, by_peer=ev.by_peer,
                                      during_handshake=True))
                break
        return out

    def _from_channel(self, events: list) -> list:
        out: list = []
        for ev in events:
            if isinstance(ev, ChannelTerminated):
                self._terminated = True
                out.append(Terminated(error_code=ev.error_code, reason=ev.reason, by_peer=ev.by_peer,
                                      during_handshake=False))
                break
            out.append(ev)
        return out

    def __repr__(self) -> str:
        phase = "closed" if self._terminated else ("channel" if self._ch is not None else "handshake")
        return f"<Link {phase}>"
