"""Events emitted by the onion cores (client circuit and relay).  Frozen, keyword-only,
slotted; the adapter reacts to them and never has to catch an exception for peer faults."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from qudag_core.onion.cells import RelayCommand, Unrecognized

__all__ = [
    "HopAdded",
    "CircuitBuilt",
    "RelayMessageReceived",
    "CircuitClosed",
    "CircuitRotationDue",
    "LinkNeeded",
    "ExitMessageReceived",
    "ExitDataReceived",
    "RelayCircuitClosed",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class HopAdded:
    """A CREATED/EXTENDED completed: the circuit is one hop longer."""

    hop: int
    """0-based index of the new hop."""
    node_id: bytes
    """The relay's 20-byte node id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitBuilt:
    """Every hop of the path given to ``ClientCircuit.build`` is in place."""

    hops: int
    """Number of hops."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayMessageReceived:
    """A relay cell from hop ``hop`` was recognised and authenticated (client side)."""

    hop: int
    """0-based index of the hop that originated it."""
    command: Union[RelayCommand, Unrecognized]
    """Relay command (open enum)."""
    stream_id: int
    """Stream id; 0 for circuit-level messages."""
    data: bytes
    """Message data (without padding)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitClosed:
    """The circuit is gone; nothing more will be sent or delivered on it."""

    reason: int
    """A ``DestroyReason`` value (an int if unknown)."""
    remote: bool
    """True if the peer sent DESTROY, False if we closed it (and sent DESTROY)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitRotationDue:
    """The circuit reached ``rotate_after``: build a replacement and move new streams."""

    circ_id: int
    """Circuit id on the first link."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkNeeded:
    """Relay side: an EXTEND names ``node_id``; open or locate a link to it and call
    ``link_ready(node_id, link_id, now)`` (or ``link_failed(node_id, now)``)."""

    node_id: bytes
    """20-byte node id of the next relay."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitMessageReceived:
    """Relay side: a forward relay cell was addressed to this relay (streams, DROP ...)."""

    link_id: object
    """Link the circuit arrived on (toward the client)."""
    circ_id: int
    """Circuit id on that link."""
    command: Union[RelayCommand, Unrecognized]
    """Relay command (open enum)."""
    stream_id: int
    """Stream id."""
    data: bytes
    """Message data."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitDataReceived:
    """Relay side, batch form (``OnionRelay.receive_cells`` only): consecutive DATA cells
    of one stream, recognised here, as one event.  Equivalent to ``len(sizes)``
    ``ExitMessageReceived(command=DATA)`` events carrying ``data`` cut at ``sizes``."""

    link_id: object
    """Link the circuit arrived on (toward the client)."""
    circ_id: int
    """Circuit id on that link."""
    stream_id: int
    """Stream id of every cell in the run."""
    data: bytes
    """The cells' data, concatenated in order."""
    sizes: tuple
    """Data length of each cell (flow control counts cells): ``sum(sizes) == len(data)``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelayCircuitClosed:
    """Relay side: a circuit was torn down (DESTROY sent along both remaining sides)."""

    link_id: object
    """Link toward the client."""
    circ_id: int
    """Circuit id on that link."""
    reason: int
    """A ``DestroyReason`` value."""
