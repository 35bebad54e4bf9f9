"""ML-KEM-768 (FIPS 203) through ``cryptography``.

Private keys are kept in FIPS 203 seed form ``d || z`` (64 bytes); the library expands
them once per object, so hold on to the object, not the seed, on hot paths.
``MlKem768PublicKey`` runs the FIPS 203 §7.2 encapsulation-key check (type and modulus)
at construction: an invalid key is rejected before any encapsulation.

Keys are made through the library's Rust-level constructors when they exist: they are
the functions the public ``MLKEM768*.from_*_bytes`` classmethods forward to after a
per-call backend check, which is done once here at import instead.

``check_expanded_decapsulation_key`` is the FIPS 203 §7.3 decapsulation-key check
(length and the ``H(ek)`` hash check) for keys met in the 2400-byte expanded form; it
only hashes (SHA3-256), it decrypts nothing.  ``cryptography`` cannot load an expanded
key, so qudag itself only ever holds seeds.
"""
from __future__ import annotations

import hashlib

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mlkem as _mlkem

from qudag_core.errors import InvalidCiphertext, InvalidKey

__all__ = [
    "EK_SIZE",
    "SEED_SIZE",
    "CT_SIZE",
    "SS_SIZE",
    "DK_SIZE",
    "MlKem768PrivateKey",
    "MlKem768PublicKey",
    "check_expanded_decapsulation_key",
]

EK_SIZE = 1184
SEED_SIZE = 64
CT_SIZE = 1088
SS_SIZE = 32
DK_PKE_SIZE = 1152  # 384 * k, k = 3
DK_SIZE = DK_PKE_SIZE + EK_SIZE + 32 + 32  # dk_PKE || ek || H(ek) || z = 2400

_from_seed = _mlkem.MLKEM768PrivateKey.from_seed_bytes
_from_public = _mlkem.MLKEM768PublicKey.from_public_bytes
try:
    from cryptography.hazmat.backends.openssl.backend import backend as _backend
    from cryptography.hazmat.bindings._rust import openssl as _ro

    if _backend.mlkem_supported():  # the check the public classmethods repeat per call
        _from_seed = _ro.mlkem.from_mlkem768_seed_bytes
        _from_public = _ro.mlkem.from_mlkem768_public_bytes
except (ImportError, AttributeError):  # pragma: no cover - depends on the library layout
    pass


def check_expanded_decapsulation_key(dk: bytes) -> bytes:
    """FIPS 203 §7.3 input checks 2 and 3 on an expanded decapsulation key
    ``dk_PKE || ek || H(ek) || z``: the length is 2400 bytes and ``SHA3-256(ek)``
    equals the stored hash.  Returns the embedded ``ek``; raises ``InvalidKey``."""
    dk = bytes(dk)
    if len(dk) != DK_SIZE:
        raise InvalidKey(f"ML-KEM-768 decapsulation key must be {DK_SIZE} bytes, got {len(dk)}")
    ek = dk[DK_PKE_SIZE : DK_PKE_SIZE + EK_SIZE]
    stored = dk[DK_PKE_SIZE + EK_SIZE : DK_PKE_SIZE + EK_SIZE + 32]
    if hashlib.sha3_256(ek).digest() != stored:
        raise InvalidKey("ML-KEM-768 decapsulation key fails the H(ek) hash check")
    return ek


class MlKem768PublicKey:
    """A validated ML-KEM-768 encapsulation key."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != EK_SIZE:
            raise InvalidKey(f"ML-KEM-768 encapsulation key must be {EK_SIZE} bytes, got {len(raw)}")
        try:
            self._key = _from_public(raw)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidKey(f"ML-KEM-768 encapsulation key rejected: {exc}") from None
        self.raw: bytes = raw

    def encapsulate(self) -> tuple[bytes, bytes]:
        """Return ``(shared_secret, ciphertext)``.  Randomness comes from the library's
        CSPRNG: ``cryptography`` does not expose derandomised encapsulation."""
        ss, ct = self._key.encapsulate()
        return ss, ct


class MlKem768PrivateKey:
    """An ML-KEM-768 decapsulation key held as its 64-byte seed."""

    __slots__ = ("_key", "seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        seed = bytes(seed)
        if len(seed) != SEED_SIZE:
            raise InvalidKey(f"ML-KEM-768 seed must be {SEED_SIZE} bytes, got {len(seed)}")
        self._key = _from_seed(seed)
        self.seed: bytes = seed
        pub = self._key.public_key()
        self.public_key: MlKem768PublicKey = MlKem768PublicKey.__new__(MlKem768PublicKey)
        self.public_key._key = pub
        self.public_key.raw = pub.public_bytes_raw()

    @classmethod
    def generate(cls, rng) -> "MlKem768PrivateKey":
        """Draw a fresh key from ``rng(n) -> bytes``."""
        return cls(rng(SEED_SIZE))

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Return the 32-byte shared secret (implicit rejection: a wrong ciphertext of the
        right length yields a pseudorandom secret, never an error)."""
        if len(ciphertext) != CT_SIZE:
            raise InvalidCiphertext(f"ML-KEM-768 ciphertext must be {CT_SIZE} bytes, got {len(ciphertext)}")
        return self._key.decapsulate(bytes(ciphertext))
