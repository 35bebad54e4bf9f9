"""X25519 (RFC 7748) through ``cryptography``.

An all-zero shared secret (a low-order peer point, RFC 7748 §6.1) is rejected with
``InvalidKey``; the library already raises on it and we translate the error.
"""
from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import x25519 as _x

from qudag_core.errors import InvalidKey

__all__ = ["KEY_SIZE", "X25519PrivateKey", "x25519_public_from_bytes"]

KEY_SIZE = 32


def x25519_public_from_bytes(raw: bytes) -> _x.X25519PublicKey:
    raw = bytes(raw)
    if len(raw) != KEY_SIZE:
        raise InvalidKey(f"X25519 public key must be {KEY_SIZE} bytes, got {len(raw)}")
    return _x.X25519PublicKey.from_public_bytes(raw)


class X25519PrivateKey:
    """An X25519 scalar; ``public`` is its 32-byte public key."""

    __slots__ = ("_key", "raw", "public")

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != KEY_SIZE:
            raise InvalidKey(f"X25519 private key must be {KEY_SIZE} bytes, got {len(raw)}")
        self._key = _x.X25519PrivateKey.from_private_bytes(raw)
        self.raw: bytes = raw
        self.public: bytes = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, rng) -> "X25519PrivateKey":
        return cls(rng(KEY_SIZE))

    def exchange(self, peer_public: bytes | _x.X25519PublicKey) -> bytes:
        """Return the 32-byte shared secret; ``InvalidKey`` if it is all zeros."""
        if not isinstance(peer_public, _x.X25519PublicKey):
            peer_public = x25519_public_from_bytes(peer_public)
        try:
            return self._key.exchange(peer_public)
        except ValueError:
            raise InvalidKey("X25519 peer key is of low order (all-zero shared secret)") from None
