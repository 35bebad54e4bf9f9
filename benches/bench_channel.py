"""Secure channel cost against a bare AEAD call, measured in the same session.

Peer: ``cryptography``'s ChaCha20Poly1305 object (reused), encrypt + decrypt of the same
payload - the least any authenticated channel can cost.  Ours: ``send_message`` +
``data_to_send`` + ``receive_data`` on a connected pair, i.e. framing, counters, rekey
checks, state, the AEAD and the ``MessageReceived`` event.

Goals (docs/channel.md §Performance): 512-byte message <= 1.2x the bare time;
16 KiB message >= 0.9x the bare throughput.  Each channel benchmark prints and stores
(``extra_info``) its ratio against the bare one run just before it.

    PYTHONPATH=. python tools/inplace.py qudag_core/_build.py qudag_core/channel/*.py csrc/aead.c
    PYTHONPATH=. python -m pytest benches/bench_channel.py --benchmark-only \
        --benchmark-columns=min,median,mean,ops,rounds
"""
from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

import qudag_core
from qudag_core.channel import KERNEL, SecureChannel

ROUNDS = {512: 20000, 16384: 3000}
_RESULTS: dict[tuple[int, str], tuple[float, float]] = {}


def _pair():
    k1, k2, sid = os.urandom(32), os.urandom(32), os.urandom(32)
    return (
        SecureChannel(tx_key=k1, rx_key=k2, session_id=sid, now=0.0),
        SecureChannel(tx_key=k2, rx_key=k1, session_id=sid, now=0.0),
    )


def _record(benchmark, size: int, kind: str) -> None:
    s = benchmark.stats.stats
    _RESULTS[(size, kind)] = (s.min, s.median)


def _report(benchmark, capsys, size: int) -> None:
    _record(benchmark, size, "channel")
    if (size, "bare") not in _RESULTS:
        return
    (cmin, cmed), (bmin, bmed) = _RESULTS[(size, "channel")], _RESULTS[(size, "bare")]
    ratio_min, ratio_med = cmin / bmin, cmed / bmed
    benchmark.extra_info.update(
        ratio_vs_bare_min=round(ratio_min, 3), ratio_vs_bare_median=round(ratio_med, 3),
        compiled=qudag_core.COMPILED, kernel=KERNEL,
    )
    with capsys.disabled():
        print(
            f"\n[bench_channel] {size} B: channel/bare time = {ratio_min:.3f} (min), {ratio_med:.3f} (median); "
            f"throughput ratio = {1 / ratio_min:.3f} (min); compiled={qudag_core.COMPILED} kernel={KERNEL}"
        )


@pytest.mark.parametrize("size", [512, 16384])
def test_bare_aead(benchmark, size):
    benchmark.group = f"channel-{size}"
    aead = ChaCha20Poly1305(os.urandom(32))
    nonce, msg = bytes(12), os.urandom(size)

    def roundtrip():
        return aead.decrypt(nonce, aead.encrypt(nonce, msg, None), None)

    assert benchmark.pedantic(roundtrip, rounds=ROUNDS[size], warmup_rounds=200) == msg
    _record(benchmark, size, "bare")


@pytest.mark.parametrize("size", [512, 16384])
def test_channel_seal_open(benchmark, capsys, size):
    benchmark.group = f"channel-{size}"
    a, b = _pair()
    msg = os.urandom(size)

    def roundtrip():
        a.send_message(msg)
        return b.receive_data(a.data_to_send())

    events = benchmark.pedantic(roundtrip, rounds=ROUNDS[size], warmup_rounds=200)
    assert len(events) == 1 and events[0].data == msg
    _report(benchmark, capsys, size)
