"""Dark addresses and aliases (docs/dark.md §1-2; format after rend-spec-v3 §6)."""
from __future__ import annotations

import base64

import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.crypto import MlDsa65PrivateKey
from qudag_core.dark.address import (
    ADDRESS_LEN,
    AddressChecksumError,
    AddressError,
    AddressSyntaxError,
    AddressVersionError,
    Alias,
    AliasClaim,
    AliasClaimError,
    AliasRejected,
    AliasStore,
    AliasSyntaxError,
    DarkAddress,
    ephemeral_signing_key,
    parse_name,
)
from qudag_core.identity import Identity

# Fixed ML-DSA-65 seeds -> fixed addresses (regression vectors, byte-exact).
VECTORS = [
    (bytes(32), "ccxs525fuae4vrxcy5yotkhq7dwncu6axypxetkiqxyptk7p2uznyxqb.dark",
     "10af2eeba5a009cac6e2c770e9a8f0f8ecd153c0be1f724d4885f0f9abefd532"),
    (bytes(range(32)), "jqtojjgvcsq2ykz75f36agzzqhhuse4btbnahr2m73phn7zqapqijyqb.dark",
     "4c26e4a4d514a1ac2b3fe977e01b3981cf491381985a03c74cfede76ff3003e0"),
    (b"\xff" * 32, "qfpcdfv3wqj46tm26m4ahcgcr4qyszisvb6uua6qfykca7nphzek2xib.dark",
     "815e2196bbb413cf4d9af3380388c28f21896512a87d4a03d02e14207daf3e48"),
]


def _independent_address(pk: bytes) -> str:
    """The formula from docs/dark.md §1, written with blake3/base64 directly."""
    digest = blake3(pk, derive_key_context="qudag 2026 identity digest").digest(32)
    check = blake3(digest + b"\x01", derive_key_context="qudag 2026 dark address checksum").digest(2)
    return base64.b32encode(digest + check + b"\x01").decode().lower() + ".dark"


@pytest.mark.parametrize("seed,text,digest", VECTORS)
def test_address_vectors(seed, text, digest):
    pk = MlDsa65PrivateKey(seed).public_key.raw
    addr = DarkAddress.from_public_key(pk)
    assert str(addr) == text == _independent_address(pk)
    assert addr.identity_digest.hex() == digest
    assert len(addr.raw) == ADDRESS_LEN and len(text) == 56 + 5
    parsed = parse_name(text)
    assert parsed == addr and parsed.raw == addr.raw and str(parsed) == text
    assert parse_name(text.upper()) == addr  # case-insensitive, canonical lowercase out
    assert addr.matches_public_key(pk)


def test_address_is_identity_digest():
    ident = Identity(bytes(range(32)), bytes(32))
    addr = DarkAddress.from_public_key(ident.signing_key.public_key.raw)
    assert addr.identity_digest == ident.identity_digest
    assert addr.identity_digest == ident.issue_certificate().identity_digest


def test_checksum_error_distinct():
    text = VECTORS[0][1]
    # Change one character of the digest part: checksum no longer matches.
    bad = ("a" if text[0] != "a" else "b") + text[1:]
    with pytest.raises(AddressChecksumError):
        parse_name(bad)


def test_version_error_distinct():
    digest = bytes.fromhex(VECTORS[0][2])
    raw = digest + blake3(digest + b"\x02", derive_key_context="qudag 2026 dark address checksum").digest(2) + b"\x02"
    text = base64.b32encode(raw).decode().lower() + ".dark"
    with pytest.raises(AddressVersionError) as exc:
        parse_name(text)
    assert not isinstance(exc.value, AddressChecksumError)
    with pytest.raises(AddressVersionError):
        DarkAddress(digest, version=2)


@pytest.mark.parametrize("name", ["test.dark", "my-domain.dark", "node123.dark", "a2b.dark"])
def test_alias_valid(name):
    parsed = parse_name(name)
    assert isinstance(parsed, Alias) and parsed == name


@pytest.mark.parametrize(
    "name",
    ["invalid", ".dark", "test.darknet", "-test.dark", "test-.dark", "test--domain.dark", "ab.dark", "a" * 64 + ".dark"],
)
def test_alias_invalid(name):
    with pytest.raises(AddressSyntaxError):
        parse_name(name)


def test_alias_63_ok_and_address_shaped_label_is_address():
    assert isinstance(parse_name("a" * 63 + ".dark"), Alias)
    # 56 base32 characters are always read as an address (here: bad checksum).
    with pytest.raises(AddressChecksumError):
        parse_name("a" * 56 + ".dark")
    # 56 characters with a digit outside base32 is an alias.
    assert isinstance(parse_name("a" * 55 + "9.dark"), Alias)


