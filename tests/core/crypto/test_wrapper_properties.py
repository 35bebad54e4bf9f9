"""Hypothesis properties of the ``qudag_core.crypto`` wrappers.

* Every fixed-size input of the wrong length gives the declared error for it (all are
  ``QudagError`` subclasses), never a library exception.
* Right-length but arbitrary public keys / ciphertexts give a result or a declared
  error (FIPS 203 §7.2 modulus check, RFC 7748 §6.1 low-order points).
* ChaCha20-Poly1305 (RFC 8439 §2.8): open(seal(x)) == x; flipping any bit of the sealed
  bytes, the nonce or the associated data gives ``DecryptError``.
* ``Transcript``: different item sequences give different digests (checked on
  examples: the length-prefixed encoding is injective by construction).
"""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qudag_core.crypto import aead, mldsa, mlkem, x25519, xwing
from qudag_core.crypto.aead import ChaCha20Poly1305Key
from qudag_core.crypto.hashing import Transcript, keyed_hash
from qudag_core.crypto.mldsa import MlDsa65PrivateKey, MlDsa65PublicKey
from qudag_core.crypto.mlkem import MlKem768PrivateKey, MlKem768PublicKey
from qudag_core.crypto.x25519 import X25519PrivateKey, x25519_public_from_bytes
from qudag_core.crypto.xwing import XWingPrivateKey, XWingPublicKey
from qudag_core.errors import (
    CryptoError,
    DecryptError,
    InvalidCiphertext,
    InvalidKey,
    InvalidSignature,
    QudagError,
)

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sized(n: int):
    """Arbitrary ``n``-byte strings (expanded from a 32-byte draw so Hypothesis stays
    fast on kilobyte keys), plus the all-zero and all-0xff strings."""
    return st.one_of(
        st.sampled_from([bytes(n), b"\xff" * n]),
        st.binary(min_size=32, max_size=32).map(lambda s: hashlib.shake_256(s).digest(n)),
    )


def wrong_length(n: int, slack: int = 64):
    """Byte strings of any length in [0, n + slack] except ``n``."""
    return st.integers(0, n + slack).filter(lambda k: k != n).flatmap(lambda k: st.binary(min_size=k, max_size=k))


# Built once: expanding keys is the slow part and the properties do not depend on them.
_KEM = MlKem768PrivateKey(bytes(range(64)))
_DSA = MlDsa65PrivateKey(bytes(32))
_XW = XWingPrivateKey(bytes(range(32)))
_X = X25519PrivateKey(bytes([9]) * 32)
_AEAD = ChaCha20Poly1305Key(bytes(32))

WRONG_LENGTH_CASES = [
    ("MlKem768PublicKey", mlkem.EK_SIZE, MlKem768PublicKey, InvalidKey),
    ("MlKem768PrivateKey", mlkem.SEED_SIZE, MlKem768PrivateKey, InvalidKey),
    ("MlKem768 decapsulate", mlkem.CT_SIZE, _KEM.decapsulate, InvalidCiphertext),
    ("check_expanded_decapsulation_key", mlkem.DK_SIZE, mlkem.check_expanded_decapsulation_key, InvalidKey),
    ("MlDsa65PublicKey", mldsa.PK_SIZE, MlDsa65PublicKey, InvalidKey),
    ("MlDsa65PrivateKey", mldsa.SEED_SIZE, MlDsa65PrivateKey, InvalidKey),
    ("MlDsa65 verify", mldsa.SIG_SIZE, lambda s: _DSA.public_key.verify(s, b"m"), InvalidSignature),
    ("X25519PrivateKey", x25519.KEY_SIZE, X25519PrivateKey, InvalidKey),
    ("x25519_public_from_bytes", x25519.KEY_SIZE, x25519_public_from_bytes, InvalidKey),
    ("X25519 exchange", x25519.KEY_SIZE, _X.exchange, InvalidKey),
    ("XWingPublicKey", xwing.PK_SIZE, XWingPublicKey, InvalidKey),
    ("XWingPrivateKey", xwing.SK_SIZE, XWingPrivateKey, InvalidKey),
    ("XWing decapsulate", xwing.CT_SIZE, _XW.decapsulate, InvalidCiphertext),
    ("ChaCha20Poly1305Key", aead.KEY_SIZE, ChaCha20Poly1305Key, InvalidKey),
    ("AEAD seal nonce", aead.NONCE_SIZE, lambda n: _AEAD.seal(n, b"p", b"a"), CryptoError),
    ("AEAD open nonce", aead.NONCE_SIZE, lambda n: _AEAD.open(n, bytes(32), b"a"), DecryptError),
    ("keyed_hash key", 32, lambda k: keyed_hash(k, b"m"), InvalidKey),
]


@pytest.mark.parametrize("name,size,call,error", WRONG_LENGTH_CASES, ids=[c[0] for c in WRONG_LENGTH_CASES])
def test_wrong_length_gives_declared_error(name, size, call, error):
    assert issubclass(error, QudagError)

    @FAST
    @given(data=wrong_length(size))
    def prop(data):
        with pytest.raises(error):
            call(data)

    prop()


