"""Node identities and certificates (qudag_core/identity.py; docs/handshake.md §1)."""
from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.crypto import derive_key
from qudag_core.identity import (
    MAX_ADDRESSES,
    MAX_CERT_SIZE,
    NODE_ID_SIZE,
    CertificateBadAddress,
    CertificateBadLength,
    CertificateBadSignature,
    CertificateCache,
    CertificateError,
    CertificateExpired,
    CertificateNotYetValid,
    CertificateTrailingBytes,
    CertificateTruncated,
    CertificateUnknownVersion,
    Identity,
    NodeCertificate,
    NodeId,
)

NOW = 1_800_000_000


def _ident(name: str) -> Identity:
    return Identity(hashlib.sha256(b"m" + name.encode()).digest(), hashlib.sha256(b"x" + name.encode()).digest())


ALICE = _ident("alice")
BOB = _ident("bob")
ADDRS = [("192.0.2.1", 4433), ("2001:db8::1", 443)]
CERT = ALICE.issue_certificate(ADDRS, now=NOW, lifetime=3600)
RAW = CERT.to_bytes()


# ---------------------------------------------------------------- NodeId
def test_node_id_is_blake3_of_domain_and_key():
    pk = ALICE.signing_key.public_key.raw
    assert ALICE.node_id == derive_key("qudag 2026 identity node-id", pk, 20)
    assert isinstance(ALICE.node_id, bytes) and len(ALICE.node_id) == NODE_ID_SIZE
    assert repr(ALICE.node_id) == f"NodeId({ALICE.node_id.hex()})"
    assert NodeId.from_hex(ALICE.node_id.hex()) == ALICE.node_id
    assert CERT.node_id == ALICE.node_id


def test_node_id_distance():
    a, b = ALICE.node_id, BOB.node_id
    assert a.distance(a) == 0
    assert a.distance(b) == b.distance(a) == int.from_bytes(bytes(x ^ y for x, y in zip(a, b)), "big")
    with pytest.raises(ValueError):
        a.distance(b"short")
    with pytest.raises(ValueError):
        NodeId(b"\x00" * 19)
    with pytest.raises(AttributeError):
        a.foo = 1  # slotted, immutable


# ---------------------------------------------------------------- Identity
def test_identity_secrets_round_trip_and_repr():
    s = ALICE.secrets()
    assert set(s) == {"mldsa65-seed", "xwing-seed"}
    again = Identity.from_secrets(s)
    assert again.node_id == ALICE.node_id
    assert again.kem_key.public_key.raw == ALICE.kem_key.public_key.raw
    text = repr(ALICE)
    assert ALICE.node_id.hex() in text
    for v in s.values():
        assert v.hex() not in text
    with pytest.raises(ValueError):
        Identity.from_secrets({"mldsa65-seed": s["mldsa65-seed"]})


def test_identity_generate_uses_rng(rng):
    a = Identity.generate(rng)
    assert isinstance(a.node_id, NodeId) and a.node_id != ALICE.node_id


# ---------------------------------------------------------------- certificate encoding
def test_certificate_round_trip():
    back = NodeCertificate.from_bytes(RAW)
    assert back == CERT and back.to_bytes() == RAW
    assert list(back.addresses) == ADDRS
    assert back.issued_at == NOW and back.expires_at == NOW + 3600
    assert back.mldsa_public_key == ALICE.signing_key.public_key.raw
    assert back.xwing_public_key == ALICE.kem_key.public_key.raw
    back.verify(NOW + 1)
    assert len(RAW) <= MAX_CERT_SIZE


def test_largest_certificate_is_max_size():
    c = ALICE.issue_certificate([("2001:db8::%x" % i, 1 + i) for i in range(MAX_ADDRESSES)], now=NOW)
    assert len(c.to_bytes()) == MAX_CERT_SIZE
    NodeCertificate.from_bytes(c.to_bytes()).verify(NOW)


def test_every_truncation_is_declared():
    for n in range(len(RAW)):
        with pytest.raises(CertificateTruncated):
            NodeCertificate.from_bytes(RAW[:n])


def test_trailing_bytes():
    with pytest.raises(CertificateTrailingBytes):
        NodeCertificate.from_bytes(RAW + b"\x00")


def test_unknown_version():
    with pytest.raises(CertificateUnknownVersion):
        NodeCertificate.from_bytes(b"\x02" + RAW[1:])


@pytest.mark.parametrize("offset", [1, 1 + 2 + 1952])
def test_bad_key_length_fields(offset):
    bad = RAW[:offset] + struct.pack(">H", 1000) + RAW[offset + 2 :]
    with pytest.raises(CertificateBadLength):
        NodeCertificate.from_bytes(bad)


