"""Record the handshake known-answer vector (run once; the output is committed):

    PYTHONPATH=. python tests/core/handshake/make_vectors.py

ML-KEM encapsulation randomness comes from the library (``cryptography`` exposes no
derandomised encapsulation) and ML-DSA signing is hedged, so those outputs are recorded
here once: the three ML-KEM encapsulations as ``(ss_M, ct_M)`` and both certificates.
Everything else is a function of the seeds below and is recomputed by the test.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

from qudag_core.crypto import XWingPrivateKey
from qudag_core.handshake import initiator_finish, initiator_start, responder_finish, responder_process
from qudag_core.identity import CertificateCache, Identity

OUT = pathlib.Path(__file__).with_name("vectors") / "handshake_v1.json"
NOW = 1_800_000_000


def seed(label: str, n: int = 32) -> bytes:
    return hashlib.shake_256(b"qudag handshake kat " + label.encode()).digest(n)


def main() -> None:
    ii = Identity(seed("initiator mldsa"), seed("initiator xwing"))
    ir = Identity(seed("responder mldsa"), seed("responder xwing"))
    ci = ii.issue_certificate([("198.51.100.7", 4000)], now=NOW - 60, lifetime=86400)
    cr = ir.issue_certificate([("203.0.113.9", 4433), ("2001:db8::9", 4433)], now=NOW - 60, lifetime=86400)
    eph = XWingPrivateKey(seed("initiator ephemeral"))
    e_r = seed("responder x25519 ephemeral")
    encs: list = []

    def record(pk):
        ss, ct = pk.encapsulate()
        encs.append((ss, ct))
        return ss, ct

    st_i, m1 = initiator_start(None, ii, ci, cr, ephemeral_key=eph, mlkem_encapsulate=record)
    st_r, m2 = responder_process(lambda n: e_r[:n], ir, cr, m1, now=NOW, cert_cache=CertificateCache(),
                                 mlkem_encapsulate=record)
    keys_i, m3 = initiator_finish(st_i, m2)
    keys_r = responder_finish(st_r, m3)
    assert keys_i.tx_key == keys_r.rx_key
    vec = {
        "description": "qudag handshake v1 known answer (docs/handshake.md §2-§3); ML-KEM encapsulations and certificates recorded",
        "now": NOW,
        "initiator_mldsa_seed": seed("initiator mldsa").hex(),
        "initiator_xwing_seed": seed("initiator xwing").hex(),
        "responder_mldsa_seed": seed("responder mldsa").hex(),
        "responder_xwing_seed": seed("responder xwing").hex(),
        "initiator_ephemeral_seed": seed("initiator ephemeral").hex(),
        "responder_x25519_ephemeral": e_r.hex(),
        "initiator_certificate": ci.to_bytes().hex(),
        "responder_certificate": cr.to_bytes().hex(),
        "mlkem_encapsulations": [{"ss": ss.hex(), "ct": ct.hex()} for ss, ct in encs],
        "init": m1.hex(),
        "response": m2.hex(),
        "finish": m3.hex(),
        "initiator_tx_key": keys_i.tx_key.hex(),
        "initiator_rx_key": keys_i.rx_key.hex(),
        "session_id": keys_i.session_id.hex(),
        "initiator_node_id": ii.node_id.hex(),
        "responder_node_id": ir.node_id.hex(),
    }
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(vec, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
