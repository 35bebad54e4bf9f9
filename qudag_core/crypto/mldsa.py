"""ML-DSA-65 (FIPS 204) through ``cryptography``: keygen from a 32-byte seed, sign and
verify with a context string (FIPS 204 §5.2, at most 255 bytes).

Public keys are parsed once per object; callers that verify the same signer repeatedly
(certificates, records) keep the object.
"""
from __future__ import annotations

from cryptography.exceptions import InvalidSignature as _LibInvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import mldsa as _mldsa

from qudag_core.errors import CryptoError, InvalidKey, InvalidSignature

__all__ = ["PK_SIZE", "SIG_SIZE", "SEED_SIZE", "MAX_CONTEXT", "MlDsa65PrivateKey", "MlDsa65PublicKey"]

PK_SIZE = 1952
SIG_SIZE = 3309
SEED_SIZE = 32
MAX_CONTEXT = 255


def _check_context(context: bytes, error: type = CryptoError) -> bytes:
    # FIPS 204 Alg. 2 line 1 / Alg. 3 line 1: a context over 255 bytes is an error.
    # Verification reports it as InvalidSignature (Wycheproof "InvalidContext" cases
    # expect a plain reject); signing as CryptoError.  Both are ValueErrors.
    context = bytes(context)
    if len(context) > MAX_CONTEXT:
        raise error(f"ML-DSA context string is at most {MAX_CONTEXT} bytes, got {len(context)}")
    return context


class MlDsa65PublicKey:
    """An ML-DSA-65 verification key."""

    __slots__ = ("_key", "raw")

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != PK_SIZE:
            raise InvalidKey(f"ML-DSA-65 public key must be {PK_SIZE} bytes, got {len(raw)}")
        try:
            self._key = _mldsa.MLDSA65PublicKey.from_public_bytes(raw)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise InvalidKey(f"ML-DSA-65 public key rejected: {exc}") from None
        self.raw: bytes = raw

    def verify(self, signature: bytes, message: bytes, context: bytes = b"") -> None:
        """Raise ``InvalidSignature`` unless ``signature`` is valid for ``message``."""
        context = _check_context(context, InvalidSignature)
        if len(signature) != SIG_SIZE:
            raise InvalidSignature(f"ML-DSA-65 signature must be {SIG_SIZE} bytes, got {len(signature)}")
        try:
            self._key.verify(bytes(signature), bytes(message), context)
        except _LibInvalidSignature:
            raise InvalidSignature("ML-DSA-65 signature does not verify") from None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MlDsa65PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


class MlDsa65PrivateKey:
    """An ML-DSA-65 signing key, kept as its 32-byte seed ``xi``."""

    __slots__ = ("_key", "seed", "public_key")

    def __init__(self, seed: bytes) -> None:
        seed = bytes(seed)
        if len(seed) != SEED_SIZE:
            raise InvalidKey(f"ML-DSA-65 seed must be {SEED_SIZE} bytes, got {len(seed)}")
        self._key = _mldsa.MLDSA65PrivateKey.from_seed_bytes(seed)
        self.seed: bytes = seed
        pub = self._key.public_key()
        self.public_key: MlDsa65PublicKey = MlDsa65PublicKey.__new__(MlDsa65PublicKey)
        self.public_key._key = pub
        self.public_key.raw = pub.public_bytes_raw()

    @classmethod
    def generate(cls, rng) -> "MlDsa65PrivateKey":
        return cls(rng(SEED_SIZE))

    def sign(self, message: bytes, context: bytes = b"") -> bytes:
        """Sign (hedged, as the library does) ``message`` under ``context``."""
        return self._key.sign(bytes(message), _check_context(context))
