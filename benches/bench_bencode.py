"""Bencode codec: encode + decode of a realistic BEP 5 find_node response, qudag vs bencode2.

The message: ``t`` (2 bytes), ``y`` = ``r``, ``r`` = {``id``: 20 bytes, ``nodes``: 8 compact
nodes = 208 bytes}, ``v`` (4 bytes) and the BEP 42 ``ip`` field (6 bytes): what a DHT node
sends and receives most.  ``bencode2`` (the fastest PyPI codec) runs in the same session;
the last test prints the time ratio qudag / bencode2 (goal: <= 1.0 with the C kernel).

    PYTHONPATH=. python -m pytest benches/bench_bencode.py --benchmark-only -q
"""
from __future__ import annotations

import hashlib

import pytest

bencode2 = pytest.importorskip("bencode2")

from qudag_core.krpc import bencode as qbc  # noqa: E402

_STATS: dict[str, float] = {}


def _message() -> dict:
    nodes = b"".join(hashlib.sha1(bytes([i])).digest() + bytes([10, 0, 0, i + 1, 0x1A, 0xE1]) for i in range(8))
    assert len(nodes) == 208
    return {
        b"t": b"\x8a\x01",
        b"y": b"r",
        b"r": {b"id": hashlib.sha1(b"responder").digest(), b"nodes": nodes},
        b"v": b"QD\x00\x01",
        b"ip": bytes([203, 0, 113, 7, 0x1A, 0xE1]),
    }


MSG = _message()
WIRE = qbc.encode(MSG)
assert bencode2.bencode(MSG) == WIRE and bencode2.bdecode(WIRE) == MSG


def _run(benchmark, name, enc, dec):
    def roundtrip():
        return dec(enc(MSG))

    benchmark.group = "bencode find_node response encode+decode"
    out = benchmark.pedantic(roundtrip, rounds=200, iterations=200, warmup_rounds=5)
    assert out == MSG
    _STATS[name] = benchmark.stats.stats.median


def test_qudag(benchmark):
    _run(benchmark, "qudag", qbc.encode, qbc.decode)


def test_bencode2(benchmark):
    _run(benchmark, "bencode2", bencode2.bencode, bencode2.bdecode)


def test_ratio(capsys):
    if set(_STATS) != {"qudag", "bencode2"}:
        pytest.skip("run the whole file (both benchmarks) to get the ratio")
    ratio = _STATS["qudag"] / _STATS["bencode2"]
    with capsys.disabled():
        print(f"\nbencode roundtrip median: qudag {_STATS['qudag'] * 1e9:.0f} ns, "
              f"bencode2 {_STATS['bencode2'] * 1e9:.0f} ns, ratio {ratio:.2f}x "
              f"(kernel={'C' if qbc.KERNEL else 'pure'})")
    assert ratio > 0


# ---- typed KRPC parse on top of the codec (informative: the cost of restricted parsing) ----

def test_krpc_parse_message(benchmark):
    from qudag_core.krpc.messages import Response, parse_message

    benchmark.group = "find_node response: typed parse vs bare decode"
    out = benchmark.pedantic(parse_message, args=(WIRE,), rounds=100, iterations=100, warmup_rounds=3)
    assert isinstance(out, Response) and len(out.nodes) == 8
    _STATS["parse_message"] = benchmark.stats.stats.median


def test_bare_bencode2_decode(benchmark):
    benchmark.group = "find_node response: typed parse vs bare decode"
    out = benchmark.pedantic(bencode2.bdecode, args=(WIRE,), rounds=100, iterations=100, warmup_rounds=3)
    assert out == MSG
    _STATS["bdecode"] = benchmark.stats.stats.median


def test_parse_ratio(capsys):
    if not {"parse_message", "bdecode"} <= set(_STATS):
        pytest.skip("run the whole file to get the ratio")
    with capsys.disabled():
        print(f"\nfind_node response: parse_message {_STATS['parse_message'] * 1e9:.0f} ns vs bare "
              f"bencode2.bdecode {_STATS['bdecode'] * 1e9:.0f} ns "
              f"({_STATS['parse_message'] / _STATS['bdecode']:.1f}x: validation + typed objects)")
    assert _STATS["parse_message"] > 0
