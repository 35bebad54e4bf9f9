"""qudag_core.keystore: seal/open round trips, and the error rule of its docstring.

The rule under test: every truncation and every single-byte change of a keystore gives
``KeystoreCorrupt`` (the file checksum catches it before the KDF runs); a wrong
passphrase, or a deliberate edit of salt / KDF parameters / check value with the
checksum recomputed, gives ``WrongPassphrase``; a deliberate edit of nonce, header or
ciphertext with the checksum recomputed gives ``KeystoreCorrupt`` (AEAD fails after the
passphrase check passed).  Tests use scrypt n=2**4 to stay fast; one test runs the
default parameters once.
"""
from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from qudag_core import keystore as ks
from qudag_core.crypto.hashing import blake3_hash
from qudag_core.errors import QudagError
from qudag_core.keystore import (
    DEFAULT_KDF_PARAMS,
    KeystoreCorrupt,
    KeystoreUsageError,
    ScryptParams,
    WrongPassphrase,
    open_keystore,
    seal_keystore,
)

FAST_KDF = ScryptParams(n=2**4, r=1, p=1)
SECRETS = {"mldsa65-seed": bytes(range(32)), "xwing-seed": bytes(range(32, 64))}
PASS = b"correct horse battery staple"

SALT = slice(13, 29)
PARAMS = slice(10, 13)
NONCE = slice(29, 41)
CHECK = slice(41, 57)


def _seal(rng, secrets=SECRETS, passphrase=PASS, params=FAST_KDF) -> bytes:
    return seal_keystore(secrets, passphrase, rng, kdf_params=params)


def _rechecksum(body: bytes) -> bytes:
    return body + blake3_hash(body, 32)


def _edit(blob: bytes, i: int, xor: int = 0xFF) -> bytes:
    b = bytearray(blob)
    b[i] ^= xor
    return bytes(b)


def test_round_trip(rng):
    blob = _seal(rng)
    assert open_keystore(blob, PASS) == SECRETS
    assert blob.startswith(b"QUDAGKS\x00\x01\x01")


def test_round_trip_default_params(rng):
    blob = seal_keystore(SECRETS, PASS, rng)
    assert blob[10:13] == bytes([15, 8, 1])
    assert open_keystore(blob, PASS) == SECRETS


def test_identity_seeds_survive(rng):
    """The identity layer's use: seeds go in, the same public keys come out."""
    from qudag_core.crypto import MlDsa65PrivateKey, XWingPrivateKey

    dsa, kem = MlDsa65PrivateKey.generate(rng), XWingPrivateKey.generate(rng)
    blob = _seal(rng, {"mldsa65-seed": dsa.seed, "xwing-seed": kem.seed})
    back = open_keystore(blob, PASS)
    assert MlDsa65PrivateKey(back["mldsa65-seed"]).public_key == dsa.public_key
    assert XWingPrivateKey(back["xwing-seed"]).public_key == kem.public_key
    assert dsa.seed not in blob and kem.seed not in blob


def test_empty_keystore_and_empty_values(rng):
    assert open_keystore(_seal(rng, {}), PASS) == {}
    blob = _seal(rng, {"a": b"", "é": b"\x00"}, passphrase=b"")
    assert open_keystore(blob, b"") == {"a": b"", "é": b"\x00"}


def test_layout(rng):
    """The documented layout: header fields at their offsets, the header is the AAD,
    the checksum is BLAKE3 of everything before it."""
    blob = _seal(rng)
    assert blob[:8] == ks.MAGIC
    assert blob[8] == ks.FORMAT_VERSION and blob[9] == ks.KDF_SCRYPT
    assert blob[PARAMS] == bytes([4, 1, 1])
    assert blob[-32:] == blake3_hash(blob[:-32], 32)
    payload = 2 + sum(1 + len(k.encode()) + 4 + len(v) for k, v in SECRETS.items())
    assert len(blob) == ks.HEADER_SIZE + payload + 16 + 32


def test_fresh_salt_and_nonce_each_time(rng):
    a, b = _seal(rng), _seal(rng)
    assert a[SALT] != b[SALT] and a[NONCE] != b[NONCE]
    assert open_keystore(a, PASS) == open_keystore(b, PASS)


