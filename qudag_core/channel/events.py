"""Events the secure channel reports (STYLE.md §5, after h2 ``events.py``).

Every event is a frozen, keyword-only, slotted dataclass.  ``receive_data`` and
``handle_timer`` return them; events caused by our own sending (a send-side
``KeyUpdated``) are queued and returned first by the next of those calls.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Direction",
    "Event",
    "MessageReceived",
    "KeyUpdated",
    "PingReceived",
    "PongReceived",
    "UnknownFrameReceived",
    "Terminated",
]


class Direction(enum.Enum):
    """Which half of the channel an event concerns."""

    SEND = "send"
    RECEIVE = "receive"


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """Base class of every channel event."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MessageReceived(Event):
    """One application message, delivered only after its frame authenticated."""

    data: bytes
    """The message exactly as the peer passed it to ``send_message``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyUpdated(Event):
    """One direction switched to its next key (a KEY_UPDATE frame was sent or received)."""

    direction: Direction
    """``SEND``: our transmit key; ``RECEIVE``: the peer's (our receive key)."""
    epoch: int
    """How many key updates this direction has had; the handshake key is epoch 0."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PingReceived(Event):
    """The peer sent PING; the channel has already queued the PONG."""

    data: bytes
    """The opaque PING payload (echoed in the PONG)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class PongReceived(Event):
    """The peer answered one of our PINGs."""

    data: bytes
    """The payload of the PING being answered."""


@dataclass(frozen=True, kw_only=True, slots=True)
class UnknownFrameReceived(Event):
    """An authenticated frame of a type this version does not know; it was ignored."""

    frame_type: int
    """The unknown frame type byte."""
    data: bytes
    """Its authenticated payload."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Terminated(Event):
    """The channel ended.  Reported once; nothing is delivered afterwards."""

    error_code: int
    """The application code of a CLOSE, or an ``ErrorCode`` (int if unknown) of an alert."""
    reason: str
    """Human-readable reason (from the peer's frame, or our own error's message)."""
    by_peer: bool
    """True if the peer sent CLOSE/ALERT; False if we detected the failure or timed out."""
    is_alert: bool
    """True for a protocol failure (ALERT); False for an application CLOSE."""
