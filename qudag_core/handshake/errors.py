"""Declared handshake errors (docs/handshake.md §6), each with its wire alert code.

Remote violations subclass ``RemoteProtocolError``; the stream objects turn them into a
queued ALERT frame plus a ``Terminated`` event and a sticky FAILED state.  Certificate
problems keep their own codes (``qudag_core.identity.CertificateError``, 0x20-0x28).
"""
from __future__ import annotations

from qudag_core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "HandshakeError",
    "MalformedMessage",
    "MessageTooLarge",
    "UnexpectedMessage",
    "UnsupportedVersion",
    "AuthenticationFailed",
    "UnexpectedPeer",
    "ReplayDetected",
    "BadCookie",
    "HandshakeTimeout",
    "AmplificationLimit",
    "PeerAlert",
    "HandshakeUsageError",
]


class HandshakeError(RemoteProtocolError):
    """Base of the handshake's declared remote errors."""

    error_code = 0x01


class MalformedMessage(HandshakeError):
    """A frame or message body does not parse (bad length, bad field, bad key encoding)."""

    error_code = 0x02


class MessageTooLarge(HandshakeError):
    """A frame declares a body larger than its type allows in the current state."""

    error_code = 0x03


class UnexpectedMessage(HandshakeError):
    """A frame type that is not allowed in the current state (or an unknown type)."""

    error_code = 0x04


class UnsupportedVersion(HandshakeError):
    """No common protocol version, or the responder chose one we did not offer."""

    error_code = 0x05


class AuthenticationFailed(HandshakeError):
    """AEAD or key-confirmation check failed: tampering, wrong keys, or a downgrade."""

    error_code = 0x06


class UnexpectedPeer(HandshakeError):
    """The responder's certificate names another identity than ``expected_peer_id``."""

    error_code = 0x07


class ReplayDetected(HandshakeError):
    """This first message was already processed by the responder context."""

    error_code = 0x08


class BadCookie(HandshakeError):
    """A cookie is missing, wrong or expired while the responder is under load."""

    error_code = 0x09


class HandshakeTimeout(HandshakeError):
    """The handshake did not finish before its deadline."""

    error_code = 0x0A


class AmplificationLimit(HandshakeError):
    """Sending would exceed 3x the bytes received from an unvalidated address."""

    error_code = 0x0B


class PeerAlert(HandshakeError):
    """The peer sent an ALERT; ``error_code`` is the peer's code."""

    error_code = 0x0C


class HandshakeUsageError(LocalProtocolError):
    """The local caller misused the API (a consume-once state reused, data after done)."""

    error_code = 0x70