@FAST
@given(ct=st.binary(max_size=aead.TAG_SIZE - 1))
def test_aead_open_short_ciphertext(ct):
    with pytest.raises(DecryptError):
        _AEAD.open(bytes(12), ct, b"")


@FAST
@given(ctx=st.binary(min_size=256, max_size=400))
def test_mldsa_overlong_context(ctx):
    with pytest.raises(CryptoError):
        _DSA.sign(b"m", ctx)
    with pytest.raises(InvalidSignature):
        _DSA.public_key.verify(bytes(mldsa.SIG_SIZE), b"m", ctx)


@settings(max_examples=25, deadline=None)
@given(raw=sized(mlkem.EK_SIZE))
def test_arbitrary_mlkem_key_accepted_or_invalid(raw):
    try:
        pk = MlKem768PublicKey(raw)
    except InvalidKey:
        return
    ss, ct = pk.encapsulate()
    assert len(ss) == mlkem.SS_SIZE and len(ct) == mlkem.CT_SIZE


@settings(max_examples=25, deadline=None)
@given(ct=sized(xwing.CT_SIZE))
def test_arbitrary_xwing_ciphertext_gives_secret_or_invalid_key(ct):
    try:
        ss = _XW.decapsulate(ct)
    except InvalidKey:
        return
    assert len(ss) == xwing.SS_SIZE


@settings(max_examples=25, deadline=None)
@given(pk=sized(mldsa.PK_SIZE), sig=sized(mldsa.SIG_SIZE))
def test_arbitrary_mldsa_signature_rejected(pk, sig):
    try:
        key = MlDsa65PublicKey(pk)
    except InvalidKey:
        return
    with pytest.raises(InvalidSignature):
        key.verify(sig, b"message")


@FAST
@given(key=st.binary(min_size=32, max_size=32), nonce=st.binary(min_size=12, max_size=12),
       pt=st.binary(max_size=300), aad=st.binary(max_size=64))
def test_aead_round_trip(key, nonce, pt, aad):
    k = ChaCha20Poly1305Key(key)
    sealed = k.seal(nonce, pt, aad)
    assert len(sealed) == len(pt) + aead.TAG_SIZE
    assert k.open(nonce, sealed, aad) == pt


@FAST
@given(data=st.data(), pt=st.binary(max_size=100), aad=st.binary(max_size=32))
def test_aead_tamper_any_byte(data, pt, aad):
    nonce = bytes(range(12))
    sealed = _AEAD.seal(nonce, pt, aad)
    where = data.draw(st.sampled_from(["ct", "nonce", "aad"] if aad else ["ct", "nonce"]))
    target = {"ct": sealed, "nonce": nonce, "aad": aad}[where]
    i = data.draw(st.integers(0, len(target) - 1))
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(target)
    bad[i] ^= 1 << bit
    args = {"ct": sealed, "nonce": nonce, "aad": aad, where: bytes(bad)}
    with pytest.raises(DecryptError):
        _AEAD.open(args["nonce"], args["ct"], args["aad"])


def test_aead_tamper_every_byte_exhaustively():
    nonce, pt, aad = bytes(12), b"attack at dawn", b"hdr"
    sealed = _AEAD.seal(nonce, pt, aad)
    for i in range(len(sealed)):
        bad = bytearray(sealed)
        bad[i] ^= 0x80
        with pytest.raises(DecryptError):
            _AEAD.open(nonce, bytes(bad), aad)


items = st.lists(st.tuples(st.binary(max_size=8), st.binary(max_size=8)), max_size=5)


@settings(max_examples=200, deadline=None)
@given(label_a=st.binary(max_size=8), a=items, label_b=st.binary(max_size=8), b=items)
def test_transcript_injective(label_a, a, label_b, b):
    assume((label_a, a) != (label_b, b))
    ta, tb = Transcript(label_a), Transcript(label_b)
    for label, value in a:
        ta.append(label, value)
    for label, value in b:
        tb.append(label, value)
    assert ta.digest() != tb.digest()


def test_transcript_boundary_shifts_differ():
    """Moving bytes between label and value, or between items, changes the digest."""
    seqs = [
        [(b"ab", b"c")],
        [(b"a", b"bc")],
        [(b"a", b"b"), (b"", b"c")],
        [(b"a", b""), (b"b", b"c")],
        [(b"abc", b"")],
        [(b"", b"abc")],
    ]
    digests = set()
    for s in seqs:
        t = Transcript(b"p")
        for label, value in s:
            t.append(label, value)
        digests.add(t.digest())
    assert len(digests) == len(seqs)


def test_transcript_copy_is_independent():
    t = Transcript(b"p")
    t.append(b"a", b"1")
    c = t.copy()
    c.append(b"b", b"2")
    assert t.digest() != c.digest()
    t.append(b"b", b"2")
    assert t.digest() == c.digest()
