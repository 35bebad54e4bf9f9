"""Actions and events of the dark resolver (STYLE.md §5: frozen, keyword-only, slotted).

``FetchDescriptors`` is an action for the adapter (ask the DHT for the values stored at
``index``); ``Resolved`` and ``ResolveFailed`` are results for the application."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from qudag_core.dark.address import DarkAddress
from qudag_core.identity import NodeCertificate, NodeId

__all__ = ["Event", "FetchDescriptors", "DarkEndpoint", "Resolved", "ResolveFailed"]


class Event:
    """Base class of everything the resolver returns."""

    __slots__ = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchDescriptors(Event):
    """Fetch every descriptor stored at ``index`` and answer with
    ``Resolver.on_fetch_result(query_id, [...], now)`` or ``on_fetch_failed``.  Dummy
    fetches look exactly like real ones."""

    index: bytes
    """20-byte blinded DHT index."""
    query_id: int
    """Random 64-bit token to echo back."""
    via_circuit: bool = False
    """Fetch through an onion circuit so the storing nodes don't learn who asks."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DarkEndpoint:
    """How to reach a resolved service, proven by the address's identity key."""

    address: DarkAddress
    """The address that was resolved."""
    certificate: Optional[NodeCertificate]
    """The service's verified node certificate (its static X-Wing key and IP addresses),
    or None when only intro relays are published."""
    intro_relays: tuple
    """Verified ``NodeCertificate`` of each introduction relay."""
    revision: int
    """Revision counter of the descriptor used."""
    expires_at: int
    """Unix time after which the descriptor must not be used."""

    @property
    def expected_peer_id(self) -> Optional[NodeId]:
        """Pass to ``qudag_io.link.connect(expected_peer_id=...)`` with
        ``peer_certificate=self.certificate``."""
        return None if self.certificate is None else self.certificate.node_id

    @property
    def is_long_term(self) -> bool:
        """True when the service certificate's identity *is* the address's identity."""
        return self.certificate is not None and self.certificate.identity_digest == self.address.identity_digest


@dataclass(frozen=True, kw_only=True, slots=True)
class Resolved(Event):
    """``address`` resolved (from the DHT or the cache)."""

    address: DarkAddress
    """The address looked up."""
    endpoint: DarkEndpoint
    """The verified endpoint."""
    from_cache: bool = False
    """True when answered from the cache without any fetch."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolveFailed(Event):
    """``address`` could not be resolved; ``error`` is a ``ResolveError`` subclass."""

    address: DarkAddress
    """The address looked up."""
    error: Exception
    """NotFound, DescriptorExpired-style ResolveExpired, InvalidDescriptorSignature,
    Rollback or WrongIndex."""
    from_cache: bool = False
    """True for a cached negative result."""
