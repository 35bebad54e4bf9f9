"""X25519 (RFC 7748) through ``cryptography``.

An all-zero shared secret (a low-order peer point, RFC 7748 §6.1) is rejected with
``InvalidKey``; the library already raises on it and we translate the error.

The decision a reader asks about: keys are made through the library's Rust-level
constructors (``cryptography.hazmat.bindings._rust.openssl.x25519``) when they exist.
They are the very functions the public classmethods forward to, minus an ``abc``
dispatch and a type registration check that cost more than a microsecond per call on
the handshake's hot path; when a future ``cryptography`` moves them, the public API is
used instead (same objects, same behaviour).
"""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import x25519 as _x

from qudag_core.errors import InvalidKey

__all__ = ["KEY_SIZE", "X25519PrivateKey", "x25519_public_from_bytes"]

KEY_SIZE = 32

_from_private = _x.X25519PrivateKey.from_private_bytes
_from_public = _x.X25519PublicKey.from_public_bytes
_PUBLIC_TYPE = None
try:
    from cryptography.hazmat.backends.openssl.backend import backend as _backend
    from cryptography.hazmat.bindings._rust import openssl as _ro

    if _backend.x25519_supported():  # the check the public classmethods repeat per call
        _from_private = _ro.x25519.from_private_bytes
        _from_public = _ro.x25519.from_public_bytes
        # The concrete class the library returns: an exact type check is cheaper than
        # the ``abc`` isinstance check, which remains the fallback for other objects.
        _PUBLIC_TYPE = type(_from_public(bytes(range(1, 33))))
except (ImportError, AttributeError):  # pragma: no cover - depends on the library layout
    pass


def x25519_public_from_bytes(raw: bytes) -> _x.X25519PublicKey:
    raw = bytes(raw)
    if len(raw) != KEY_SIZE:
        raise InvalidKey(f"X25519 public key must be {KEY_SIZE} bytes, got {len(raw)}")
    return _from_public(raw)


class X25519PrivateKey:
    """An X25519 scalar; ``public`` is its 32-byte public key."""

    __slots__ = ("_key", "raw", "public")

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != KEY_SIZE:
            raise InvalidKey(f"X25519 private key must be {KEY_SIZE} bytes, got {len(raw)}")
        self._key = _from_private(raw)
        self.raw: bytes = raw
        self.public: bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng) -> "X25519PrivateKey":
        return cls(rng(KEY_SIZE))

    def public_key_object(self) -> _x.X25519PublicKey:
        """The library's public-key object for ``public`` (no re-parse of the bytes)."""
        return self._key.public_key()

    def exchange(self, peer_public: bytes | _x.X25519PublicKey) -> bytes:
        """Return the 32-byte shared secret; ``InvalidKey`` if it is all zeros."""
        if type(peer_public) is not _PUBLIC_TYPE and not isinstance(peer_public, _x.X25519PublicKey):
            peer_public = x25519_public_from_bytes(peer_public)
        try:
            return self._key.exchange(peer_public)
        except ValueError:
            raise InvalidKey("X25519 peer key is of low order (all-zero shared secret)") from None
