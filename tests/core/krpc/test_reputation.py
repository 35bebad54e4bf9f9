"""Peer reputation: QuDAG arithmetic (50 start, +5, -10, clamp 0..100), latency
penalty, decay toward 50, exclusion, weighted selection, bounded table."""
from __future__ import annotations

import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.krpc.reputation import Reputation, ReputationConfig


def counter_rng(seed: bytes):
    ctr = iter(range(10**9))
    return lambda n: hashlib.sha256(seed + b"%d" % next(ctr)).digest()[:n]


def test_arithmetic_and_clamp():
    r = Reputation()
    assert r.score(b"p") == 50.0 and b"p" not in r
    assert r.record_success(b"p", 0.0) == 55.0
    assert r.record_failure(b"p", 0.0) == 45.0
    for _ in range(20):
        r.record_success(b"p", 0.0)
    assert r.score(b"p") == 100.0
    for _ in range(20):
        r.record_failure(b"p", 0.0)
    assert r.score(b"p") == 0.0


def test_latency_penalty():
    r = Reputation()
    assert r.latency_penalty(None) == 0 and r.latency_penalty(0.2) == 0
    assert r.latency_penalty(0.299) == 0
    assert r.latency_penalty(0.3) == 1
    assert r.latency_penalty(0.75) == 5
    assert r.latency_penalty(5.0) == 10  # bounded
    assert r.record_success(b"slow", 0.0, latency=0.5) == 52.0
    assert r.record_success(b"glacial", 0.0, latency=9.0) == 45.0


def test_decay_toward_neutral():
    r = Reputation(ReputationConfig(half_life=100.0))
    for _ in range(4):
        r.record_failure(b"p", 0.0)
    assert r.score(b"p", 0.0) == 10.0
    assert r.score(b"p", 100.0) == pytest.approx(30.0)
    assert r.score(b"p", 200.0) == pytest.approx(40.0)
    assert r.score(b"p", -5.0) == 10.0  # a clock going backwards decays nothing
    # Decay is applied before the next update.
    assert r.record_success(b"p", 100.0) == pytest.approx(35.0)
    for _ in range(5):
        r.record_success(b"q", 0.0)
    assert r.score(b"q", 100.0) == pytest.approx(62.5)


def test_exclusion_and_recovery():
    r = Reputation()  # half-life 1 h
    for _ in range(5):
        r.record_failure(b"bad", 0.0)
    assert r.score(b"bad", 0.0) == 0.0 and r.is_excluded(b"bad", 0.0)
    assert r.is_excluded(b"bad", 18 * 60.0)
    assert not r.is_excluded(b"bad", 20 * 60.0)
    assert r.choose([b"bad"], counter_rng(b"x"), 1, now=0.0) == []


def test_weighted_choice_follows_scores():
    r = Reputation()
    for _ in range(10):
        r.record_success(b"hi", 0.0)  # 100
    r.record_failure(b"lo", 0.0)
    r.record_failure(b"lo", 0.0)
    r.record_failure(b"lo", 0.0)  # 20
    rng = counter_rng(b"choose")
    picks = Counter(r.choose([b"hi", b"lo", b"mid"], rng, 1)[0] for _ in range(3000))
    # Expected shares 100:20:50 of 170.
    assert abs(picks[b"hi"] / 3000 - 100 / 170) < 0.04
    assert abs(picks[b"lo"] / 3000 - 20 / 170) < 0.03
    two = r.choose([b"hi", b"lo", b"mid", b"hi"], rng, 5)
    assert sorted(two) == [b"hi", b"lo", b"mid"]  # without replacement, duplicates folded


def test_bounded_table_keeps_distrusted_peers():
    r = Reputation(ReputationConfig(max_peers=16))
    for _ in range(5):
        r.record_failure(b"villain", 0.0)
    for i in range(200):
        r.record_success(b"sybil%d" % i, 1.0)
        assert len(r) <= 16
    assert b"villain" in r and r.is_excluded(b"villain", 1.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.booleans(),
                          st.floats(0, 10.0), st.floats(0, 5000.0)), max_size=50))
def test_scores_stay_in_range(events):
    r = Reputation(ReputationConfig(max_peers=2))
    now = 0.0
    for peer, ok, lat, dt in events:
        now += dt
        s = r.record_success(peer, now, lat) if ok else r.record_failure(peer, now)
        assert 0.0 <= s <= 100.0 and len(r) <= 2
        assert 0.0 <= r.score(peer, now + 1e6) <= 100.0
        assert abs(r.score(peer, now + 1e7) - 50.0) < 1e-6
