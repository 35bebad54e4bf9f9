"""Events emitted by the handshake stream objects (STYLE.md §5)."""
from __future__ import annotations

from dataclasses import dataclass, field

from qudag_core.identity import NodeCertificate, NodeId

__all__ = ["Event", "HandshakeComplete", "Terminated"]


class Event:
    """Base class of handshake events."""

    __slots__ = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class HandshakeComplete(Event):
    """Both identities are proven and every handshake byte we received was confirmed."""

    #: Key for records we send (ChaCha20-Poly1305, 32 bytes).  Never in a repr.
    tx_key: bytes = field(repr=False)
    #: Key for records we receive (32 bytes).  Never in a repr.
    rx_key: bytes = field(repr=False)
    #: 32-byte session identifier, equal on both sides and unlinkable to observers.
    session_id: bytes
    #: The peer's proven node id.
    peer_node_id: NodeId
    #: The peer's verified certificate.
    peer_certificate: NodeCertificate = field(repr=False)
    #: The negotiated protocol version.
    version: int
    #: Bytes received after the final handshake message: the secure channel's input.
    trailing_data: bytes = field(default=b"", repr=False)


@dataclass(frozen=True, kw_only=True, slots=True)
class Terminated(Event):
    """The handshake failed; the object is now in its sticky FAILED state."""

    #: Wire alert code (sent to the peer unless ``by_peer``).
    error_code: int
    #: Human-readable reason (no secrets).
    reason: str
    #: True when the peer sent the ALERT.
    by_peer: bool = False
    #: The declared error that caused it.
    error: Exception | None = field(default=None, repr=False, compare=False)
