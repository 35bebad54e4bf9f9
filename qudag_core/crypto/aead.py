"""ChaCha20-Poly1305 (RFC 8439) through ``cryptography``.

This is the reference AEAD every qudag channel uses.  The secure-channel hot path may
call the OpenSSL kernel in ``csrc/`` instead; both must agree byte for byte, which the
tests check.
"""
from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from qudag_core.errors import CryptoError, DecryptError, InvalidKey

__all__ = ["KEY_SIZE", "NONCE_SIZE", "TAG_SIZE", "ChaCha20Poly1305Key"]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16


class ChaCha20Poly1305Key:
    """One AEAD key; ``seal``/``open`` take a 12-byte nonce and associated data."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise InvalidKey(f"ChaCha20-Poly1305 key must be {KEY_SIZE} bytes, got {len(key)}")
        self._aead = ChaCha20Poly1305(bytes(key))

    def seal(self, nonce: bytes, plaintext: bytes, aad: bytes | None = None) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise CryptoError(f"ChaCha20-Poly1305 nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
        return self._aead.encrypt(nonce, plaintext, aad)

    def open(self, nonce: bytes, ciphertext: bytes, aad: bytes | None = None) -> bytes:
        if len(nonce) != NONCE_SIZE:
            raise DecryptError(f"ChaCha20-Poly1305 nonce must be {NONCE_SIZE} bytes")
        if len(ciphertext) < TAG_SIZE:
            raise DecryptError("ciphertext shorter than the Poly1305 tag")
        try:
            return self._aead.decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise DecryptError("AEAD authentication failed") from None
