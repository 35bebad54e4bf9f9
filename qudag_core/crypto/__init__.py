"""Typed wrappers over vetted primitives (``cryptography`` >= 48, ``blake3``).

Nothing here implements a cipher, KEM or signature: every primitive comes from
``cryptography`` (ML-KEM-768, ML-DSA-65, X25519, ChaCha20-Poly1305, scrypt) or from the
``blake3`` package.  The one construction written here is the X-Wing combiner
(draft-connolly-cfrg-xwing-kem), which is a SHA3-256 call over library outputs.

Randomness is always passed in as ``rng(n) -> bytes`` so that protocol cores stay
deterministic under test; ``os.urandom`` is the production choice.
"""
from __future__ import annotations

from qudag_core.crypto.aead import KEY_SIZE as AEAD_KEY_SIZE
from qudag_core.crypto.aead import NONCE_SIZE as AEAD_NONCE_SIZE
from qudag_core.crypto.aead import TAG_SIZE as AEAD_TAG_SIZE
from qudag_core.crypto.aead import ChaCha20Poly1305Key
from qudag_core.crypto.hashing import Transcript, blake3_hash, derive_key, keyed_hash
from qudag_core.crypto.mldsa import MlDsa65PrivateKey, MlDsa65PublicKey
from qudag_core.crypto.mlkem import MlKem768PrivateKey, MlKem768PublicKey
from qudag_core.crypto.x25519 import X25519PrivateKey, x25519_public_from_bytes
from qudag_core.crypto.xwing import XWingPrivateKey, XWingPublicKey

__all__ = [
    "AEAD_KEY_SIZE",
    "AEAD_NONCE_SIZE",
    "AEAD_TAG_SIZE",
    "ChaCha20Poly1305Key",
    "MlDsa65PrivateKey",
    "MlDsa65PublicKey",
    "MlKem768PrivateKey",
    "MlKem768PublicKey",
    "Transcript",
    "X25519PrivateKey",
    "XWingPrivateKey",
    "XWingPublicKey",
    "blake3_hash",
    "derive_key",
    "keyed_hash",
    "x25519_public_from_bytes",
]
