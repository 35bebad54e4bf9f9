"""Known-answer test for handshake v1 (docs/handshake.md §2 byte layouts, §3 key
schedule), vector ``vectors/handshake_v1.json`` recorded by ``make_vectors.py``.

Two inputs cannot be derandomised through ``cryptography``: ML-KEM encapsulation
randomness and hedged ML-DSA signatures.  They were recorded once -- the three ML-KEM
encapsulations as ``(ss_M, ct_M)`` and both certificates -- and are replayed here:
the recorded ML-KEM outputs are fed to the encapsulating side through the
``mlkem_encapsulate`` hook, while the decapsulating side runs the real X-Wing
decapsulation on the recorded ciphertexts (so a wrong recorded ``ss_M`` would fail
the AEAD or a confirmation tag).  Everything else -- keys from seeds, node ids, X25519
shares, X-Wing combiner, transcript, AEAD, confirmations, session keys -- is
recomputed and must reproduce INIT, RESPONSE, FINISH and the keys byte for byte.
"""
from __future__ import annotations

import json
import pathlib

import pytest

from qudag_core.crypto import XWingPrivateKey
from qudag_core.handshake import initiator_finish, initiator_start, responder_finish, responder_process
from qudag_core.identity import CertificateCache, Identity, NodeCertificate

VEC = json.loads((pathlib.Path(__file__).with_name("vectors") / "handshake_v1.json").read_text())
H = bytes.fromhex


def _replayer(entries):
    queue = [(H(e["ss"]), H(e["ct"])) for e in entries]

    def encapsulate(_pk):
        return queue.pop(0)

    return encapsulate, queue


@pytest.fixture(scope="module")
def parties():
    ii = Identity(H(VEC["initiator_mldsa_seed"]), H(VEC["initiator_xwing_seed"]))
    ir = Identity(H(VEC["responder_mldsa_seed"]), H(VEC["responder_xwing_seed"]))
    ci = NodeCertificate.from_bytes(H(VEC["initiator_certificate"]))
    cr = NodeCertificate.from_bytes(H(VEC["responder_certificate"]))
    ci.verify(VEC["now"])
    cr.verify(VEC["now"])
    return ii, ir, ci, cr


def test_identities_from_seeds(parties, vector_count):
    ii, ir, ci, cr = parties
    assert ii.node_id.hex() == VEC["initiator_node_id"] and ci.node_id == ii.node_id
    assert ir.node_id.hex() == VEC["responder_node_id"] and cr.node_id == ir.node_id
    assert ci.xwing_public_key == ii.kem_key.public_key.raw
    assert cr.xwing_public_key == ir.kem_key.public_key.raw
    vector_count("qudag handshake_v1.json identities", 2)


def test_handshake_reproduces_byte_for_byte(parties, vector_count):
    ii, ir, ci, cr = parties
    enc, queue = _replayer(VEC["mlkem_encapsulations"])
    eph = XWingPrivateKey(H(VEC["initiator_ephemeral_seed"]))
    st_i, init = initiator_start(None, ii, ci, cr, ephemeral_key=eph, mlkem_encapsulate=enc)
    assert init == H(VEC["init"])
    e_r = H(VEC["responder_x25519_ephemeral"])
    st_r, resp = responder_process(lambda n: e_r[:n], ir, cr, init, now=VEC["now"], cert_cache=CertificateCache(),
                                   mlkem_encapsulate=enc)
    assert resp == H(VEC["response"])
    assert queue == []
    keys_i, fin = initiator_finish(st_i, resp)
    assert fin == H(VEC["finish"])
    keys_r = responder_finish(st_r, fin)
    assert keys_i.tx_key == H(VEC["initiator_tx_key"]) == keys_r.rx_key
    assert keys_i.rx_key == H(VEC["initiator_rx_key"]) == keys_r.tx_key
    assert keys_i.session_id == keys_r.session_id == H(VEC["session_id"])
    vector_count("qudag handshake_v1.json messages", 3)


def test_recorded_init_accepted_by_real_responder(parties):
    """With no hooks at all, the responder decapsulates the recorded INIT (so the
    recorded ``ss_M`` of ct1 is the real one) and recovers the initiator's certificate."""
    ii, ir, ci, cr = parties
    st_r, resp = responder_process(lambda n: bytes(n), ir, cr, H(VEC["init"]), now=VEC["now"],
                                   cert_cache=CertificateCache())
    assert st_r.peer_certificate == ci and len(resp) == len(H(VEC["response"]))
