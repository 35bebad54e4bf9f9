"""The secure channel's state machine as a table (STYLE.md §2, after h11 ``_state.py``).

``TRANSITIONS[(state, input)] -> next state``.  A pair that is missing is not allowed:
for a local input the core raises ``ChannelNotOpen`` and stays where it is; remote
input is never looked up outside OPEN because a CLOSED or ERROR channel ignores
everything it receives (both are sticky: no pair leads out of them).

Design decision: there is no half-closed state.  CLOSE ends both directions at once
(the sender stops sending, the receiver stops delivering); a transport-level
half-close can still be done by the adapter after CLOSE went out.
"""
from __future__ import annotations

import enum

__all__ = ["ChannelState", "Input", "TRANSITIONS", "next_state"]


class ChannelState(enum.Enum):
    OPEN = "OPEN"
    """Keys installed; frames flow both ways."""
    CLOSED = "CLOSED"
    """Ended cleanly: CLOSE sent or received, or idle timeout.  Sticky."""
    ERROR = "ERROR"
    """Ended by a protocol failure: ALERT sent or received.  Sticky."""


class Input(enum.Enum):
    SEND = "SEND"
    """Local: send_message / ping / update_key."""
    LOCAL_CLOSE = "LOCAL_CLOSE"
    """Local: close(code, reason)."""
    TIMER = "TIMER"
    """Local: handle_timer(now)."""
    RECV_FRAME = "RECV_FRAME"
    """Remote: an authenticated DATA, KEY_UPDATE, PING, PONG or unknown frame."""
    RECV_CLOSE = "RECV_CLOSE"
    """Remote: an authenticated CLOSE frame."""
    RECV_ALERT = "RECV_ALERT"
    """Remote: an authenticated ALERT frame."""
    VIOLATION = "VIOLATION"
    """Remote: a frame failed a check (length, tag, nonce limit, body)."""
    IDLE_TIMEOUT = "IDLE_TIMEOUT"
    """Local timer: nothing arrived for idle_timeout."""


_S = ChannelState
_I = Input

TRANSITIONS: dict[tuple[ChannelState, Input], ChannelState] = {
    (_S.OPEN, _I.SEND): _S.OPEN,
    (_S.OPEN, _I.TIMER): _S.OPEN,
    (_S.OPEN, _I.RECV_FRAME): _S.OPEN,
    (_S.OPEN, _I.LOCAL_CLOSE): _S.CLOSED,
    (_S.OPEN, _I.RECV_CLOSE): _S.CLOSED,
    (_S.OPEN, _I.IDLE_TIMEOUT): _S.CLOSED,
    (_S.OPEN, _I.RECV_ALERT): _S.ERROR,
    (_S.OPEN, _I.VIOLATION): _S.ERROR,
    # Ended channels: timers and repeated close() are harmless no-ops.
    (_S.CLOSED, _I.TIMER): _S.CLOSED,
    (_S.CLOSED, _I.LOCAL_CLOSE): _S.CLOSED,
    (_S.ERROR, _I.TIMER): _S.ERROR,
    (_S.ERROR, _I.LOCAL_CLOSE): _S.ERROR,
}


def next_state(state: ChannelState, inp: Input) -> ChannelState | None:
    """The table lookup; None means the input is not allowed in ``state``."""
    return TRANSITIONS.get((state, inp))