def test_bad_address_entries():
    count_at = 1 + 2 + 1952 + 2 + 1216
    with pytest.raises(CertificateBadAddress):
        NodeCertificate.from_bytes(RAW[:count_at] + bytes([MAX_ADDRESSES + 1]) + RAW[count_at + 1 :])
    with pytest.raises(CertificateBadAddress):  # address type 5
        NodeCertificate.from_bytes(RAW[: count_at + 1] + b"\x05" + RAW[count_at + 2 :])
    with pytest.raises(CertificateBadAddress):
        ALICE.issue_certificate([("not-an-ip", 1)], now=NOW)
    with pytest.raises(CertificateBadAddress):
        ALICE.issue_certificate([("192.0.2.1", 0)], now=NOW)
    with pytest.raises(CertificateBadAddress):
        ALICE.issue_certificate([("192.0.2.1", 1)] * (MAX_ADDRESSES + 1), now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=7000))
def test_arbitrary_bytes_give_declared_errors(data):
    try:
        NodeCertificate.from_bytes(data)
    except CertificateError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(RAW) - 1), st.integers(1, 255), st.booleans())
def test_mutations_never_verify(pos, xor, cut):
    data = bytearray(RAW)
    data[pos] ^= xor
    if cut:
        data = data[: pos + 1]
    try:
        c = NodeCertificate.from_bytes(bytes(data))
    except CertificateError:
        return
    with pytest.raises(CertificateError):
        c.verify(NOW + 1)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str), max_size=MAX_ADDRESSES),
    st.integers(1, 65535),
    st.integers(0, 2**40),
    st.integers(1, 2**30),
)
def test_encoding_round_trip_property(hosts, port, issued, lifetime):
    c = NodeCertificate(
        mldsa_public_key=ALICE.signing_key.public_key.raw,
        xwing_public_key=ALICE.kem_key.public_key.raw,
        addresses=[(h, port) for h in hosts],
        issued_at=issued,
        expires_at=issued + lifetime,
        signature=bytes(3309),
    )
    back = NodeCertificate.from_bytes(c.to_bytes())
    assert back.to_bytes() == c.to_bytes() and back.addresses == c.addresses


# ---------------------------------------------------------------- verification
def test_validity_window():
    c = NodeCertificate.from_bytes(RAW)
    with pytest.raises(CertificateNotYetValid):
        c.verify(NOW - 1)
    c.verify(NOW)
    c.verify(NOW + 3599)
    with pytest.raises(CertificateExpired):
        c.verify(NOW + 3600)


def test_wrong_signature():
    bad = bytearray(RAW)
    bad[-100] ^= 1
    with pytest.raises(CertificateBadSignature):
        NodeCertificate.from_bytes(bytes(bad)).verify(NOW)


def test_signature_by_another_identity():
    """Bob copies Alice's certificate body but signs with his key: the ML-DSA key in
    the body is Alice's, so it does not verify."""
    c = NodeCertificate.from_bytes(RAW)
    forged = NodeCertificate(
        mldsa_public_key=c.mldsa_public_key, xwing_public_key=BOB.kem_key.public_key.raw, addresses=ADDRS,
        issued_at=NOW, expires_at=NOW + 3600,
    )
    forged.signature = BOB.signing_key.sign(forged.signed_part(), b"qudag 2026 node-certificate")
    with pytest.raises(CertificateBadSignature):
        NodeCertificate.from_bytes(forged.to_bytes()).verify(NOW)


def test_signature_context_is_bound():
    c = NodeCertificate(mldsa_public_key=ALICE.signing_key.public_key.raw, xwing_public_key=ALICE.kem_key.public_key.raw,
                        addresses=ADDRS, issued_at=NOW, expires_at=NOW + 3600)
    c.signature = ALICE.signing_key.sign(c.signed_part(), b"some other context")
    with pytest.raises(CertificateBadSignature):
        NodeCertificate.from_bytes(c.to_bytes()).verify(NOW)


def test_cache_hit_avoids_reverification():
    cache = CertificateCache(max_entries=2)
    a = cache.verify(RAW, NOW + 1)
    assert cache.signature_checks == 1 and cache.misses == 1
    for _ in range(5):
        assert cache.verify(RAW, NOW + 2) is a
    assert cache.signature_checks == 1 and cache.hits == 5
    with pytest.raises(CertificateExpired):  # the window is checked on every hit
        cache.verify(RAW, NOW + 3600)
    assert cache.signature_checks == 1


def test_cache_is_bounded_lru_and_skips_bad():
    cache = CertificateCache(max_entries=2)
    certs = [_ident(f"n{i}").issue_certificate([], now=NOW).to_bytes() for i in range(3)]
    for c in certs:
        cache.verify(c, NOW)
    assert len(cache) == 2
    cache.verify(certs[0], NOW)  # evicted, so verified again
    assert cache.signature_checks == 4
    bad = bytearray(certs[1])
    bad[-1] ^= 1
    with pytest.raises(CertificateBadSignature):
        cache.verify(bytes(bad), NOW)
    with pytest.raises(CertificateBadSignature):
        cache.verify(bytes(bad), NOW)  # a bad certificate is never cached
    assert cache.signature_checks == 6
