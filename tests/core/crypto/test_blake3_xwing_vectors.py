"""BLAKE3 official test vectors and X-Wing draft vectors.

BLAKE3 (``blake3/test_vectors.json``, BLAKE3 spec §2.6 modes, §2.6/§5 extended output):
for each of the 35 input lengths (input byte ``i`` is ``i mod 251``) the three modes
``hash``, ``keyed_hash`` (key from the file) and ``derive_key`` (context string from the
file) go through ``qudag_core.crypto.hashing`` and must give the published 131-byte
extended output byte for byte, and its 32-byte prefix at the default length.

X-Wing (``xwing/test-vectors.json``, draft-connolly-cfrg-xwing-kem §5): for each of the
3 vectors, keygen from ``seed`` gives ``pk`` byte for byte (``sk`` is the seed itself),
decapsulating ``ct`` gives ``ss`` byte for byte, and encapsulation round-trips.  Our
``encapsulate`` takes ``rng`` for the X25519 half only (``eseed[32:64]`` in the draft's
``EncapsulateDerand``); ML-KEM encapsulation randomness comes from ``cryptography``,
which has no derandomised variant.  So the X25519 half of the ciphertext (``ct[1088:]``)
is compared byte for byte, and the whole ``(ss, ct)`` is checked by decapsulation.
"""
from __future__ import annotations

import json

from qudag_core.crypto.hashing import blake3_hash, derive_key, keyed_hash
from qudag_core.crypto.xwing import CT_SIZE, SS_SIZE, XWingPrivateKey, XWingPublicKey


def test_blake3_official(vectors_dir, vector_count):
    data = json.loads((vectors_dir / "blake3" / "test_vectors.json").read_text())
    key = data["key"].encode("ascii")
    context = data["context_string"]
    assert len(key) == 32
    n = 0
    for case in data["cases"]:
        msg = bytes(i % 251 for i in range(case["input_len"]))
        want_hash = bytes.fromhex(case["hash"])
        want_keyed = bytes.fromhex(case["keyed_hash"])
        want_derive = bytes.fromhex(case["derive_key"])
        assert len(want_hash) == len(want_keyed) == len(want_derive) == 131
        assert blake3_hash(msg, 131) == want_hash, case["input_len"]
        assert blake3_hash(msg) == want_hash[:32]
        assert keyed_hash(key, msg, 131) == want_keyed, case["input_len"]
        assert keyed_hash(key, msg) == want_keyed[:32]
        assert derive_key(context, msg, 131) == want_derive, case["input_len"]
        assert derive_key(context, msg) == want_derive[:32]
        n += 1
    assert n == 35
    vector_count("blake3 test_vectors.json (cases x 3 modes)", n)


class _Fixed:
    """An ``rng`` that hands out exactly the bytes it was given, then fails."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def __call__(self, n: int) -> bytes:
        assert len(self._data) >= n
        out, self._data = self._data[:n], self._data[n:]
        return out


def test_xwing_draft_vectors(vectors_dir, vector_count):
    vectors = json.loads((vectors_dir / "xwing" / "test-vectors.json").read_text())
    n = 0
    for v in vectors:
        seed, eseed = bytes.fromhex(v["seed"]), bytes.fromhex(v["eseed"])
        pk, sk, ct, ss = (bytes.fromhex(v[k]) for k in ("pk", "sk", "ct", "ss"))
        priv = XWingPrivateKey(sk)
        assert sk == seed and priv.seed == seed
        assert priv.public_key.raw == pk
        assert priv.decapsulate(ct) == ss
        pub = XWingPublicKey(pk)
        our_ss, our_ct = pub.encapsulate(_Fixed(eseed[32:64]))
        assert len(our_ss) == SS_SIZE and len(our_ct) == CT_SIZE
        assert our_ct[1088:] == ct[1088:]
        assert priv.decapsulate(our_ct) == our_ss
        n += 1
    assert n == 3
    vector_count("xwing test-vectors.json", n)
