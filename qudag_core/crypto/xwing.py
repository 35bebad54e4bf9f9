"""X-Wing hybrid KEM (draft-connolly-cfrg-xwing-kem, §5): ML-KEM-768 + X25519.

The private key is the 32-byte seed; SHAKE-256 expands it to the ML-KEM-768 seed
``d || z`` and the X25519 scalar.  The shared secret is
``SHA3-256(ss_M || ss_X || ct_X || pk_X || XWingLabel)``, so the session stays safe if
either component holds.  Expansion is done once per ``XWingPrivateKey`` object.

``encapsulate`` takes ``rng`` for the X25519 ephemeral; ML-KEM encapsulation randomness
comes from the library, which offers no derandomised variant, so the vector tests check
keygen byte-for-byte and decapsulation against the published shared secrets.
"""
from __future__ import annotations

import hashlib

from qudag_core.crypto.mlkem import CT_SIZE as MLKEM_CT_SIZE
from qudag_core.crypto.mlkem import EK_SIZE as MLKEM_EK_SIZE
from qudag_core.crypto.mlkem import MlKem768PrivateKey, MlKem768PublicKey
from qudag_core.crypto.x25519 import X25519PrivateKey, x25519_public_from_bytes
from qudag_core.errors import InvalidCiphertext, InvalidKey

__all__ = ["PK_SIZE", "CT_SIZE", "SK_SIZE", "SS_SIZE", "XWingPrivateKey", "XWingPublicKey"]

XWING_LABEL = b"\\.//^\\"
PK_SIZE = MLKEM_EK_SIZE + 32  # 1216
CT_SIZE = MLKEM_CT_SIZE + 32  # 1120
SK_SIZE = 32
SS_SIZE = 32


def _combine(ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    return hashlib.sha3_256(b"".join((ss_m, ss_x, ct_x, pk_x, XWING_LABEL))).digest()


class XWingPublicKey:
    """An X-Wing encapsulation key ``pk_M || pk_X`` (1216 bytes), validated once."""

    __slots__ = ("raw", "_pk_m", "_pk_x_raw", "_pk_x")

    def __init__(self, raw: bytes) -> None:
        raw = bytes(raw)
        if len(raw) != PK_SIZE:
            raise InvalidKey(f"X-Wing public key must be {PK_SIZE} bytes, got {len(raw)}")
        self._pk_m = MlKem768PublicKey(raw[:MLKEM_EK_SIZE])
        self._pk_x_raw = raw[MLKEM_EK_SIZE:]
        self._pk_x = x25519_public_from_bytes(self._pk_x_raw)
        self.raw: bytes = raw

    @property
    def mlkem_key(self) -> MlKem768PublicKey:
        """The validated ML-KEM-768 half."""
        return self._pk_m

    @property
    def x25519_public(self) -> bytes:
        """The 32-byte X25519 half."""
        return self._pk_x_raw

    def encapsulate(self, rng) -> tuple[bytes, bytes]:
        """Return ``(shared_secret, ciphertext)``; ``rng`` supplies the X25519 ephemeral."""
        ek_x = X25519PrivateKey(rng(32))
        ss, ct_m = self.encapsulate_with_x25519(ek_x)
        return ss, ct_m + ek_x.public

    def encapsulate_with_x25519(self, ephemeral: X25519PrivateKey, mlkem_encapsulate=None) -> tuple[bytes, bytes]:
        """X-Wing encapsulation (§5.3) whose X25519 ephemeral is supplied by the caller,
        so one ephemeral can serve several encapsulations (Noise's es/ee/se pattern).

        Returns ``(shared_secret, ct_M)``: the full X-Wing ciphertext is
        ``ct_M || ephemeral.public``.  ``mlkem_encapsulate(MlKem768PublicKey) -> (ss, ct)``
        may replace the library call so recorded encapsulations can be replayed in
        known-answer tests."""
        if mlkem_encapsulate is None:
            ss_m, ct_m = self._pk_m._key.encapsulate()
        else:
            ss_m, ct_m = mlkem_encapsulate(self._pk_m)
        ss_x = ephemeral.exchange(self._pk_x)
        return _combine(ss_m, ss_x, ephemeral.public, self._pk_x_raw), ct_m

    def __eq__(self, other: object) -> bool:
        return isinstance(other, XWingPublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)


class XWingPrivateKey:
    """An X-Wing decapsulation key: the 32-byte seed, expanded once."""

    __slots__ = ("seed", "_sk_m", "_sk_x", "public_key")

    def __init__(self, seed: bytes) -> None:
        seed = bytes(seed)
        if len(seed) != SK_SIZE:
            raise InvalidKey(f"X-Wing private key must be {SK_SIZE} bytes, got {len(seed)}")
        expanded = hashlib.shake_256(seed).digest(96)
        self._sk_m = MlKem768PrivateKey(expanded[:64])
        self._sk_x = X25519PrivateKey(expanded[64:96])
        self.seed: bytes = seed
        pk = XWingPublicKey.__new__(XWingPublicKey)
        pk._pk_m = self._sk_m.public_key
        pk._pk_x_raw = self._sk_x.public
        pk._pk_x = self._sk_x.public_key_object()
        pk.raw = self._sk_m.public_key.raw + self._sk_x.public
        self.public_key: XWingPublicKey = pk

    @classmethod
    def generate(cls, rng) -> "XWingPrivateKey":
        return cls(rng(SK_SIZE))

    @property
    def x25519_key(self) -> X25519PrivateKey:
        """The X25519 half (for ``XWingPublicKey.encapsulate_with_x25519``)."""
        return self._sk_x

    def decapsulate(self, ciphertext: bytes) -> bytes:
        """Return the 32-byte shared secret.  A wrong-length ciphertext raises
        ``InvalidCiphertext``; a low-order X25519 share raises ``InvalidKey``."""
        if len(ciphertext) != CT_SIZE:
            raise InvalidCiphertext(f"X-Wing ciphertext must be {CT_SIZE} bytes, got {len(ciphertext)}")
        ciphertext = bytes(ciphertext)
        ct_x = ciphertext[MLKEM_CT_SIZE:]
        # The lengths are checked above, so the library objects are called directly.
        ss_m = self._sk_m._key.decapsulate(ciphertext[:MLKEM_CT_SIZE])
        ss_x = self._sk_x.exchange(x25519_public_from_bytes(ct_x))
        return _combine(ss_m, ss_x, ct_x, self._sk_x.public)