def test_wrong_passphrase(rng):
    """Includes the passphrases plain scrypt cannot tell apart (PBKDF2-HMAC pads short
    keys with zeros and hashes long ones): the prehash makes them distinct."""
    blob = _seal(rng)
    long_pass = b"y" * 100
    long_blob = _seal(rng, passphrase=long_pass)
    for wrong in (b"", b"correct horse battery stapl", PASS + b"\x00", PASS + b"\x00" * 30, b"x" * 100):
        with pytest.raises(WrongPassphrase):
            open_keystore(blob, wrong)
    with pytest.raises(WrongPassphrase):
        open_keystore(long_blob, hashlib.sha256(long_pass).digest())
    assert open_keystore(long_blob, long_pass) == SECRETS


def test_every_truncation_is_corrupt(rng):
    blob = _seal(rng, {"k": b"v" * 5})
    for n in range(len(blob)):
        with pytest.raises(KeystoreCorrupt):
            open_keystore(blob[:n], PASS)


def test_trailing_garbage_is_corrupt(rng):
    blob = _seal(rng)
    for extra in (b"\x00", b"garbage", blob[-32:]):
        with pytest.raises(KeystoreCorrupt):
            open_keystore(blob + extra, PASS)


@pytest.mark.parametrize("xor", [0x01, 0x80, 0xFF])
def test_every_byte_flip_is_corrupt(rng, xor):
    blob = _seal(rng, {"k": b"v" * 5})
    for i in range(len(blob)):
        with pytest.raises(KeystoreCorrupt):
            open_keystore(_edit(blob, i, xor), PASS)


def test_deliberate_edits_with_recomputed_checksum(rng):
    """Past the checksum: salt/params/check edits look like a wrong passphrase, the
    rest fails authentication; magic/version/KDF-id edits are refused outright."""
    blob = _seal(rng)
    body = blob[:-32]
    for i in range(len(body)):
        edited = _rechecksum(_edit(body, i, 0x01))
        if i < 10:
            expected = KeystoreCorrupt  # magic, version, KDF id
        elif i in range(PARAMS.start, PARAMS.stop):
            # log2n 4->5 is a different KDF; r 1->0, p 1->0 are refused
            expected = WrongPassphrase if i == 10 else KeystoreCorrupt
        elif i in range(SALT.start, SALT.stop) or i in range(CHECK.start, CHECK.stop):
            expected = WrongPassphrase
        else:
            expected = KeystoreCorrupt  # nonce, ciphertext, tag
        with pytest.raises(expected):
            open_keystore(edited, PASS)


def test_unknown_version_and_kdf(rng):
    body = _seal(rng)[:-32]
    with pytest.raises(KeystoreCorrupt, match="version 2"):
        open_keystore(_rechecksum(body[:8] + b"\x02" + body[9:]), PASS)
    with pytest.raises(KeystoreCorrupt, match="KDF id 7"):
        open_keystore(_rechecksum(body[:9] + b"\x07" + body[10:]), PASS)
    with pytest.raises(KeystoreCorrupt, match="bad magic"):
        open_keystore(b"PK\x03\x04" + body[4:], PASS)


@pytest.mark.parametrize(
    "log2n,r,p",
    [(21, 1, 1), (40, 1, 1), (255, 1, 1), (0, 1, 1), (4, 17, 1), (4, 0, 1), (4, 1, 5), (4, 1, 0), (20, 16, 1), (20, 4, 1), (19, 16, 4)],
)
def test_hostile_kdf_params_refused_before_kdf(rng, log2n, r, p):
    """Caps: n <= 2**20, r <= 16, p <= 4 and 128*r*n <= 256 MiB.  Refused on load
    (fast: no scrypt runs) and refused on seal."""
    body = _seal(rng)[:-32]
    hostile = _rechecksum(body[:10] + bytes([log2n, r, p]) + body[13:])
    with pytest.raises(KeystoreCorrupt, match="log2|KDF parameters"):
        open_keystore(hostile, PASS)
    if log2n < 64:
        with pytest.raises(KeystoreUsageError):
            seal_keystore({}, PASS, rng, kdf_params=ScryptParams(1 << log2n, r, p))


def test_largest_allowed_params_are_accepted_by_the_checker():
    assert ScryptParams(2**20, 2, 1)._problem() is None  # 256 MiB exactly
    assert ScryptParams(2**20, 3, 1)._problem() is not None
    assert DEFAULT_KDF_PARAMS._problem() is None
    assert ScryptParams(3, 1, 1)._problem() is not None  # not a power of two


