"""Per-source token-bucket rate limiting."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.krpc.ratelimit import RateLimiter, source_key


def test_burst_then_rate():
    rl = RateLimiter(rate=2.0, burst=5)
    assert [rl.allow("192.0.2.1", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert rl.drops == 2 and rl.allowed == 5
    assert rl.allow("192.0.2.2", 0.0)  # other sources are independent
    assert not rl.allow("192.0.2.1", 0.4)
    assert rl.allow("192.0.2.1", 0.5)  # one token back after 0.5 s at 2/s
    assert rl.tokens("192.0.2.1", 100.0) == 5.0  # refill stops at burst


def test_ipv6_grouped_by_64_and_mapped_v4():
    rl = RateLimiter(rate=1.0, burst=2)
    assert rl.allow("2001:db8:1:2::1", 0.0) and rl.allow("2001:db8:1:2::ffff", 0.0)
    assert not rl.allow("2001:db8:1:2:abcd::9", 0.0)
    assert rl.allow("2001:db8:1:3::1", 0.0)
    assert source_key("::ffff:192.0.2.9") == "192.0.2.9"


def test_tracked_sources_bounded_lru():
    rl = RateLimiter(rate=1.0, burst=1, max_tracked=3)
    for i in range(10):
        rl.allow(f"10.0.0.{i}", float(i))
        assert len(rl) <= 3
    assert rl.evicted == 7
    assert not rl.allow("10.0.0.9", 9.0)  # the most recent source is still tracked
    assert rl.prune(100.0) == 3 and len(rl) == 0


def test_bad_parameters():
    with pytest.raises(ValueError):
        RateLimiter(rate=0, burst=1)
    with pytest.raises(ValueError):
        RateLimiter(rate=1, burst=0.5)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1", "junk"]),
                          st.floats(0, 2.0)), max_size=200),
       st.floats(0.5, 20.0), st.integers(1, 10))
def test_never_more_than_burst_plus_rate_times_time(events, rate, burst):
    rl = RateLimiter(rate=rate, burst=burst)
    now = 0.0
    allowed: dict = {}
    for ip, dt in events:
        now += dt
        if rl.allow(ip, now):
            allowed[ip] = allowed.get(ip, 0) + 1
    for ip, n in allowed.items():
        assert n <= burst + rate * now + 1e-9
    assert rl.allowed + rl.drops == len(events)
