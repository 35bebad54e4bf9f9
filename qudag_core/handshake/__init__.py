"""The hybrid post-quantum authenticated handshake (docs/handshake.md).  Sans-IO.

Stream objects: ``InitiatorHandshake``, ``ResponderHandshake`` (sharing a
``ResponderContext``).  Consume-once steps underneath: ``initiator_start``,
``responder_process``, ``initiator_finish``, ``responder_finish``.
"""
from __future__ import annotations

from qudag_core.handshake.connection import (
    AMPLIFICATION_FACTOR,
    COOKIE_PERIOD,
    HANDSHAKE_TIMEOUT,
    InitiatorHandshake,
    ResponderContext,
    ResponderHandshake,
    State,
)
from qudag_core.handshake.errors import (
    AmplificationLimit,
    AuthenticationFailed,
    BadCookie,
    HandshakeError,
    HandshakeTimeout,
    HandshakeUsageError,
    MalformedMessage,
    MessageTooLarge,
    PeerAlert,
    ReplayDetected,
    UnexpectedMessage,
    UnexpectedPeer,
    UnsupportedVersion,
)
from qudag_core.handshake.events import Event, HandshakeComplete, Terminated
from qudag_core.handshake.steps import (
    PROTOCOL_LABEL,
    SUPPORTED_VERSIONS,
    InitiatorState,
    ResponderState,
    SessionKeys,
    initiator_finish,
    initiator_start,
    responder_finish,
    responder_process,
)

__all__ = [
    "AMPLIFICATION_FACTOR",
    "COOKIE_PERIOD",
    "HANDSHAKE_TIMEOUT",
    "PROTOCOL_LABEL",
    "SUPPORTED_VERSIONS",
    "AmplificationLimit",
    "AuthenticationFailed",
    "BadCookie",
    "Event",
    "HandshakeComplete",
    "HandshakeError",
    "HandshakeTimeout",
    "HandshakeUsageError",
    "InitiatorHandshake",
    "InitiatorState",
    "MalformedMessage",
    "MessageTooLarge",
    "PeerAlert",
    "ReplayDetected",
    "ResponderContext",
    "ResponderHandshake",
    "ResponderState",
    "SessionKeys",
    "State",
    "Terminated",
    "UnexpectedMessage",
    "UnexpectedPeer",
    "UnsupportedVersion",
    "initiator_finish",
    "initiator_start",
    "responder_finish",
    "responder_process",
]
