"""Declared errors and wire error codes of the secure channel (docs/channel.md §Errors).

``ErrorCode`` values travel in ALERT frames (u16).  Each remote error class carries the
code it is reported with; the stream core turns a remote error into a queued ALERT and
one ``Terminated`` event, the datagram API raises it so the caller drops the packet.
Local errors (``LocalProtocolError`` subclasses) are raised to the caller who misused
the API and leave the channel as it was.
"""
from __future__ import annotations

import enum

from qudag_core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ErrorCode",
    "error_code_from_int",
    "InvalidChannelConfig",
    "ChannelNotOpen",
    "MessageTooLarge",
    "NonceLimitReached",
    "FrameTooLarge",
    "MalformedFrame",
    "FrameAuthenticationFailed",
    "PeerNonceLimitExceeded",
    "ReplayedPacket",
    "PacketTooOld",
]


class ErrorCode(enum.IntEnum):
    """Protocol error codes carried by ALERT frames.  Open: unknown codes stay ints."""

    NO_ERROR = 0
    PROTOCOL_VIOLATION = 1
    AUTHENTICATION_FAILED = 2
    FRAME_TOO_LARGE = 3
    MALFORMED_FRAME = 4
    NONCE_LIMIT_EXCEEDED = 5
    IDLE_TIMEOUT = 6
    INTERNAL_ERROR = 7
    REPLAYED_PACKET = 8


def error_code_from_int(code: int) -> int:
    """``ErrorCode(code)`` when known, else the plain int (open enum, STYLE.md §6)."""
    try:
        return ErrorCode(code)
    except ValueError:
        return code


class InvalidChannelConfig(LocalProtocolError, ValueError):
    """A ``ChannelConfig`` field is out of range or inconsistent with another."""


class ChannelNotOpen(LocalProtocolError):
    """An operation needs an OPEN channel; it is CLOSED or ERROR."""


class MessageTooLarge(LocalProtocolError):
    """``send_message`` was given more than ``max_frame_size`` bytes."""


class NonceLimitReached(LocalProtocolError):
    """Sending would use a counter beyond ``nonce_limit`` under the current key.

    With rekeying enabled this never happens (the channel rekeys first); it is the
    hard stop that makes nonce reuse impossible when rekeying is disabled."""


class FrameTooLarge(RemoteProtocolError):
    """A length prefix announced more than the configured maximum frame."""

    error_code = ErrorCode.FRAME_TOO_LARGE


class MalformedFrame(RemoteProtocolError):
    """A frame or packet is too short or its authenticated body is not well formed."""

    error_code = ErrorCode.MALFORMED_FRAME


class FrameAuthenticationFailed(RemoteProtocolError):
    """Poly1305 tag check failed: tampered, truncated, reordered or wrong-key bytes."""

    error_code = ErrorCode.AUTHENTICATION_FAILED


class PeerNonceLimitExceeded(RemoteProtocolError):
    """The peer sent more frames under one key than ``nonce_limit`` allows."""

    error_code = ErrorCode.NONCE_LIMIT_EXCEEDED


class ReplayedPacket(RemoteProtocolError):
    """A datagram counter was already accepted (duplicate)."""

    error_code = ErrorCode.REPLAYED_PACKET


class PacketTooOld(ReplayedPacket):
    """A datagram counter is behind the replay window: it can no longer be checked."""
