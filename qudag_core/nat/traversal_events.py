"""Events of the NAT-traversal cores: relay reservations and circuits, hole-punch timing.

Frozen, keyword-only, slotted dataclasses (STYLE.md §5).  Kept apart from
``qudag_core/nat/events.py`` (the STUN cores' events) so that the two groups of cores
can evolve separately; both share the ``Event`` base class from there.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from qudag_core.nat.events import Event

__all__ = [
    "Event", "Reserved", "ReservationRefused", "IncomingCircuit", "CircuitConnected",
    "ConnectRefused", "CircuitData", "CircuitClosed", "RelayRefusal",
    "ReservationGranted", "CircuitOpened", "CircuitEnded",
    "PunchSendMessage", "DialNow", "PunchFailed",
]


# -- relay client side ----------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Reserved(Event):
    """The relay granted (or renewed) our reservation."""

    #: Seconds the reservation lasts from when it was granted.
    ttl: int
    #: Bytes the relay forwards for us under this reservation, both directions together.
    byte_limit: int
    #: Our address as the relay saw it on this link (a candidate for hole punching).
    observed_address: tuple


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationRefused(Event):
    """The relay refused our reservation."""

    #: A ``RelayRefusal`` code.
    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class IncomingCircuit(Event):
    """A peer asked the relay for a circuit to us; answer with ``accept``/``close_circuit``."""

    circuit: int
    #: The NodeId the relay authenticated on the other peer's link.
    source: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitConnected(Event):
    """Our CONNECT succeeded: bytes sent on ``circuit`` reach ``target``."""

    circuit: int
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectRefused(Event):
    """The relay refused our CONNECT to ``target``."""

    target: bytes
    #: A ``RelayRefusal`` code.
    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitData(Event):
    """Opaque bytes from the other end of ``circuit`` (its end-to-end link's bytes)."""

    circuit: int
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitClosed(Event):
    """``circuit`` ended (peer closed, quota exhausted, reservation expired, link lost)."""

    circuit: int
    #: A ``RelayRefusal`` code (0 = normal close).
    code: int


# -- relay server side -----------------------------------------------------------------
class RelayRefusal:
    """Open set of refusal/close codes (unknown codes are kept as plain ints)."""

    NORMAL = 0
    NO_RESERVATION = 1
    RESOURCE_LIMIT = 2
    QUOTA_EXCEEDED = 3
    EXPIRED = 4
    MALFORMED = 5
    PERMISSION_DENIED = 6
    PEER_GONE = 7


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservationGranted(Event):
    """The relay granted a reservation to ``peer``."""

    peer: bytes
    expires: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitOpened(Event):
    """The relay now forwards between ``source`` and ``target``."""

    circuit: int
    source: bytes
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitEnded(Event):
    """The relay stopped forwarding on ``circuit``; ``relayed`` bytes went through it."""

    circuit: int
    code: int
    relayed: int


# -- hole punching ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class PunchSendMessage(Event):
    """Send ``data`` to the peer over the coordination (relayed) link."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class DialNow(Event):
    """Dial ``addresses`` at time ``at`` (simultaneous open); ``attempt`` counts from 1."""

    addresses: tuple
    at: float
    attempt: int
    #: The measured coordination round-trip time (initiator only; 0 on the responder).
    rtt: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PunchFailed(Event):
    """Hole punching gave up (bad message, timeout, or all attempts used)."""

    reason: str
