"""Traffic mixer (docs/onion.md §4): delay distribution (Kolmogorov-Smirnov), per-circuit
order, bounded queue, cover and constant-rate modes."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.errors import LocalProtocolError
from qudag_core.onion.mixer import Mixer, MixerFull, exponential_sample


def kolmogorov_q(lam: float) -> float:
    """P(K > lam) for the Kolmogorov distribution: 2 sum_{j>=1} (-1)^(j-1) exp(-2 j^2 lam^2)."""
    if lam < 0.2:
        return 1.0
    s = 0.0
    for j in range(1, 101):
        term = 2.0 * (-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam)
        s += term
        if abs(term) < 1e-12:
            break
    return max(0.0, min(1.0, s))


def ks_test(samples, cdf):
    """One-sample KS statistic D and its asymptotic p-value (Stephens' small-n correction)."""
    xs = sorted(samples)
    n = len(xs)
    d = 0.0
    for i, x in enumerate(xs):
        f = cdf(x)
        d = max(d, (i + 1) / n - f, f - i / n)
    sn = math.sqrt(n)
    return d, kolmogorov_q((sn + 0.12 + 0.11 / sn) * d)


def test_kolmogorov_known_values():
    # critical values of the Kolmogorov distribution (e.g. Smirnov 1948 tables)
    assert kolmogorov_q(1.2239) == pytest.approx(0.10, abs=5e-4)
    assert kolmogorov_q(1.3581) == pytest.approx(0.05, abs=5e-4)
    assert kolmogorov_q(1.6276) == pytest.approx(0.01, abs=5e-4)
    assert kolmogorov_q(0.1) == 1.0


def test_ks_known_case():
    """The n evenly spread quantiles (i - 1/2)/n of U(0,1): D = 1/(2n) exactly, p ~ 1; the
    same points against U(0, 2) give D = 1 - (n - 1/2)/(2n) at the last point, p ~ 0."""
    n = 100
    pts = [(i - 0.5) / n for i in range(1, n + 1)]
    d, p = ks_test(pts, lambda x: min(max(x, 0.0), 1.0))
    assert d == pytest.approx(1 / (2 * n)) and p > 0.999
    d, p = ks_test(pts, lambda x: min(max(x / 2, 0.0), 1.0))
    assert d == pytest.approx((n + 0.5) / (2 * n), abs=1e-12) and p < 1e-10


def run(mixer, arrivals, *, max_steps=10**6):
    """Drive the mixer like an event loop; arrivals = [(t, circuit, cell)] sorted by t.
    Returns [(send_time, circuit, cell)] and the list of refused arrivals."""
    out, refused = [], []
    i = 0
    now = 0.0
    for _ in range(max_steps):
        timer = mixer.get_timer()
        nxt = arrivals[i][0] if i < len(arrivals) else None
        if nxt is None and timer is None:
            return out, refused
        now = min(t for t in (timer, nxt) if t is not None)
        while i < len(arrivals) and arrivals[i][0] <= now:
            t, c, cell = arrivals[i]
            if not mixer.push(c, cell, t):
                refused.append(arrivals[i])
            i += 1
        for c, cell in mixer.cells_to_send(now):
            out.append((now, c, cell))
    raise AssertionError("mixer did not drain")


def test_delays_are_exponential_ks(rng):
    mean = 0.05
    m = Mixer(rng=rng, mean_delay=mean, max_queue=20_000)
    n = 10_000
    arrivals = [(i * 0.001, i, (i, i * 0.001)) for i in range(n)]  # one cell per circuit
    out, refused = run(m, arrivals)
    assert not refused and len(out) == n
    delays = [t - cell[1] for t, _, cell in out]
    d, p = ks_test(delays, lambda x: 1.0 - math.exp(-x / mean) if x > 0 else 0.0)
    assert p > 0.01, (d, p)
    # and the test has power: the same delays are not Exp(2 * mean)
    _, p_wrong = ks_test(delays, lambda x: 1.0 - math.exp(-x / (2 * mean)) if x > 0 else 0.0)
    assert p_wrong < 1e-6


def test_per_circuit_fifo_and_bounded_queue(rng):
    m = Mixer(rng=rng, mean_delay=0.2, max_queue=500)
    n = 10_000
    arrivals = [(i * 0.0002, i % 17, (i % 17, i)) for i in range(n)]  # bursts on 17 circuits
    peak = 0
    orig_push = m.push

    def push(c, cell, t):
        nonlocal peak
        ok = orig_push(c, cell, t)
        peak = max(peak, len(m))
        assert len(m) <= 500
        assert m.is_writable == (len(m) < 500)
        return ok

    m.push = push
    out, refused = run(m, arrivals)
    assert refused, "the burst must have hit the cap"
    assert len(out) + len(refused) == n and peak == 500
    seen: dict = {}
    for _, c, (circ, seq) in out:
        assert c == circ
        assert seq > seen.get(c, -1), "a circuit's cells left out of order"
        seen[c] = seq
    # across circuits the order IS mixed
    seqs = [cell[1] for _, _, cell in out]
    assert seqs != sorted(seqs)


def test_push_strict_raises_declared_error(rng):
    m = Mixer(rng=rng, max_queue=2)
    m.push_strict("a", b"1", 0.0)
    m.push_strict("a", b"2", 0.0)
    assert not m.is_writable
    with pytest.raises(MixerFull):
        m.push_strict("a", b"3", 0.0)
    assert isinstance(MixerFull(), LocalProtocolError)


def test_batching_releases_on_ticks(rng):
    m = Mixer(rng=rng, mean_delay=0.3, batch_interval=1.0)
    arrivals = [(i * 0.01, i, i) for i in range(300)]
    out, _ = run(m, arrivals)
    assert len(out) == 300
    assert {t for t, _, _ in out} <= {float(k) for k in range(0, 20)}


def test_poisson_cover_rate(rng):
    made = []

    def cover(t):
        made.append(t)
        return ("cover", b"")

    m = Mixer(rng=rng, mean_delay=0.0, cover_rate=50.0, cover_factory=cover)
    out = []
    t = 0.0
    while t < 100.0:
        t = m.get_timer()
        out += m.cells_to_send(t)
    # 5000 expected; Poisson sd ~ 71
    assert abs(len(made) - 5000) < 400 and len(out) >= len(made) - 1
    gaps = [b - a for a, b in zip(made, made[1:])]
    _, p = ks_test(gaps, lambda x: 1.0 - math.exp(-50.0 * x) if x > 0 else 0.0)
    assert p > 0.01


def test_constant_rate_mode(rng):
    m = Mixer(rng=rng, mean_delay=0.01, constant_rate=100.0, cover_factory=lambda t: ("pad", b"P"))
    for i in range(50):
        m.push("c", i, i * 0.001)
    sent = []
    now = 0.0
    for _ in range(200):
        now = m.get_timer()
        sent += [(now, c, x) for c, x in m.cells_to_send(now)]
    times = [t for t, _, _ in sent]
    assert len(sent) == 200
    assert all(b - a == pytest.approx(0.01) for a, b in zip(times, times[1:]))
    real = [x for _, c, x in sent if c == "c"]
    assert real == list(range(50))  # all delivered, in order
    assert sum(1 for _, c, _ in sent if c == "pad") == 150


def test_exponential_sample_is_positive_and_finite(rng):
    assert exponential_sample(lambda n: b"\x00" * n, 1.0) == 0.0
    top = exponential_sample(lambda n: b"\xff" * n, 1.0)
    assert math.isfinite(top) and top == pytest.approx(53 * math.log(2))
    assert all(exponential_sample(rng, 2.0) >= 0 for _ in range(1000))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 10), st.integers(0, 4)), max_size=200), st.integers(1, 40))
def test_fifo_property(seed_rng, events, cap):
    m = Mixer(rng=seed_rng(b"mix"), mean_delay=0.5, max_queue=cap)
    arrivals = sorted((t, c, (c, k)) for k, (t, c) in enumerate(events))
    # per circuit the arrival order is by time then k; remember it
    out, refused = run(m, arrivals)
    assert len(out) + len(refused) == len(arrivals)
    accepted = [a for a in arrivals if a not in refused]
    for c in range(5):
        sent = [cell for _, cc, cell in out if cc == c]
        assert sent == [cell for _, cc, cell in accepted if cc == c]
