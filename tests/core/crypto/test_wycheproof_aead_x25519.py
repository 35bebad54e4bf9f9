"""Wycheproof ChaCha20-Poly1305 (RFC 8439 §2.8) and X25519 (RFC 7748 §5, §6.1) vectors.

ChaCha20-Poly1305 (``AeadTest``): a valid case must seal to ``ct || tag`` byte for byte
and open back to ``msg``; an invalid case must fail to open with ``DecryptError``; where
the nonce has the wrong size (``InvalidNonceSize``) sealing must also refuse with a
declared ``CryptoError`` instead of producing anything.

X25519 (``XdhComp``): ``valid`` and ``acceptable`` cases must give the published shared
secret byte for byte, except that an all-zero shared secret (``ZeroSharedSecret``, low-
order public points, RFC 7748 §6.1) must be refused with ``InvalidKey``: qudag never
derives keys from a contributory-less exchange.  ``acceptable`` covers non-canonical and
twist points, which RFC 7748 §5 says to accept (mask the top bit, no point validation).
"""
from __future__ import annotations

import json

import pytest

from qudag_core.crypto.aead import NONCE_SIZE, ChaCha20Poly1305Key
from qudag_core.crypto.x25519 import X25519PrivateKey
from qudag_core.errors import CryptoError, DecryptError, InvalidKey


def _cases(vectors_dir, name):
    data = json.loads((vectors_dir / "wycheproof" / name).read_text())
    for group in data["testGroups"]:
        for t in group["tests"]:
            yield group, t


def _h(s: str) -> bytes:
    return bytes.fromhex(s)


def test_chacha20_poly1305(vectors_dir, vector_count):
    n = 0
    for _, t in _cases(vectors_dir, "chacha20_poly1305_test.json"):
        key = ChaCha20Poly1305Key(_h(t["key"]))
        iv, aad, msg, ct, tag = (_h(t[k]) for k in ("iv", "aad", "msg", "ct", "tag"))
        if t["result"] == "valid":
            assert key.seal(iv, msg, aad) == ct + tag, t["tcId"]
            assert key.open(iv, ct + tag, aad) == msg, t["tcId"]
        else:
            assert t["result"] == "invalid"
            with pytest.raises(DecryptError):
                key.open(iv, ct + tag, aad)
            if len(iv) != NONCE_SIZE:
                assert "InvalidNonceSize" in t["flags"]
                with pytest.raises(CryptoError):
                    key.seal(iv, msg, aad)
        n += 1
    assert n == 325
    vector_count("wycheproof chacha20_poly1305_test.json", n)


def test_x25519(vectors_dir, vector_count):
    n = n_zero = 0
    for _, t in _cases(vectors_dir, "x25519_test.json"):
        assert t["result"] in ("valid", "acceptable")
        priv = X25519PrivateKey(_h(t["private"]))
        shared = _h(t["shared"])
        if shared == bytes(32):
            assert "ZeroSharedSecret" in t["flags"]
            with pytest.raises(InvalidKey):
                priv.exchange(_h(t["public"]))
            n_zero += 1
        else:
            assert priv.exchange(_h(t["public"])) == shared, t["tcId"]
        n += 1
    assert n == 518
    assert n_zero == 31
    vector_count("wycheproof x25519_test.json", n)
