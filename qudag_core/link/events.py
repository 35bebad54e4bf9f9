"""Events a ``Link`` reports (STYLE.md §5).

The channel's own data events (``MessageReceived``, ``KeyUpdated``, ``PongReceived``)
pass through unchanged; ``Established`` and ``Terminated`` are the link's, because a
link ends the same way whether its handshake or its channel failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qudag_core.channel.events import Event as ChannelEvent
from qudag_core.channel.events import KeyUpdated, MessageReceived, PongReceived
from qudag_core.identity import NodeCertificate, NodeId

__all__ = ["Event", "Established", "Terminated", "MessageReceived", "KeyUpdated", "PongReceived"]

Event = ChannelEvent


@dataclass(frozen=True, kw_only=True, slots=True)
class Established(ChannelEvent):
    """The handshake completed: the peer is authenticated and the channel is open."""

    peer_node_id: NodeId
    """The identity the peer proved (BLAKE3 of its ML-DSA-65 public key)."""
    peer_certificate: NodeCertificate = field(repr=False)
    """The peer's verified certificate (static X-Wing key and addresses)."""
    session_id: bytes
    """32-byte identifier equal on both sides; safe to log."""
    version: int
    """The negotiated handshake version."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Terminated(ChannelEvent):
    """The link ended; reported once, and nothing is delivered afterwards."""

    error_code: int
    """Wire code: an alert code for protocol failures, the application's code for CLOSE."""
    reason: str
    """Human-readable reason; never contains key material."""
    by_peer: bool
    """True when the peer ended the link (CLOSE/ALERT or the transport went away)."""
    during_handshake: bool
    """True when the link never got past the handshake."""
