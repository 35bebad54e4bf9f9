"""Events emitted by the NAT cores (STUN client, NAT behaviour discovery).

Frozen, keyword-only, slotted dataclasses (STYLE.md §5).  Addresses are ``(host, port)``
tuples with the host as a normalised textual IP address.  ``transaction_id`` is the
handle ``StunClient.request`` returned; after a long-term-credential retry the id on
the wire differs, but events always carry the caller's handle.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Event", "BindingSucceeded", "AllocateSucceeded", "TransactionSucceeded",
    "TransactionFailed", "TransactionTimedOut",
    "MappingBehaviour", "FilteringBehaviour", "NatBehaviour", "NatBehaviourDiscovered",
]


class Event:
    """Base class of every NAT-core event."""

    __slots__ = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class BindingSucceeded(Event):
    """A Binding success response arrived and (if credentials were used) verified."""

    #: The handle returned by ``StunClient.request``.
    transaction_id: bytes
    #: The server the request was sent to.
    server: tuple
    #: XOR-MAPPED-ADDRESS (or legacy MAPPED-ADDRESS): our address as the server saw it.
    mapped_address: tuple
    #: RESPONSE-ORIGIN (RFC 5780 §7.3), the address the response was sent from, if given.
    response_origin: tuple | None = None
    #: OTHER-ADDRESS (RFC 5780 §7.4), the server's alternate IP and port, if given.
    other_address: tuple | None = None
    #: The address the response actually came from.
    source: tuple = ()
    #: Round-trip time from the last (re)transmission, or None when ambiguous (Karn).
    rtt: float | None = None
    #: The decoded response, for attributes the event does not lift out.
    message: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocateSucceeded(Event):
    """A TURN Allocate success response (RFC 8656 §7.3) arrived and verified."""

    transaction_id: bytes
    server: tuple
    #: XOR-RELAYED-ADDRESS: the relay transport address allocated for us.
    relayed_address: tuple | None
    #: XOR-MAPPED-ADDRESS: our server-reflexive address.
    mapped_address: tuple | None
    #: LIFETIME in seconds.
    lifetime: int | None
    message: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionSucceeded(Event):
    """A success response for any other method."""

    transaction_id: bytes
    server: tuple
    method: int
    message: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionFailed(Event):
    """An error response ended the transaction, or the success response could not be
    used (unknown comprehension-required attributes, §6.3.3)."""

    transaction_id: bytes
    server: tuple
    #: ERROR-CODE number (300..699), or None when the failure is local.
    code: int | None
    #: Reason phrase from the server, or why we gave up.
    reason: str
    #: UNKNOWN-ATTRIBUTES of a 420 response, or the unknown attributes we found.
    unknown_attributes: tuple = ()
    message: object = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class TransactionTimedOut(Event):
    """No acceptable response after Rc transmissions and the final Rm*RTO wait
    (RFC 8489 §6.2.1)."""

    transaction_id: bytes
    server: tuple
    #: How many times the request was sent.
    transmissions: int


class MappingBehaviour(enum.Enum):
    """RFC 4787 §4.1 mapping behaviour, as RFC 5780 §4.3 measures it."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    #: The test could not be run (no OTHER-ADDRESS) or did not finish.
    UNKNOWN = "unknown"


class FilteringBehaviour(enum.Enum):
    """RFC 4787 §5 filtering behaviour, as RFC 5780 §4.4 measures it."""

    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class NatBehaviour:
    """Outcome of RFC 5780 behaviour discovery."""

    mapping: MappingBehaviour
    filtering: FilteringBehaviour
    #: Our server-reflexive address from test I.
    mapped_address: tuple | None
    #: True when test I's mapped address differs from our local address; None when the
    #: local address was not known or test I failed.
    nat_detected: bool | None
    #: Whether the server offered an alternate address (OTHER-ADDRESS); without one the
    #: RFC 5780 tests cannot run and both behaviours are UNKNOWN.
    alternate_offered: bool
    #: Why discovery stopped early, if it did.
    note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class NatBehaviourDiscovered(Event):
    """NAT behaviour discovery finished (successfully or not; see ``result.note``)."""

    result: NatBehaviour
