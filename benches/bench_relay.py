"""Relay crypto throughput (docs/onion.md §2.4).

(a) one onion layer per cell, amortised over a batch of 64 cells (``RelayLayer.decrypt``,
    the relay's peel), against the baseline of one ``cryptography`` AES-256-CTR
    ``update()`` call per cell with a reused context — the cheapest thing a Python relay
    could do per cell, with no integrity at all.
(b) the client's wrap of a 3-layer cell (3 x ``encrypt``, batch of 64), against (a).

Run:  PYTHONPATH=. python -m pytest benches/bench_relay.py --benchmark-only -q -s
The ratios are printed after the last benchmark (medians, per cell).
"""
from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from qudag_core.onion.cells import CELL_SIZE, HEADER_SIZE
from qudag_core.onion.relaycrypto import BACKWARD, FORWARD, HAVE_KERNEL, new_layer

BATCH = 64
_RESULTS: dict[str, float] = {}


def _per_cell(benchmark, name):
    _RESULTS[name] = benchmark.stats.stats.median / BATCH


def test_baseline_aes_ctr_update_per_cell(benchmark):
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
    cells = [os.urandom(CELL_SIZE) for _ in range(BATCH)]

    def run():
        for c in cells:
            enc.update(c)

    benchmark.pedantic(run, rounds=200, iterations=1)
    _per_cell(benchmark, "baseline")


def test_relay_peel_one_layer_batch64(benchmark):
    lay = new_layer(os.urandom(32), FORWARD, CELL_SIZE, HEADER_SIZE)
    buf = bytearray(os.urandom(BATCH * CELL_SIZE))
    benchmark.pedantic(lay.decrypt, args=(buf,), rounds=200, iterations=1)
    _per_cell(benchmark, "one_layer")


def test_relay_add_one_layer_batch64(benchmark):
    lay = new_layer(os.urandom(32), BACKWARD, CELL_SIZE, HEADER_SIZE)
    buf = bytearray(os.urandom(BATCH * CELL_SIZE))
    benchmark.pedantic(lay.encrypt, args=(buf,), rounds=200, iterations=1)
    _per_cell(benchmark, "one_layer_add")


def test_client_wrap_three_layers_batch64(benchmark):
    layers = [new_layer(os.urandom(32), FORWARD, CELL_SIZE, HEADER_SIZE) for _ in range(3)]
    buf = bytearray(os.urandom(BATCH * CELL_SIZE))

    def wrap():
        layers[2].encrypt(buf, originate=True)
        layers[1].encrypt(buf)
        layers[0].encrypt(buf)

    benchmark.pedantic(wrap, rounds=200, iterations=1)
    _per_cell(benchmark, "three_layers")
    _report()


def _report():
    """Print the ratios once all four figures exist (file order: this runs last)."""
    if len(_RESULTS) < 4:
        return
    b, one, add, three = (_RESULTS[k] for k in ("baseline", "one_layer", "one_layer_add", "three_layers"))
    print(
        f"\n[bench_relay] kernel={HAVE_KERNEL} per cell: baseline AES-CTR update {b * 1e9:.0f} ns, "
        f"one layer peel {one * 1e9:.0f} ns (ratio {one / b:.2f}, goal <= 0.5), "
        f"one layer add {add * 1e9:.0f} ns (ratio {add / b:.2f}), "
        f"3-layer wrap {three * 1e9:.0f} ns ({three / one:.2f}x one layer, goal <= 3)"
    )
