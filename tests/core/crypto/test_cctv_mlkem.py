"""C2SP CCTV ML-KEM-768 vectors (``cctv-mlkem/``) against ``qudag_core.crypto.mlkem``.

* ``modulus/``: 780 encapsulation keys with a coefficient >= q; FIPS 203 §7.2 modulus
  check: every one must be refused by ``MlKem768PublicKey`` with ``InvalidKey``.
* ``intermediate/`` and ``unluckysample/``: these were generated for FIPS 203 *(DRAFT)*
  (their README says so, and the files confirm it: ``rho || sigma = SHA3-512(d)``),
  whose K-PKE.KeyGen hashes ``d`` without the final standard's domain-separation byte
  ``k`` (FIPS 203 Alg. 13 line 1: ``G(d || k)``).  ``cryptography`` implements the final
  standard, so from ``d || z`` it *must* give a different ``ek`` and decapsulation of
  the published ``c`` through a seed-form key is impossible (and ``cryptography`` cannot
  load the published expanded ``dk``).  What is checked instead, byte for byte:
  our ``ek`` ends in ``rho' = SHA3-512(d || 0x03)[:32]`` (final-standard keygen) and
  differs from the draft ``ek``; the published ``ek`` passes the §7.2 modulus check;
  the published ``dk`` passes the §7.3 hash check and equals
  ``dk_PKE || ek || SHA3-256(ek) || z`` with the published ``ek`` and ``z``; for
  ``intermediate`` also ``H(ek)``, ``rho`` and ``dk_PKE`` against their published
  intermediate lines and ``K != KBar``.  Decapsulation to the final ``K`` is NOT checked.
* ``strcmp/``: a ciphertext whose decapsulation must not stop at a zero byte.  The file
  gives only the expanded ``dk`` (no seed), so here only the FIPS 203 §7.3 key check,
  the embedded ``ek`` and the ciphertext length are checked.  The same bug class is
  covered with real decapsulation by Wycheproof ``mlkem_768_test.json`` tcId 1 (flag
  ``Strcmp``, source CCTV/strcmp, with a final-standard seed), in
  ``test_wycheproof_mlkem.py``.
"""
from __future__ import annotations

import gzip
import hashlib

import pytest

from qudag_core.crypto.mlkem import (
    CT_SIZE,
    DK_PKE_SIZE,
    DK_SIZE,
    MlKem768PrivateKey,
    MlKem768PublicKey,
    check_expanded_decapsulation_key,
)
from qudag_core.errors import InvalidKey


def _kv(path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if " = " in line:
            k, v = line.rsplit(" = ", 1)
            out.setdefault(k, []).append(v)
    return out


def _hex(d: dict[str, list[str]], key: str) -> bytes:
    (v,) = d[key]
    return bytes.fromhex(v)


def _check_draft_vector(d) -> None:
    dd, z = _hex(d, "d"), _hex(d, "z")
    ek, dk = _hex(d, "ek"), _hex(d, "dk")
    # The vector is FIPS 203 (DRAFT): G(d) without the k byte.
    assert hashlib.sha3_512(dd).digest()[:32] == ek[-32:]
    ours = MlKem768PrivateKey(dd + z)
    assert ours.public_key.raw[-32:] == hashlib.sha3_512(dd + bytes([3])).digest()[:32]
    assert ours.public_key.raw != ek
    MlKem768PublicKey(ek)
    assert len(dk) == DK_SIZE
    assert dk[DK_PKE_SIZE:] == ek + hashlib.sha3_256(ek).digest() + z
    assert check_expanded_decapsulation_key(dk) == ek
    assert len(_hex(d, "c")) == CT_SIZE and len(_hex(d, "K")) == 32


def test_cctv_modulus(vectors_dir, vector_count):
    lines = gzip.decompress((vectors_dir / "cctv-mlkem" / "modulus" / "ML-KEM-768.txt.gz").read_bytes()).split()
    n = 0
    for line in lines:
        ek = bytes.fromhex(line.decode())
        assert len(ek) == 1184
        with pytest.raises(InvalidKey):
            MlKem768PublicKey(ek)
        n += 1
    assert n == 780
    vector_count("cctv-mlkem modulus/ML-KEM-768", n)


def test_cctv_unluckysample(vectors_dir, vector_count):
    _check_draft_vector(_kv(vectors_dir / "cctv-mlkem" / "unluckysample" / "ML-KEM-768.txt"))
    vector_count("cctv-mlkem unluckysample/ML-KEM-768 (draft keygen: key checks only)", 1)


def test_cctv_intermediate(vectors_dir, vector_count):
    d = _kv(vectors_dir / "cctv-mlkem" / "intermediate" / "ML-KEM-768.txt")
    _check_draft_vector(d)
    ek, dk = _hex(d, "ek"), _hex(d, "dk")
    assert hashlib.sha3_256(ek).digest() == _hex(d, "H(ek)")
    assert ek[-32:] == _hex(d, "ρ")
    assert dk[:DK_PKE_SIZE] == _hex(d, "dkPKE = NTT(s)")
    assert _hex(d, "K") != _hex(d, "KBar")
    vector_count("cctv-mlkem intermediate/ML-KEM-768 (draft keygen: final values, key checks only)", 1)


def test_cctv_strcmp(vectors_dir, vector_count):
    d = _kv(vectors_dir / "cctv-mlkem" / "strcmp" / "ML-KEM-768.txt")
    dk, c, k = _hex(d, "dk"), _hex(d, "c"), _hex(d, "K")
    ek = check_expanded_decapsulation_key(dk)
    MlKem768PublicKey(ek)
    assert len(c) == CT_SIZE and len(k) == 32
    vector_count("cctv-mlkem strcmp/ML-KEM-768 (key checks only)", 1)
