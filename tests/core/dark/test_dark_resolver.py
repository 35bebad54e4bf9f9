"""The sans-IO resolver: verification, errors, cache, privacy options (docs/dark.md §6)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dark_helpers import NOW, SERVICE_CERT, SERVICE_ID, Rng, drive, forge, service
from qudag_core.crypto import MlDsa65PrivateKey
from qudag_core.dark.address import DarkAddress
from qudag_core.dark.descriptor import OVERLAP_SECONDS, PERIOD_SECONDS, DarkService, DescriptorStore, descriptor_index, period_of
from qudag_core.dark.events import FetchDescriptors, Resolved, ResolveFailed
from qudag_core.dark.resolver import (
    InvalidDescriptorSignature,
    NotFound,
    ResolveExpired,
    Resolver,
    Rollback,
    Unpublished,
    WrongIndex,
)
from qudag_core.errors import LocalProtocolError

SVC = service()
ADDR = SVC.address
P = period_of(NOW)
REAL = SVC.build(P, 100, NOW + 3 * 3600, Rng(b"real"))
UNKNOWN = DarkAddress.from_public_key(MlDsa65PrivateKey(bytes([99]) * 32).public_key.raw)


def _store(*descs, now=NOW):
    s = DescriptorStore()
    for d in descs:
        assert s.put(d, now).accepted
    return s


class Served:
    """A hostile 'store' that answers any index with fixed bytes."""

    def __init__(self, items):
        self.items = list(items)

    def get(self, index, now=None):
        return list(self.items)


def _one(results):
    assert len(results) == 1
    return results[0]


def test_resolve_verified_endpoint():
    r = Resolver(Rng())
    ev = _one(drive(r, _store(REAL), r.resolve(ADDR, NOW), NOW)[0])
    assert isinstance(ev, Resolved) and not ev.from_cache
    ep = ev.endpoint
    assert ep.certificate == SERVICE_CERT and ep.expected_peer_id == SERVICE_ID.node_id
    assert ep.is_long_term and ep.revision == 100 and ep.expires_at == NOW + 3 * 3600


def test_resolve_requires_address():
    with pytest.raises(LocalProtocolError):
        Resolver(Rng()).resolve("test.dark", NOW)


def test_cache_hits_and_expiry():
    r = Resolver(Rng(), cache_ttl=600)
    store = _store(REAL)
    drive(r, store, r.resolve(ADDR, NOW), NOW)
    hit = _one(r.resolve(ADDR, NOW + 599))
    assert isinstance(hit, Resolved) and hit.from_cache and r.cache_hits == 1 and r.cache_misses == 1
    fresh = r.resolve(ADDR, NOW + 600)
    assert [type(e) for e in fresh] == [FetchDescriptors]
    assert r.cache_hits == 1 and r.cache_misses == 2  # an expired entry is a miss
    ev = _one(drive(r, store, fresh, NOW + 600)[0])
    assert isinstance(ev, Resolved) and not ev.from_cache
    # The cache never outlives the descriptor.
    r2 = Resolver(Rng(), cache_ttl=10**6)
    drive(r2, store, r2.resolve(ADDR, NOW), NOW)
    assert isinstance(r2.resolve(ADDR, NOW + 3 * 3600)[0], FetchDescriptors)


def test_negative_cache_shorter_ttl():
    r = Resolver(Rng(), cache_ttl=600, negative_ttl=30)
    ev = _one(drive(r, DescriptorStore(), r.resolve(UNKNOWN, NOW), NOW)[0])
    assert isinstance(ev, ResolveFailed) and type(ev.error) is NotFound
    cached = _one(r.resolve(UNKNOWN, NOW + 29))
    assert isinstance(cached, ResolveFailed) and cached.from_cache
    assert isinstance(r.resolve(UNKNOWN, NOW + 30)[0], FetchDescriptors)


def test_failed_fetches_not_cached():
    r = Resolver(Rng(), negative_ttl=30)
    idx = descriptor_index(UNKNOWN, P)
    ev = _one(drive(r, DescriptorStore(), r.resolve(UNKNOWN, NOW), NOW, fail={idx})[0])
    assert isinstance(ev.error, NotFound)
    assert isinstance(r.resolve(UNKNOWN, NOW + 1)[0], FetchDescriptors)


def test_cache_is_bounded_lru():
    r = Resolver(Rng(), cache_size=2, negative_ttl=100)
    addrs = [DarkAddress(bytes([i]) * 32) for i in range(3)]
    for a in addrs:
        drive(r, DescriptorStore(), r.resolve(a, NOW), NOW)
    assert isinstance(r.resolve(addrs[0], NOW + 1)[0], FetchDescriptors)  # evicted
    assert r.resolve(addrs[2], NOW + 1)[0].from_cache


def test_client_rejects_rollback():
    r = Resolver(Rng(), cache_ttl=1)
    drive(r, _store(REAL), r.resolve(ADDR, NOW), NOW)
    old = SVC.build(P, 50, NOW + 3 * 3600, Rng(b"old"))
    ev = _one(drive(r, _store(old), r.resolve(ADDR, NOW + 5), NOW + 5)[0])
    assert isinstance(ev, ResolveFailed) and isinstance(ev.error, Rollback)
    # Same revision again is fine (the same descriptor fetched twice).
    ev = _one(drive(r, _store(REAL), r.resolve(ADDR, NOW + 10), NOW + 10)[0])
    assert isinstance(ev, Resolved)


def test_descriptor_for_another_index_rejected():
    r = Resolver(Rng())
    other_period = SVC.build(P - 1, 100, NOW + 3600, Rng())
    ev = _one(drive(r, Served([other_period]), r.resolve(ADDR, NOW), NOW)[0])
    assert isinstance(ev.error, WrongIndex)
    other_service = DarkService(bytes([5]) * 32, certificate=SERVICE_CERT).build(P, 1, NOW + 60, Rng())
    r = Resolver(Rng())
    ev = _one(drive(r, Served([other_service]), r.resolve(ADDR, NOW), NOW)[0])
    assert isinstance(ev.error, WrongIndex)


def test_expired_descriptor():
    r = Resolver(Rng())
    stale = SVC.build(P, 100, NOW - 1, Rng())
    ev = _one(drive(r, _store(stale), r.resolve(ADDR, NOW), NOW)[0])
    assert isinstance(ev.error, ResolveExpired)


def test_forgeries_rejected_and_real_picked():
    forged = [forge(ADDR, P, 10**6 + i, bytes([i + 1]) * 32) for i in range(3)]
    claimed = forge(ADDR, P, 10**7, bytes([77]) * 32, claim_identity_pk=SERVICE_ID.signing_key.public_key.raw)
    r = Resolver(Rng())
    ev = _one(drive(r, _store(REAL, *forged, claimed), r.resolve(ADDR, NOW), NOW)[0])
    assert isinstance(ev, Resolved) and ev.endpoint.revision == 100
    r = Resolver(Rng())
    ev = _one(drive(r, _store(*forged, claimed), r.resolve(ADDR, NOW), NOW)[0])
    assert isinstance(ev.error, InvalidDescriptorSignature)


def test_tombstone_means_unpublished():
    r = Resolver(Rng())
    tomb = SVC.build(P, 101, NOW + 3600, Rng(), tombstone=True)
    store = _store(REAL)
    assert store.put(tomb, NOW).accepted
    ev = _one(drive(r, store, r.resolve(ADDR, NOW), NOW)[0])
    assert isinstance(ev.error, Unpublished)


def test_overlap_tries_next_period():
    late = P * PERIOD_SECONDS + PERIOD_SECONDS - OVERLAP_SECONDS + 60
    nxt = SVC.build(P + 1, 7, late + 3600, Rng())
    r = Resolver(Rng())
    results, fetches = drive(r, _store(nxt, now=late), r.resolve(ADDR, late), late)
    assert [f.index for f in fetches] == [descriptor_index(ADDR, P), descriptor_index(ADDR, P + 1)]
    assert isinstance(_one(results), Resolved)


def test_dummies_and_circuit_flag_in_fetches():
    r = Resolver(Rng(b"d"), dummies=3, via_circuit=True)
    out = r.resolve(ADDR, NOW)
    assert len(out) == 4 and all(isinstance(e, FetchDescriptors) and e.via_circuit for e in out)
    assert len({e.query_id for e in out}) == 4 and all(len(e.index) == 20 for e in out)
    assert sum(e.index == descriptor_index(ADDR, P) for e in out) == 1
    # Answers to dummies are ignored; the real answer resolves.
    store = _store(REAL)
    results = []
    for e in out:
        results += r.on_fetch_result(e.query_id, store.get(e.index), NOW)
    assert isinstance(_one(results), Resolved)
    # The real fetch is not always in the same position.
    positions = set()
    for seed in range(12):
        r = Resolver(Rng(bytes([seed])), dummies=3)
        positions.add([e.index for e in r.resolve(ADDR, NOW)].index(descriptor_index(ADDR, P)))
    assert len(positions) > 1


def test_random_delay_via_timer():
    r = Resolver(Rng(b"t"), max_delay=10.0)
    assert r.resolve(ADDR, NOW) == [] and r.pending == 1
    t = r.get_timer()
    assert NOW <= t <= NOW + 10
    assert r.resolve(ADDR, NOW) == []  # joins the pending lookup
    assert r.handle_timer(t - 0.001) == []
    out = r.handle_timer(t)
    assert [e.index for e in out] == [descriptor_index(ADDR, P)] and r.get_timer() == t + r.fetch_timeout
    assert isinstance(_one(drive(r, _store(REAL), out, t)[0]), Resolved)


def test_mutated_descriptors_never_resolve_even_after_cached_verification():
    """A few thousand mutations served to a resolver that already verified (and cached)
    the original: none resolves, each gives a declared error."""
    rnd = random.Random(7)
    r = Resolver(Rng(), cache_ttl=1e-9)
    drive(r, _store(REAL), r.resolve(ADDR, NOW), NOW)
    from test_dark_descriptor import _mutate

    kinds = set()
    checks_before = r.signature_checks
    for i in range(2000):
        bad = _mutate(REAL, rnd)
        res, _ = drive(r, Served([bad]), r.resolve(ADDR, NOW + i + 1), NOW + i + 1)
        ev = _one(res)
        assert isinstance(ev, ResolveFailed), ev
        kinds.add(type(ev.error))
    assert {InvalidDescriptorSignature, WrongIndex, NotFound} <= kinds
    assert r.signature_checks > checks_before  # some mutations got as far as ML-DSA


@given(st.lists(st.binary(max_size=64), max_size=5), st.booleans())
@settings(max_examples=100, deadline=None)
def test_any_answer_gives_result_or_declared_error(blobs, fail_first):
    r = Resolver(Rng())
    out = r.resolve(ADDR, NOW)
    idx = {out[0].index} if fail_first else set()
    res, _ = drive(r, Served(blobs), out, NOW, fail=idx)
    ev = _one(res)
    assert isinstance(ev, ResolveFailed)


@given(st.lists(st.sampled_from(["resolve", "answer", "fail", "timer", "stray", "tick"]), max_size=25), st.integers(0, 3))
@settings(max_examples=60, deadline=None)
def test_resolver_random_event_orders(ops, dummies):
    """Any order of resolve / answers / failures / stray ids / timers: every lookup ends
    in exactly one result, nothing else escapes, and no query is left behind."""
    r = Resolver(Rng(b"sm"), dummies=dummies, max_delay=5.0)
    store = _store(REAL)
    now = float(NOW)
    outstanding: list = []
    started = finished = 0
    for op in ops:
        evs: list = []
        if op == "resolve":
            before = r.pending
            evs = r.resolve(ADDR if started % 2 == 0 else UNKNOWN, now)
            started += r.pending - before
        elif op == "answer" and outstanding:
            f = outstanding.pop(0)
            evs = r.on_fetch_result(f.query_id, store.get(f.index), now)
        elif op == "fail" and outstanding:
            f = outstanding.pop()
            evs = r.on_fetch_failed(f.query_id, now)
        elif op == "stray":
            evs = r.on_fetch_result(12345, [REAL], now) + r.on_fetch_failed(54321, now)
        elif op == "timer":
            t = r.get_timer()
            if t is not None:
                now = max(now, t)
                evs = r.handle_timer(now)
        elif op == "tick":
            now += 1.0
        for e in evs:
            if isinstance(e, FetchDescriptors):
                outstanding.append(e)
            elif not e.from_cache:
                finished += 1
    assert finished <= started
    # Drain: fire timers and answer everything; every lookup then completes.
    for _ in range(10):
        t = r.get_timer()
        if t is not None:
            now = max(now, t)
            for e in r.handle_timer(now):
                if isinstance(e, FetchDescriptors):
                    outstanding.append(e)
                elif not e.from_cache:
                    finished += 1
        while outstanding:
            f = outstanding.pop()
            for e in r.on_fetch_result(f.query_id, store.get(f.index), now):
                if isinstance(e, FetchDescriptors):
                    outstanding.append(e)
                elif not e.from_cache:
                    finished += 1
    assert r.pending == 0 and finished == started


def test_non_bytes_values_from_adapter_are_dropped():
    r = Resolver(Rng())
    out = r.resolve(ADDR, NOW)
    res = r.on_fetch_result(out[0].query_id, [None, 10**9, "text", REAL], NOW)
    assert isinstance(_one(res), Resolved)


def test_dummies_accompany_every_real_fetch():
    late = P * PERIOD_SECONDS + PERIOD_SECONDS - OVERLAP_SECONDS + 60
    r = Resolver(Rng(b"dd"), dummies=2)
    first = r.resolve(ADDR, late)
    assert len(first) == 3
    real = [e for e in first if e.index == descriptor_index(ADDR, P)][0]
    second = r.on_fetch_result(real.query_id, [], late)
    assert len(second) == 3 and sum(e.index == descriptor_index(ADDR, P + 1) for e in second) == 1


def test_unanswered_fetch_times_out_via_timer():
    r = Resolver(Rng(), fetch_timeout=15.0, dummies=1)
    out = r.resolve(UNKNOWN, NOW)
    assert r.get_timer() == NOW + 15.0 and len(out) == 2
    assert r.handle_timer(NOW + 14.9) == []
    res = r.handle_timer(NOW + 15.0)  # the only period to try (mid-period) failed
    assert [type(e) for e in res] == [ResolveFailed] and isinstance(res[0].error, NotFound)
    assert r.pending == 0 and r.get_timer() is None
    # Late answers are ignored.
    assert r.on_fetch_result(out[0].query_id, [REAL], NOW + 16) == []
