"""Helpers for the secure-channel tests: a connected pair, like h11's ConnectionPair."""
from __future__ import annotations

import hashlib

from qudag_core.channel import ChannelConfig, SecureChannel


def keys(seed: bytes = b"channel") -> tuple[bytes, bytes, bytes]:
    """Deterministic stand-ins for the handshake's (i->r key, r->i key, session id)."""
    h = lambda label: hashlib.sha256(seed + label).digest()  # noqa: E731
    return h(b"i2r"), h(b"r2i"), h(b"sid")


def make_pair(config: ChannelConfig | None = None, *, peer_config: ChannelConfig | None = None,
              now: float = 0.0, seed: bytes = b"channel") -> tuple[SecureChannel, SecureChannel]:
    k_ir, k_ri, sid = keys(seed)
    a = SecureChannel(tx_key=k_ir, rx_key=k_ri, session_id=sid, now=now, config=config)
    b = SecureChannel(tx_key=k_ri, rx_key=k_ir, session_id=sid, now=now,
                      config=peer_config if peer_config is not None else config)
    return a, b


def transfer(src: SecureChannel, dst: SecureChannel, now: float | None = None) -> list:
    """Move everything ``src`` has queued into ``dst``; returns ``dst``'s events."""
    return dst.receive_data(src.data_to_send(), now=now)



def messages(events) -> list[bytes]:
    from qudag_core.channel import MessageReceived

    return [e.data for e in events if isinstance(e, MessageReceived)]


def terminations(events) -> list:
    from qudag_core.channel import Terminated

    return [e for e in events if isinstance(e, Terminated)]
