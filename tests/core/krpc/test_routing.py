"""Routing table (BEP 5 "Routing Table"): node states, full-bucket policy, replacement
caches, IP diversity, refresh, closest() against brute force, persistence."""
from __future__ import annotations

import hashlib

import pytest

from qudag_core.krpc.routing import (
    DiversityConfig,
    NodeState,
    Outcome,
    RoutingConfig,
    RoutingTable,
    address_prefix,
    distance,
)

OWN = bytes(20)
NO_DIV = RoutingConfig(diversity=DiversityConfig(enabled=False))


def nid(i: int) -> bytes:
    return hashlib.sha1(b"node%d" % i).digest()


def addr(i: int) -> tuple:
    """A distinct /24 per i: passes the default diversity limits."""
    return (f"10.{(i >> 8) & 255}.{i & 255}.1", 6881)


def in_bucket(table: RoutingTable, index: int, n: int, seed: bytes = b"") -> list[bytes]:
    out = []
    ctr = 0
    while len(out) < n:
        ctr += 1
        out.append(table.random_id_in_bucket(index, lambda k, c=ctr: hashlib.sha256(seed + b"%d" % c).digest()[:k]))
    return out


def test_own_id_and_invalid_rejected():
    t = RoutingTable(OWN)
    assert t.add_or_update(OWN, addr(1), 0.0, responded=True).outcome is Outcome.REJECTED_SELF
    assert t.add_or_update(b"\x01" * 19, addr(1), 0.0).outcome is Outcome.REJECTED_INVALID
    assert t.add_or_update(nid(1), ("10.0.0.1", 0), 0.0).outcome is Outcome.REJECTED_INVALID
    assert t.add_or_update(nid(1), ("10.0.0.1", 70000), 0.0).outcome is Outcome.REJECTED_INVALID
    assert t.add_or_update(nid(1), ("10.0.0.1",), 0.0).outcome is Outcome.REJECTED_INVALID
    assert t.add_or_update(nid(1), ("example.org", 1), 0.0).outcome is Outcome.REJECTED_ADDRESS
    assert len(t) == 0 and OWN not in t
    with pytest.raises(ValueError):
        RoutingTable(b"short")


def test_bucket_index_is_shared_prefix_length():
    t = RoutingTable(OWN)
    assert t.bucket_index(b"\x80" + bytes(19)) == 0
    assert t.bucket_index(b"\x01" + bytes(19)) == 7
    assert t.bucket_index(bytes(19) + b"\x01") == 159
    assert t.bucket_index(OWN) == 160


def test_node_states_bep5():
    """BEP 5: good = responded within 15 min, or ever responded and queried us within
    15 min; questionable after 15 min of inactivity; bad after repeated failures."""
    t = RoutingTable(OWN)
    a, b = nid(1), nid(2)
    t.add_or_update(a, addr(1), 0.0, responded=True)
    t.add_or_update(b, addr(2), 0.0, queried_us=True)
    assert t.state_of(a, 0.0) is NodeState.GOOD
    assert t.state_of(b, 0.0) is NodeState.QUESTIONABLE  # never responded
    assert t.state_of(a, 899.0) is NodeState.GOOD
    assert t.state_of(a, 900.0) is NodeState.QUESTIONABLE
    t.add_or_update(a, addr(1), 1000.0, queried_us=True)
    assert t.state_of(a, 1000.0) is NodeState.GOOD  # has responded once, queried us recently
    assert t.state_of(a, 1900.0) is NodeState.QUESTIONABLE
    t.mark_failed(a, 1901.0)
    assert t.state_of(a, 1901.0) is NodeState.QUESTIONABLE
    t.mark_failed(a, 1902.0)
    assert t.state_of(a, 1902.0) is NodeState.BAD
    t.add_or_update(a, addr(1), 1903.0, responded=True)
    assert t.state_of(a, 1903.0) is NodeState.GOOD  # a response clears the failures


def test_bad_after_failures_configurable():
    t = RoutingTable(OWN, config=RoutingConfig(bad_after_failures=3))
    t.add_or_update(nid(1), addr(1), 0.0, responded=True)
    for _ in range(2):
        t.mark_failed(nid(1), 1.0)
    assert t.state_of(nid(1), 1.0) is NodeState.GOOD
    t.mark_failed(nid(1), 1.0)
    assert t.state_of(nid(1), 1.0) is NodeState.BAD


def test_full_bucket_good_nodes_never_replaced():
    t = RoutingTable(OWN, config=RoutingConfig(k=4))
    ids = in_bucket(t, 0, 6)
    for i, x in enumerate(ids[:4]):
        assert t.add_or_update(x, addr(i), 0.0, responded=True).outcome is Outcome.ADDED
    r = t.add_or_update(ids[4], addr(4), 10.0, responded=True)
    assert r.outcome is Outcome.CACHED and r.pings == ()
    assert set(x for x in ids[:4]) == {n.node_id for n in t}
    assert t.replacement_ids(0) == [ids[4]]


