"""X-Wing circuit handshake (docs/onion.md §3.1)."""
from __future__ import annotations

import pytest

from qudag_core.crypto import XWingPrivateKey
from qudag_core.errors import LocalProtocolError
from qudag_core.onion import handshake as H


@pytest.fixture
def relay(rng):
    return bytes(range(20)), XWingPrivateKey(rng(32))


def test_agree_and_sizes(rng, relay):
    nid, sk = relay
    st, msg = H.client1(rng, nid, sk.public_key.raw)
    assert len(msg) == H.CREATE_SIZE == 2356
    secret, reply = H.server(rng, nid, sk, msg)
    assert len(reply) == H.CREATED_SIZE == 1152
    assert H.client2(st, reply) == secret and len(secret) == 32
    with pytest.raises(LocalProtocolError):
        H.client2(st, reply)  # consume-once
    assert nid.hex() in repr(st) and secret.hex() not in repr(st)


def test_fixed_ephemeral_is_reproducible_up_to_mlkem(rng, relay):
    nid, sk = relay
    _, m1 = H.client1_with_ephemeral(rng, nid, sk.public_key.raw, bytes(32))
    _, m2 = H.client1_with_ephemeral(rng, nid, sk.public_key.raw, bytes(32))
    assert m1[:20 + 1216] == m2[:20 + 1216] == nid + XWingPrivateKey(bytes(32)).public_key.raw


def test_every_reply_bit_checked(rng, relay):
    nid, sk = relay
    for pos in (0, 500, 1087, 1119, 1120, 1151):
        st, msg = H.client1(rng, nid, sk.public_key.raw)
        _, reply = H.server(rng, nid, sk, msg)
        bad = bytearray(reply)
        bad[pos] ^= 1
        with pytest.raises(H.HandshakeError):
            H.client2(st, bytes(bad))


def test_server_rejects(rng, relay):
    nid, sk = relay
    _, msg = H.client1(rng, nid, sk.public_key.raw)
    with pytest.raises(H.HandshakeError):
        H.server(rng, bytes(20), sk, msg)  # other node
    with pytest.raises(H.HandshakeError):
        H.server(rng, nid, sk, msg[:-1])
    # a tampered ciphertext decapsulates (implicit rejection) but keys no longer match
    st, msg = H.client1(rng, nid, sk.public_key.raw)
    bad = bytearray(msg)
    bad[20 + 1216 + 5] ^= 1
    _, reply = H.server(rng, nid, sk, bytes(bad))
    with pytest.raises(H.HandshakeError):
        H.client2(st, reply)
    with pytest.raises(H.HandshakeError):
        H.client2(H.client1(rng, nid, sk.public_key.raw)[0], reply[:-1])
