"""BEP 42 node-id restriction: CRC32C, the BEP's test-vector table, exemptions."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.krpc import bep42

# BEP 42 "Node ID restriction", test vectors: IP, rand, example node id.  The first 21 bits
# and the low 3 bits of the last byte are determined; the rest is random filler.
BEP42_VECTORS = [
    ("124.31.75.21", 1, "5fbfbff10c5d6a4ec8a88e4c6ab4c28b95eee401"),
    ("21.75.31.124", 86, "5a3ce9c14e7a08645677bbd1cfe7d8f956d53256"),
    ("65.23.51.170", 22, "a5d43220bc8f112a3d426c84764f8c2a1150e616"),
    ("84.124.73.14", 65, "1b0321dd1bb1fe518101ceef99462b947a01ff41"),
    ("43.213.53.83", 90, "e56f6cbf5b7c4be0237986d5243b87aa6d51305a"),
]


def test_crc32c_check_value():
    # The CRC catalogue check value for CRC-32C ("123456789"), and RFC 3720 B.4 vectors.
    assert bep42.crc32c(b"123456789") == 0xE3069283
    assert bep42.crc32c(bytes(32)) == 0x8A9136AA
    assert bep42.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert bep42.crc32c(bytes(range(32))) == 0x46DD794E
    assert bep42.crc32c(b"6789", bep42.crc32c(b"12345")) == 0xE3069283


@pytest.mark.parametrize("ip,rand,example", BEP42_VECTORS)
def test_bep42_vectors(ip, rand, example, vector_count):
    example_id = bytes.fromhex(example)
    assert bep42.is_valid_node_id(example_id, ip)
    crc = bep42.node_id_prefix(ip, rand & 7)
    assert crc >> 11 == int.from_bytes(example_id[:3], "big") >> 3  # the 21 determined bits
    # Rebuilding the example from its own filler reproduces it byte for byte.
    filler = bytes([example_id[2] & 7]) + example_id[3:19]
    assert bep42.node_id_for_ip(ip, rand, filler) == example_id
    # Flipping any of the 21 bits, or r, breaks it.
    for bit in (0, 7, 12, 20):
        bad = bytearray(example_id)
        bad[bit // 8] ^= 0x80 >> (bit % 8)
        assert not bep42.is_valid_node_id(bytes(bad), ip)
    bad = bytearray(example_id)
    bad[19] ^= 1 if (rand & 7) != 7 else 2
    assert not bep42.is_valid_node_id(bytes(bad), ip)
    vector_count("BEP 42 node id table", 1)


@pytest.mark.parametrize("ip", ["10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.9.9",
                                "127.0.0.1", "::1", "fe80::1", "fd00::5", "::ffff:192.168.0.1"])
def test_local_addresses_exempt(ip):
    assert bep42.is_exempt(ip)
    assert bep42.is_valid_node_id(b"\x00" * 20, ip)


@pytest.mark.parametrize("ip", ["172.32.0.1", "8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8", "11.0.0.1"])
def test_public_addresses_not_exempt(ip):
    assert not bep42.is_exempt(ip)


def test_wrong_length_id_is_invalid():
    assert not bep42.is_valid_node_id(b"\x00" * 19, "8.8.8.8")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.binary(min_size=18, max_size=18))
def test_generated_ids_validate(ip, seed):
    def rng(n: int) -> bytes:
        assert n == 18
        return seed

    nid = bep42.generate_node_id(ip, rng)
    assert len(nid) == 20 and nid[19] == seed[0]
    assert bep42.is_valid_node_id(nid, ip)
    assert bep42.is_valid_node_id(nid, ip.packed)
    if isinstance(ip, ipaddress.IPv4Address):
        assert bep42.is_valid_node_id(nid, ipaddress.IPv6Address(b"\x00" * 10 + b"\xff\xff" + ip.packed))


def test_argument_errors():
    with pytest.raises(ValueError):
        bep42.node_id_prefix("1.2.3.4", 8)
    with pytest.raises(ValueError):
        bep42.node_id_prefix(b"\x01\x02\x03", 0)
    with pytest.raises(ValueError):
        bep42.node_id_for_ip("1.2.3.4", 1, b"short")