def test_full_bucket_pings_questionable_then_promotes_replacement():
    t = RoutingTable(OWN, config=RoutingConfig(k=3))
    ids = in_bucket(t, 0, 5)
    for i, x in enumerate(ids[:3]):
        t.add_or_update(x, addr(i), 0.0, responded=True)
    t.add_or_update(ids[0], addr(0), 1000.0, responded=True)  # stays good
    r = t.add_or_update(ids[3], addr(3), 1000.0, responded=True)
    assert r.outcome is Outcome.CACHED
    assert set(r.pings) == {(ids[1], addr(1)), (ids[2], addr(2))}
    # Pinging again right away is suppressed (ping_interval).
    assert t.add_or_update(ids[4], addr(4), 1001.0, responded=True).pings == ()
    # ids[1] answers the ping; ids[2] fails twice and is replaced by the freshest replacement.
    t.add_or_update(ids[1], addr(1), 1002.0, responded=True)
    assert t.mark_failed(ids[2], 1003.0) is None
    promoted = t.mark_failed(ids[2], 1013.0)
    assert promoted is not None and promoted.node_id == ids[4]
    assert ids[2] not in t and ids[4] in t and ids[3] not in t
    assert t.replacement_ids(0) == [ids[3]]


def test_bad_node_replaced_by_newcomer():
    t = RoutingTable(OWN, config=RoutingConfig(k=2))
    ids = in_bucket(t, 3, 3)
    t.add_or_update(ids[0], addr(0), 0.0, responded=True)
    t.add_or_update(ids[1], addr(1), 0.0, responded=True)
    t.mark_failed(ids[1], 1.0)
    t.mark_failed(ids[1], 2.0)  # bad, but no replacement yet: stays
    assert ids[1] in t
    assert t.closest(ids[1], 5) == [t.get(ids[0])]  # bad nodes are not handed out
    assert len(t.closest(ids[1], 5, include_bad=True)) == 2
    r = t.add_or_update(ids[2], addr(2), 3.0, responded=True)
    assert r.outcome is Outcome.REPLACED and r.evicted == ids[1]
    assert ids[2] in t and ids[1] not in t


def test_replacement_cache_bounded():
    t = RoutingTable(OWN, config=RoutingConfig(k=1, replacement_cache_size=3))
    ids = in_bucket(t, 0, 10)
    t.add_or_update(ids[0], addr(0), 0.0, responded=True)
    for i in range(1, 10):
        t.add_or_update(ids[i], addr(i), 0.0, responded=True)
    assert t.replacement_ids(0) == ids[7:10]
    assert t.mark_failed(ids[8], 1.0) is None  # a failing replacement leaves the cache
    assert t.replacement_ids(0) == [ids[7], ids[9]]


def test_diversity_per_bucket_and_per_table():
    t = RoutingTable(OWN)
    ids0 = in_bucket(t, 0, 3)
    same24 = [("192.0.2.%d" % (i + 1), 1000 + i) for i in range(30)]
    assert t.add_or_update(ids0[0], same24[0], 0.0).outcome is Outcome.ADDED
    assert t.add_or_update(ids0[1], same24[1], 0.0).outcome is Outcome.ADDED
    assert t.add_or_update(ids0[2], same24[2], 0.0).outcome is Outcome.REJECTED_DIVERSITY
    n = 2
    for b in range(1, 12):
        for x in in_bucket(t, b, 2, seed=b"b%d" % b):
            out = t.add_or_update(x, same24[n], 0.0).outcome
            assert out is (Outcome.ADDED if n < 10 else Outcome.REJECTED_DIVERSITY)
            n += 1
    assert t.prefix_counts()[address_prefix("192.0.2.1")] == 10
    # IPv6 groups by /48; IPv4-mapped IPv6 groups with IPv4.
    assert address_prefix("2001:db8:1:2::1") == address_prefix("2001:db8:1:ffff::9")
    assert address_prefix("2001:db8:1::1") != address_prefix("2001:db8:2::1")
    assert address_prefix("::ffff:192.0.2.77") == address_prefix("192.0.2.1")


def test_diversity_disabled_for_loopback_tests():
    t = RoutingTable(OWN, config=NO_DIV)
    for i, x in enumerate(in_bucket(t, 0, 20)):
        assert t.add_or_update(x, ("127.0.0.1", 20000 + i), 0.0).outcome is Outcome.ADDED
    assert len(t) == 20


def test_address_conflicts():
    t = RoutingTable(OWN)
    a, b = nid(1), nid(2)
    t.add_or_update(a, addr(1), 0.0, responded=True)
    # A live id claimed from a new address is not believed.
    assert t.add_or_update(a, addr(2), 1.0, responded=True).outcome is Outcome.REJECTED_ADDR_CONFLICT
    # A live address claimed by a new id is not believed either.
    assert t.add_or_update(b, addr(1), 1.0, responded=True).outcome is Outcome.REJECTED_ADDR_IN_USE
    t.mark_failed(a, 2.0)
    t.mark_failed(a, 3.0)
    # Once bad, the id may move.
    assert t.add_or_update(a, addr(2), 4.0, responded=True).outcome is Outcome.ADDED
    assert t.get(a).addr == addr(2)


