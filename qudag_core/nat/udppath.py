"""A punched UDP path, validated and protected by the secure channel's datagram mode.

After two peers hold an authenticated link (direct, punched TCP or relayed), they may also
want a UDP path (docs/nat.md §UDP path).  Each side learns its UDP candidate with STUN
(RFC 8489 Binding) and sends it over the link together with a fresh random 32-byte
transmit key; the link is authenticated, confidential and forward-secret, so these keys
are too.  Both then send PROBEs to the peer's candidate (ICE-style connectivity checks,
RFC 8445 §7.2, reduced to one pair); a PROBE that authenticates is answered with an ACK
to the address it *came from* (a peer-reflexive address, RFC 8445 §7.2.5.3.1), and an
authenticated ACK of our own nonce validates the path in both directions.

Design decision a reader would ask about: the link core is a stream core, so the qudag
handshake is not re-run over UDP; the UDP path carries ``DatagramChannel`` packets
(explicit counters, replay window) keyed over the link.  Nothing unauthenticated is
ever answered, so the UDP socket is no reflector either.

Inside each sealed datagram: ``0x01 PROBE nonce:8``, ``0x02 ACK nonce:8``,
``0x03 DATA payload``.
"""
from __future__ import annotations

from qudag_core.channel.datagram import DatagramChannel
from qudag_core.errors import LocalProtocolError, QudagError
from qudag_core.nat.traversal_events import Event

from dataclasses import dataclass, field

__all__ = ["UdpPath", "UdpPathValidated", "UdpPathFailed", "UdpDatagram"]

_PROBE, _ACK, _DATA = 0x01, 0x02, 0x03
MAX_CANDIDATES = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpPathValidated(Event):
    """Both directions work: our probe was acknowledged by the peer."""

    #: The peer's address the ACK came from (send DATA there).
    address: tuple
    #: Seconds from the first probe to the ACK (one round trip plus punching delay).
    elapsed: float


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpPathFailed(Event):
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class UdpDatagram(Event):
    data: bytes = field(repr=False)
    address: tuple


class UdpPath:
    """Datagram core: ``receive_datagram(data, addr, now)``, ``datagrams_to_send(now)``,
    ``get_timer()``, ``handle_timer(now)``; ``send(data)`` once validated."""

    def __init__(self, *, tx_key: bytes, rx_key: bytes, session_id: bytes, candidates, nonce: bytes,
                 now: float, interval: float = 0.05, timeout: float = 3.0) -> None:
        if len(nonce) != 8:
            raise LocalProtocolError("nonce must be 8 bytes")
        self._ch = DatagramChannel(tx_key=tx_key, rx_key=rx_key, session_id=session_id)
        self._candidates = [tuple(c) for c in candidates]
        self._nonce = bytes(nonce)
        self._interval = interval
        self._start = now
        self._deadline = now + timeout
        self._next_probe = now
        self._out: list = []
        self.validated: tuple | None = None
        self.failed = False

    def _seal(self, body: bytes, addr: tuple) -> None:
        self._out.append((self._ch.seal_datagram(body), addr))

    def receive_datagram(self, data: bytes, addr: tuple, now: float) -> list:
        if self.failed:
            return []
        try:
            body = self._ch.open_datagram(data)
        except QudagError:
            return []  # unauthenticated, replayed or malformed: dropped, never answered
        if not body:
            return []
        kind, rest = body[0], body[1:]
        addr = tuple(addr[:2])
        if kind == _PROBE and len(rest) == 8:
            self._seal(bytes((_ACK,)) + rest, addr)
            # Triggered check (RFC 8445 §7.3.1.4): an authenticated probe from an address
            # we did not know is a peer-reflexive candidate (e.g. a symmetric NAT's fresh
            # port towards us); probe it too.  Bounded.
            if addr not in self._candidates and len(self._candidates) < MAX_CANDIDATES:
                self._candidates.append(addr)
                self._next_probe = now
            return []
        if kind == _ACK and rest == self._nonce and self.validated is None:
            self.validated = addr
            return [UdpPathValidated(address=addr, elapsed=now - self._start)]
        if kind == _DATA:  # authenticated; may overtake our ACK, so accept it before validation
            return [UdpDatagram(data=rest, address=addr)]
        return []

    def send(self, data: bytes) -> None:
        if self.validated is None:
            raise LocalProtocolError("UDP path not validated")
        self._seal(bytes((_DATA,)) + bytes(data), self.validated)

    def datagrams_to_send(self, now: float) -> list:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        if self.validated is not None or self.failed:
            return None
        return min(self._next_probe, self._deadline)

    def handle_timer(self, now: float) -> list:
        if self.validated is not None or self.failed:
            return []
        if now >= self._deadline:
            self.failed = True
            return [UdpPathFailed(reason="no authenticated ACK before the deadline")]
        if now >= self._next_probe:
            for c in self._candidates:
                self._seal(bytes((_PROBE,)) + self._nonce, c)
            self._next_probe = now + self._interval
        return []