def test_seal_usage_errors(rng):
    for bad in ({"": b"x"}, {"x" * 256: b"x"}, {"a": "text"}, {1: b"x"}):
        with pytest.raises(KeystoreUsageError):
            _seal(rng, bad)
    with pytest.raises(KeystoreUsageError):
        seal_keystore(SECRETS, "text passphrase", rng, kdf_params=FAST_KDF)
    with pytest.raises(KeystoreUsageError):
        seal_keystore(SECRETS, PASS, lambda n: b"short", kdf_params=FAST_KDF)
    with pytest.raises(KeystoreUsageError):
        seal_keystore(SECRETS, PASS, rng, kdf_params=(2**4, 1, 1))
    with pytest.raises(KeystoreUsageError):
        open_keystore(_seal(rng), "text passphrase")


def test_payload_decoder_is_strict():
    good = ks._encode_secrets({"a": b"1", "b": b"22"})
    assert ks._decode_secrets(good) == {"a": b"1", "b": b"22"}
    bad_payloads = [
        b"",
        b"\x00",
        good + b"\x00",
        good[:-1],
        struct.pack(">H", 1) + b"\x00" + struct.pack(">I", 0),  # empty name
        struct.pack(">H", 1) + b"\x01\xff" + struct.pack(">I", 0),  # name not UTF-8
        struct.pack(">H", 2) + (b"\x01a" + struct.pack(">I", 0)) * 2,  # duplicate
        struct.pack(">H", 1) + b"\x01a" + struct.pack(">I", 10) + b"short",
        struct.pack(">H", 5000),
    ]
    for p in bad_payloads:
        with pytest.raises(KeystoreCorrupt):
            ks._decode_secrets(p)


def test_messages_never_contain_secrets(rng):
    secret = b"\xde\xad\xbe\xef" * 8
    blob = _seal(rng, {"s": secret})
    seen = []
    for attempt in (lambda: open_keystore(blob, b"wrong"), lambda: open_keystore(blob[:-1], PASS),
                    lambda: open_keystore(_edit(blob, 70), PASS)):
        with pytest.raises(QudagError) as info:
            attempt()
        seen.append(str(info.value) + repr(info.value))
    for text in seen:
        assert secret.hex() not in text and "deadbeef" not in text and str(secret) not in text
        assert PASS.decode() not in text
    assert "2**4" in repr(FAST_KDF)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_give_declared_errors(data):
    with pytest.raises((KeystoreCorrupt, WrongPassphrase)):
        open_keystore(data, PASS)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tail=st.binary(max_size=300))
def test_valid_prefix_then_arbitrary_bytes(tail):
    with pytest.raises((KeystoreCorrupt, WrongPassphrase)):
        open_keystore(b"QUDAGKS\x00\x01" + tail, PASS)


_BASE = seal_keystore(SECRETS, PASS, lambda n: hashlib.sha256(b"base%d" % n).digest()[:n], kdf_params=FAST_KDF)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(st.tuples(st.integers(13, len(_BASE) - 33), st.integers(1, 255)), min_size=1, max_size=4),
       cut=st.integers(0, 40), rechecksum=st.booleans())
def test_mutated_keystores_give_declared_errors(edits, cut, rechecksum):
    """Mutations past the KDF parameters (so scrypt stays cheap), optionally shortened,
    optionally with the checksum fixed up so the deeper checks run."""
    body = bytearray(_BASE[:-32])
    for i, x in edits:
        body[i] ^= x
    body = bytes(body[: len(body) - cut])
    blob = _rechecksum(body) if rechecksum else body + _BASE[-32:]
    assume(blob != _BASE)
    with pytest.raises((KeystoreCorrupt, WrongPassphrase)):
        open_keystore(blob, PASS)


@settings(max_examples=40, deadline=None)
@given(secrets=st.dictionaries(st.text(min_size=1, max_size=20), st.binary(max_size=64), max_size=5),
       passphrase=st.binary(max_size=40))
def test_round_trip_property(secrets, passphrase):
    secrets = {k: v for k, v in secrets.items() if len(k.encode()) <= 255}
    counter = iter(range(1_000_000))
    rng = lambda n: hashlib.sha256(b"%d" % next(counter)).digest()[:n]  # noqa: E731
    blob = seal_keystore(secrets, passphrase, rng, kdf_params=FAST_KDF)
    assert open_keystore(blob, passphrase) == secrets
    with pytest.raises(WrongPassphrase):
        open_keystore(blob, passphrase + b"!")