def test_remove_promotes_replacement():
    t = RoutingTable(OWN, config=RoutingConfig(k=1))
    ids = in_bucket(t, 0, 2)
    t.add_or_update(ids[0], addr(0), 0.0, responded=True)
    t.add_or_update(ids[1], addr(1), 0.0, responded=True)
    assert t.remove(ids[0], 1.0)
    assert ids[1] in t and not t.remove(ids[0])


def test_closest_matches_brute_force(rng):
    t = RoutingTable(rng(20), config=RoutingConfig(k=8))
    for i in range(600):
        t.add_or_update(rng(20), addr(i), 0.0, responded=True)
    everyone = [n.node_id for n in t]
    assert len(everyone) == len(t)
    for _ in range(50):
        target = rng(20)
        want = sorted(everyone, key=lambda x: distance(x, target))[:12]
        assert [n.node_id for n in t.closest(target, 12)] == want
    own = t.own_id
    assert [n.node_id for n in t.closest(own, 5)] == sorted(everyone, key=lambda x: distance(x, own))[:5]
    assert t.closest(own, 0) == []


def test_closest_matches_brute_force_for_targets_near_our_id(rng):
    """Targets sharing 0..40 leading bits with our id: every split of the buckets into
    "the target's bucket, all deeper ones, then shallower ones in order" is walked."""
    t = RoutingTable(rng(20), config=RoutingConfig(k=8))
    for i in range(400):
        t.add_or_update(t.random_id_in_bucket(i % 12, rng) if i % 2 else rng(20), addr(i), 0.0, responded=True)
    everyone = [n.node_id for n in t]
    for shared in range(0, 41, 2):
        target = t.random_id_in_bucket(shared, rng)
        for count in (1, 8, 30):
            want = sorted(everyone, key=lambda x: distance(x, target))[:count]
            assert [n.node_id for n in t.closest(target, count)] == want


def test_node_compact_form_is_bep5_contact_encoding():
    t = RoutingTable(OWN, config=NO_DIV)
    t.add_or_update(nid(1), ("10.1.2.3", 6881), 0.0, responded=True)
    t.add_or_update(nid(2), ("2001:db8::7", 443), 0.0, responded=True)
    t.add_or_update(nid(3), ("fe80::1%eth0", 1), 0.0, responded=True)
    got = {n.node_id: n.compact for n in t}
    assert got[nid(1)] == nid(1) + bytes([10, 1, 2, 3]) + (6881).to_bytes(2, "big")
    assert got[nid(2)] == nid(2) + bytes.fromhex("20010db8000000000000000000000007") + (443).to_bytes(2, "big")
    assert got.get(nid(3)) is None  # a scoped address has no compact form (if it was accepted at all)


def test_refresh_due_after_15_minutes(rng):
    t = RoutingTable(OWN, now=0.0)
    assert t.due_refreshes(10_000.0, rng) == []  # empty table: caller bootstraps instead
    x = in_bucket(t, 2, 1)[0]
    t.add_or_update(x, addr(1), 100.0, responded=True)
    assert t.due_refreshes(899.0, rng) == []
    due = t.due_refreshes(900.0, rng)
    # Buckets 0 and 1 never changed since creation at 0; bucket 2 changed at 100.
    assert [t.bucket_index(d) for d in due] == [0, 1]
    assert t.due_refreshes(901.0, rng) == []  # marked refreshed
    assert t.next_refresh_time() == 1000.0
    assert [t.bucket_index(d) for d in t.due_refreshes(1000.0, rng)] == [2]
    t.add_or_update(x, addr(1), 1500.0, responded=True)  # a response freshens its bucket
    assert [t.bucket_index(d) for d in t.due_refreshes(1800.0, rng)] == [0, 1]
    for i in range(160):
        assert t.bucket_index(t.random_id_in_bucket(i, rng)) == i


def test_snapshot_restore_roundtrip():
    t = RoutingTable(OWN)
    for i in range(1, 40):
        t.add_or_update(nid(i), addr(i), float(i), responded=True, queried_us=i % 2 == 0)
    snap = t.snapshot()
    assert all(isinstance(e[1], str) and isinstance(e[2], int) for e in snap)
    u = RoutingTable(OWN)
    assert u.restore(snap + [("garbage",), (b"x", "h", 1, None, None)], 20.0) == len(t)
    assert sorted(u.snapshot()) == sorted(
        (i, h, p, min(lr, 20.0), None if lq is None else min(lq, 20.0)) for i, h, p, lr, lq in snap)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_junk = st.one_of(st.none(), st.integers(), st.text(max_size=50), st.binary(max_size=25),
                  st.tuples(st.text(max_size=40), st.integers(-5, 70000)),
                  st.tuples(st.binary(max_size=4), st.integers()), st.lists(st.integers(), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(min_size=20, max_size=20), _junk), _junk, st.booleans())
def test_any_input_is_an_outcome_not_an_exception(node_id, address, responded):
    t = RoutingTable(OWN)
    r = t.add_or_update(node_id, address, 0.0, responded=responded)
    assert isinstance(r.outcome, Outcome)
    assert len(t) == (1 if r.inserted else 0)
