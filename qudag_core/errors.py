"""Declared errors shared by every qudag core (STYLE.md §4, after h11 ``_util.py``).

Two families:

* ``CryptoError`` and subclasses: a key, ciphertext or signature handed to a crypto
  wrapper is not acceptable.  Raised by ``qudag_core.crypto``.
* ``ProtocolError``: ``LocalProtocolError`` means our caller misused the API;
  ``RemoteProtocolError`` means the peer sent something bad.  Each concrete class
  carries the wire ``error_code`` it maps to.  Facing hostile peers, cores turn a
  remote violation into a queued close plus a ``Terminated`` event; parsers raise.

Nothing but these (and their subclasses) may escape a parser, whatever the input.
"""
from __future__ import annotations

__all__ = [
    "QudagError",
    "CryptoError",
    "InvalidKey",
    "InvalidCiphertext",
    "InvalidSignature",
    "DecryptError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
]


class QudagError(Exception):
    """Base of every error qudag declares."""


class CryptoError(QudagError, ValueError):
    """A cryptographic input was rejected."""


class InvalidKey(CryptoError):
    """A public or private key is malformed or fails its validity check."""


class InvalidCiphertext(CryptoError):
    """A KEM ciphertext has the wrong length or shape."""


class InvalidSignature(CryptoError):
    """A signature did not verify."""


class DecryptError(CryptoError):
    """AEAD authentication failed: wrong key, nonce, associated data or tampered bytes."""


class ProtocolError(QudagError):
    """A protocol rule was broken.  ``error_code`` is the code sent on the wire."""

    error_code: int = 0

    def __init__(self, msg: str = "", *, error_code: int | None = None) -> None:
        super().__init__(msg)
        if error_code is not None:
            self.error_code = error_code


class LocalProtocolError(ProtocolError):
    """We (the caller of the core) did something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
