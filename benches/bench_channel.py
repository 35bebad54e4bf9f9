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
    if benchmark.stats is None:  # --benchmark-disable: the cases run once as tests
        return
    s = benchmark.stats.stats
    _RESULTS[(size, kind)] = (s.min, s.median)


def _report(benchmark, capsys, size: int) -> None:
    _record(benchmark, size, "channel")
    if (size, "bare") not in _RESULTS or (size, "channel") not in _RESULTS:
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


# -- receive side of a bulk stream: frames that straddle socket reads ------------------
#
# A 4 MiB stream of max-size DATA frames (64 KiB payload, 65,557 wire bytes each) fed
# to ``receive_data`` three ways, all in the same session:
#   * "bare":      cryptography's ChaCha20Poly1305 decrypt of each frame body (nonce and
#                  aad as the channel uses them) - the floor of any receiver;
#   * "aligned":   one ``receive_data`` call per whole frame (no reassembly at all);
#   * "unaligned": 65,536-byte reads, as a socket hands them out: every frame straddles
#                  two reads, so each call completes a buffered frame first.
# The unaligned/aligned ratio is the cost of reassembly.
# Run alone (~2 s):  PYTHONPATH=. python -m pytest benches/bench_channel.py -k stream \
#                        --benchmark-only -s --benchmark-columns=min,median,mean,rounds

STREAM_BYTES = 4 * 1024 * 1024
READ_SIZE = 65536
STREAM_ROUNDS = 30
_STREAM: dict[str, object] = {}


def _bulk_stream():
    if not _STREAM:
        k1, k2, sid = os.urandom(32), os.urandom(32), os.urandom(32)
        tx = SecureChannel(tx_key=k1, rx_key=k2, session_id=sid, now=0.0)
        size = tx.config.max_frame_size
        frames = []
        for _ in range(STREAM_BYTES // size):
            tx.send_message(os.urandom(size))
            frames.append(tx.data_to_send())
        wire = b"".join(frames)
        _STREAM.update(keys=(k1, k2, sid), frames=frames, wire=wire,
                       reads=[wire[i : i + READ_SIZE] for i in range(0, len(wire), READ_SIZE)])
    return _STREAM


def _receiver():
    k1, k2, sid = _bulk_stream()["keys"]
    return (SecureChannel(tx_key=k2, rx_key=k1, session_id=sid, now=0.0),), {}


def _drain(rx, chunks) -> int:
    got = 0
    for c in chunks:
        for e in rx.receive_data(c):
            got += len(e.data)
    assert rx.buffered_bytes == 0
    return got


def _report_stream(benchmark, capsys, kind: str) -> None:
    if benchmark.stats is None:
        return
    s = benchmark.stats.stats
    _RESULTS[(STREAM_BYTES, kind)] = (s.min, s.median)
    mib = STREAM_BYTES / (1 << 20)
    line = f"\n[bench_channel] 4 MiB stream, {kind}: {mib / s.min:.0f} MiB/s (min), {mib / s.median:.0f} MiB/s (median)"
    for peer in ("aligned", "bare"):
        if peer != kind and (STREAM_BYTES, peer) in _RESULTS:
            pmin, pmed = _RESULTS[(STREAM_BYTES, peer)]
            benchmark.extra_info[f"ratio_vs_{peer}_min"] = round(s.min / pmin, 3)
            benchmark.extra_info[f"ratio_vs_{peer}_median"] = round(s.median / pmed, 3)
            line += f"; time vs {peer} = {s.min / pmin:.3f} (min), {s.median / pmed:.3f} (median)"
    benchmark.extra_info.update(compiled=qudag_core.COMPILED, kernel=KERNEL)
    with capsys.disabled():
        print(line + f"; compiled={qudag_core.COMPILED} kernel={KERNEL}")


def test_stream_receive_bare_aead(benchmark, capsys):
    benchmark.group = "channel-stream-4MiB"
    st = _bulk_stream()
    k1 = st["keys"][0]
    frames = st["frames"]

    def decrypt_all():
        aead = ChaCha20Poly1305(k1)  # one per key, as a receiver holds one
        got = 0
        for counter, f in enumerate(frames):
            with memoryview(f) as mv:
                pt = aead.decrypt(bytes(4) + counter.to_bytes(8, "big"), mv[4:], mv[:4])
            got += len(pt) - 1
        return got

    assert benchmark.pedantic(decrypt_all, rounds=STREAM_ROUNDS, warmup_rounds=1) == STREAM_BYTES
    _report_stream(benchmark, capsys, "bare")


def test_stream_receive_aligned(benchmark, capsys):
    benchmark.group = "channel-stream-4MiB"
    frames = _bulk_stream()["frames"]
    got = benchmark.pedantic(lambda rx: _drain(rx, frames), setup=_receiver, rounds=STREAM_ROUNDS, warmup_rounds=1)
    assert got == STREAM_BYTES
    _report_stream(benchmark, capsys, "aligned")


def test_stream_receive_unaligned_reads(benchmark, capsys):
    benchmark.group = "channel-stream-4MiB"
    reads = _bulk_stream()["reads"]
    assert len(reads[0]) == READ_SIZE and len(_bulk_stream()["frames"][0]) != READ_SIZE
    got = benchmark.pedantic(lambda rx: _drain(rx, reads), setup=_receiver, rounds=STREAM_ROUNDS, warmup_rounds=1)
    assert got == STREAM_BYTES
    _report_stream(benchmark, capsys, "unaligned")