@given(st.text(max_size=80))
@settings(max_examples=400, deadline=None)
def test_any_string_parses_or_declared_error(text):
    try:
        out = parse_name(text)
    except AddressError:
        return
    assert isinstance(out, (DarkAddress, Alias))
    assert parse_name(str(out)) == out


@given(st.binary(min_size=32, max_size=32))
@settings(max_examples=100, deadline=None)
def test_address_round_trip(digest):
    addr = DarkAddress(digest)
    assert parse_name(str(addr)) == addr


@given(st.binary(max_size=80), st.one_of(st.none(), st.integers(), st.binary()))
@settings(max_examples=100, deadline=None)
def test_non_strings_declared_error(blob, other):
    for value in (blob, other):
        with pytest.raises(AddressError):
            parse_name(value)


def test_ephemeral_addresses_deterministic_and_distinct():
    seed = bytes(range(32))
    k7 = ephemeral_signing_key(seed, 7)
    assert str(DarkAddress.from_public_key(k7.public_key.raw)) == "mldefb3wrjilpbemn53zqcknzhw4iy2tctctnyqjtc5r6r2dshf4d7qb.dark"
    assert ephemeral_signing_key(seed, 7).seed == k7.seed
    addrs = {str(DarkAddress.from_public_key(ephemeral_signing_key(seed, i).public_key.raw)) for i in range(4)}
    long_term = str(DarkAddress.from_public_key(MlDsa65PrivateKey(seed).public_key.raw))
    assert len(addrs) == 4 and long_term not in addrs


# ---------------------------------------------------------------- alias claims
OWNER = MlDsa65PrivateKey(bytes([3]) * 32)
OTHER = MlDsa65PrivateKey(bytes([4]) * 32)
TARGET = parse_name(VECTORS[0][1])
TARGET2 = parse_name(VECTORS[1][1])


def test_alias_claim_round_trip_and_first_come():
    store = AliasStore()
    c1 = AliasClaim.sign(OWNER, "my-domain.dark", TARGET, 1)
    got = store.put(c1.to_bytes())
    assert got.target == TARGET and store.resolve("MY-DOMAIN.dark") == TARGET
    # A different owner can't take it, whatever the revision.
    with pytest.raises(AliasRejected):
        store.put(AliasClaim.sign(OTHER, "my-domain.dark", TARGET2, 99).to_bytes())
    # The owner can't roll back or replay...
    with pytest.raises(AliasRejected):
        store.put(c1.to_bytes())
    # ...but may update with a higher revision.
    store.put(AliasClaim.sign(OWNER, "my-domain.dark", TARGET2, 2).to_bytes())
    assert store.resolve("my-domain.dark") == TARGET2


def test_alias_claim_tampering_rejected():
    data = bytearray(AliasClaim.sign(OWNER, "test.dark", TARGET, 5).to_bytes())
    for pos in (0, 1, 3, 20, 60, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 0x04
        with pytest.raises((AliasClaimError, AddressError)):
            AliasClaim.from_bytes(bytes(bad))
    with pytest.raises(AliasClaimError):
        AliasClaim.from_bytes(bytes(data) + b"\x00")
    with pytest.raises(AliasSyntaxError):
        AliasClaim.sign(OWNER, "ab.dark", TARGET, 1)


@given(st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_alias_claim_garbage_declared_error(blob):
    with pytest.raises((AliasClaimError, AddressError)):
        AliasClaim.from_bytes(blob)


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567-.09ABZ", min_size=0, max_size=70))
@settings(max_examples=400, deadline=None)
def test_near_valid_names_parse_or_declared_error(label):
    """Labels drawn from the address/alias alphabet reach every branch of the parser."""
    for text in (label + ".dark", label):
        try:
            out = parse_name(text)
        except AddressError:
            continue
        assert parse_name(str(out)) == out
        if isinstance(out, Alias):
            lab = out.label
            assert 3 <= len(lab) <= 63 and "--" not in lab and lab[0] != "-" and lab[-1] != "-"


@given(st.binary(min_size=32, max_size=32), st.integers(0, 56 - 1), st.sampled_from("abcdefghijklmnopqrstuvwxyz234567"))
@settings(max_examples=300, deadline=None)
def test_single_character_typo_detected(digest, pos, ch):
    """A one-character change to an address is a checksum or version error, unless the
    character is unchanged or (probability 2**-16) the typo is itself a valid address;
    35 bytes are exactly 56 base32 characters, so no character is padding."""
    text = str(DarkAddress(digest))
    typo = text[:pos] + ch + text[pos + 1 :]
    try:
        out = parse_name(typo)
    except (AddressChecksumError, AddressVersionError):
        return
    assert out == DarkAddress(digest) if typo == text else str(out) == typo
