"""Events and operation results of the KRPC node core (``qudag_core.krpc.node``).

Every operation the application starts (``ping``, ``find_node``, ``get_peers``,
``announce``, ``get``, ``put_*``) returns an integer operation id and ends with exactly
one ``OperationDone`` carrying that id, so an adapter can resolve one future per id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["OperationDone", "BootstrapDone", "PingResult", "FindNodeResult", "GetPeersResult",
           "GetResult", "PutResult"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PingResult:
    node_id: bytes
    """The id the pinged node answered with."""
    rtt: float
    """Round-trip time in the caller's clock units (seconds)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNodeResult:
    target: bytes
    """The id looked up."""
    nodes: tuple
    """``(node_id, (host, port))`` of the closest nodes that answered, closest first."""
    queries: int
    """Queries the lookup sent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPeersResult:
    info_hash: bytes
    """The infohash looked up."""
    peers: tuple
    """``(host, port)`` peers returned by any node, deduplicated, in arrival order."""
    nodes: tuple
    """``(node_id, (host, port))`` of the closest nodes that answered."""


@dataclass(frozen=True, slots=True, kw_only=True)
class GetResult:
    target: bytes
    """The BEP 44 target looked up."""
    value: Optional[bytes]
    """The *bencoded* item, or None when no node returned one that verifies."""
    key: Optional[bytes] = None
    """ed25519 public key (mutable items)."""
    seq: Optional[int] = None
    """Sequence number (mutable items)."""
    signature: Optional[bytes] = None
    """ed25519 signature (mutable items)."""
    agreement: int = 0
    """How many nodes returned the selected item (quorum read)."""
    responses: int = 0
    """How many items were returned in total, verified or not."""
    conflict: bool = False
    """Nodes returned different values for the same seq (equivocation)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PutResult:
    target: bytes
    """The target written (or the infohash announced)."""
    stored: int
    """Nodes that acknowledged the write."""
    failed: int
    """Nodes that refused it, timed out or answered with an error."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OperationDone:
    """An application operation finished."""

    op_id: int
    """The id the starting call returned."""
    ok: bool
    """False on timeout or when nothing could be done (no node reachable)."""
    result: object = None
    """One of the ``*Result`` classes above (None when ``ok`` is False)."""
    error: str = ""
    """Why it failed, for humans."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BootstrapDone:
    """The bootstrap pings and the table-filling lookups finished."""

    table_size: int
    """Nodes in the routing table at that moment."""
