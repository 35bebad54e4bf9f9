"""Iterative lookup state machine (Kademlia §2.3, BEP 5 find_node/get_peers): the
response checks, alpha, timers, bounds and termination."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.krpc.lookup import Lookup, Verdict
from qudag_core.krpc.routing import distance

TARGET = bytes(20)
OWN = b"\xff" * 20


def node(i: int) -> tuple:
    """Node i is at distance i (+ a high bit to keep it off zero) from TARGET."""
    return ((i + 1).to_bytes(20, "big"), (f"10.0.{i >> 8}.{i & 255}", 7000 + i))


def started(n: int = 8, **kw) -> Lookup:
    kw.setdefault("own_id", OWN)
    return Lookup(TARGET, [node(i) for i in range(n)], kw.pop("k", 4), kw.pop("alpha", 3), 0.0,
                  kw.pop("query_timeout", 2.0), **kw)


def test_alpha_closest_first_and_in_flight_bound():
    lk = started()
    q = lk.next_queries(0.0)
    assert q == [node(0), node(1), node(2)]
    assert lk.next_queries(0.1) == []  # alpha in flight
    assert lk.on_response(*node(0), [], 0.2) is Verdict.ACCEPTED
    assert lk.next_queries(0.2) == [node(3)]
    assert len(lk.in_flight()) == 3


def test_terminates_when_k_closest_answered():
    lk = started()
    for _ in range(4):
        for nid, a in lk.next_queries(0.0):
            assert lk.on_response(nid, a, [], 0.0) is Verdict.ACCEPTED
    assert lk.done
    assert [c[0] for c in lk.result.closest] == [node(i)[0] for i in range(4)]
    assert lk.result.queries == 4 and lk.next_queries(1.0) == []
    assert lk.on_response(*node(5), [], 1.0) is Verdict.DONE


def test_response_checks():
    lk = started()
    q = lk.next_queries(0.0)
    (id0, a0), (id1, a1), (id2, a2) = q
    # From a node we never queried.
    assert lk.on_response(*node(6), [], 0.1) is Verdict.UNSOLICITED
    # The id we queried, but from another address: dropped, the real node may still answer.
    assert lk.on_response(id0, ("10.9.9.9", 1), [], 0.1) is Verdict.WRONG_ADDRESS
    # Our own id echoed back from a queried address: dropped, that query failed.
    assert lk.on_response(OWN, a1, [], 0.1) is Verdict.OWN_ID
    # The address we queried answering with another id: dropped, that query failed.
    assert lk.on_response(b"\x07" * 20, a2, [], 0.1) is Verdict.WRONG_ID
    assert lk.result.failures == 2
    assert lk.on_response(id0, a0, [(id1, a1), (id2, a2)], 0.2) is Verdict.ACCEPTED
    assert lk.on_response(id0, a0, [], 0.2) is Verdict.UNSOLICITED  # no duplicate answers
    # The failed ones are never asked again, even when listed anew.
    nxt = lk.next_queries(0.3)
    assert id1 not in [x for x, _ in nxt] and id2 not in [x for x, _ in nxt]


def test_own_id_and_malformed_nodes_never_enter_the_shortlist():
    lk = started(2, k=2)
    (id0, a0), (id1, a1) = lk.next_queries(0.0)
    junk = [(OWN, ("10.1.1.1", 1)), (b"short", ("10.1.1.2", 1)), (b"\x01" * 20, ("10.1.1.3", 0)),
            (b"\x01" * 20, "10.1.1.3:5"), "garbage", (b"\x02" * 20, ("10.1.1.4", True)), None,
            (b"\x03" * 20, (b"10.1.1.5", 5)), (b"\x04" * 20, ("10.1.1.6", 5), "extra")]
    assert lk.on_response(id0, a0, junk, 0.1) is Verdict.ACCEPTED
    assert lk.on_response(id1, a1, [], 0.1) is Verdict.ACCEPTED
    assert lk.done and lk.result.queries == 2


def test_each_address_queried_once():
    lk = started(1, k=4)
    (id0, a0), = lk.next_queries(0.0)
    victim = ("203.0.113.5", 53)
    many = [((i + 100).to_bytes(20, "big"), victim) for i in range(50)]
    lk.on_response(id0, a0, many, 0.1)
    q = lk.next_queries(0.1)
    assert [a for _, a in q] == [victim]


def test_timeouts_via_timer():
    lk = started(4, k=3)
    q = lk.next_queries(10.0)
    assert lk.get_timer() == 12.0
    assert lk.handle_timer(11.9) == []
    lk.on_response(*q[0], [], 11.0)
    expired = lk.handle_timer(12.0)
    assert expired == q[1:]
    assert lk.result.failures == 2
    # Late answers from expired queries are not trusted.
    assert lk.on_response(*q[1], [], 12.5) is Verdict.UNSOLICITED
    q2 = lk.next_queries(12.0)
    assert q2 == [node(3)]
    assert lk.on_timeout(node(3)[0], 12.1) and not lk.on_timeout(node(3)[0], 12.1)
    assert lk.done  # nothing left to ask
    assert [c[0] for c in lk.result.closest] == [node(0)[0]]


def test_next_queries_expires_too():
    lk = started(6, k=3, alpha=1)
    (a,) = lk.next_queries(0.0)
    (b,) = lk.next_queries(2.0)  # a expired here
    assert b == node(1) and lk.handle_timer(2.0) == [a]


def test_on_error_counts_as_failure():
    lk = started(3, k=2)
    q = lk.next_queries(0.0)
    assert lk.on_error(q[0][0], 0.1)
    lk.on_response(*q[1], [], 0.2)
    assert not lk.done
    assert lk.next_queries(0.2) == [node(2)]
    lk.on_response(*node(2), [], 0.3)
    assert lk.done and [c[0] for c in lk.result.closest] == [node(1)[0], node(2)[0]]
    assert lk.result.failures == 1


def test_values_and_tokens_collected():
    lk = started(2, k=2, max_values=3)
    (id0, a0), (id1, a1) = lk.next_queries(0.0)
    lk.on_response(id0, a0, [], 0.1, values=[b"p1", b"p2"], token=b"tok0")
    lk.on_response(id1, a1, [], 0.1, values=[b"p3", b"p4"])
    r = lk.result
    assert r.values == ((id0, b"p1"), (id0, b"p2"), (id1, b"p3"))
    assert r.closest == ((id0, a0, b"tok0"), (id1, a1, None))


def test_shortlist_and_queries_bounded():
    lk = Lookup(TARGET, [node(1000)], 4, 3, 0.0, 1.0, own_id=OWN, max_shortlist=10, max_queries=6)
    now = 0.0
    fresh = 0
    for _ in range(20):
        for nid, a in lk.next_queries(now):
            nodes = []
            for _ in range(8):
                fresh += 1
                nodes.append(((fresh + 2000).to_bytes(20, "big"), ("10.5.%d.%d" % (fresh >> 8, fresh & 255), 9)))
            lk.on_response(nid, a, nodes, now)
            assert len(lk._list) <= 10
        now += 0.5
    assert lk.done and lk.result.queries <= 6


def test_empty_and_bad_arguments():
    lk = Lookup(TARGET, [], own_id=OWN)
    assert lk.done and lk.next_queries(0.0) == [] and lk.get_timer() is None
    with pytest.raises(ValueError):
        Lookup(b"x", [])
    with pytest.raises(ValueError):
        Lookup(TARGET, [], k=0)


def test_score_breaks_ties_within_a_distance_class():
    # Nodes 4..7 are at distances 5..8: 5-7 share bit_length 3, 8 is 4.
    nodes = [node(i) for i in range(4, 8)]
    scores = {node(6)[0]: 90.0}
    lk = Lookup(TARGET, nodes, 4, 1, 0.0, 1.0, own_id=OWN, score=lambda x: scores.get(x, 50.0))
    assert lk.next_queries(0.0) == [node(6)]
    lk2 = Lookup(TARGET, nodes, 4, 4, 0.0, 1.0, own_id=OWN, excluded=lambda x: x == node(4)[0])
    assert node(4) not in lk2.next_queries(0.0)


# -- random event orders ------------------------------------------------------------------

ACTIONS = st.lists(st.tuples(st.sampled_from(["resp", "wrongid", "wrongaddr", "own", "timeout",
                                              "error", "tick", "unsolicited"]),
                             st.integers(0, 40), st.floats(0.0, 3.0)), max_size=80)


@settings(max_examples=200, deadline=None)
@given(ACTIONS, st.integers(1, 5), st.integers(1, 4))
def test_random_event_orders_keep_invariants(actions, k, alpha):
    universe = [node(i) for i in range(41)]
    lk = Lookup(TARGET, universe[:6], k, alpha, 0.0, 1.0, own_id=OWN, max_shortlist=k + 6, max_queries=30)
    now = 0.0
    for kind, i, dt in actions:
        q = lk.next_queries(now)
        assert len(lk.in_flight()) <= alpha
        assert len(q) <= alpha
        infl = lk.in_flight()
        pick = infl[i % len(infl)] if infl else universe[i]
        nodes = universe[i:i + 5]
        if kind == "resp":
            lk.on_response(pick[0], pick[1], nodes, now)
        elif kind == "wrongid":
            assert lk.on_response(universe[(i + 1) % 41][0], pick[1], nodes, now) is not Verdict.ACCEPTED or \
                universe[(i + 1) % 41][0] == pick[0]
        elif kind == "wrongaddr":
            assert lk.on_response(pick[0], ("192.0.2.1", 1), nodes, now) is not Verdict.ACCEPTED
        elif kind == "own":
            assert lk.on_response(OWN, pick[1], nodes, now) is not Verdict.ACCEPTED
        elif kind == "timeout":
            lk.on_timeout(pick[0], now)
        elif kind == "error":
            lk.on_error(pick[0], now)
        elif kind == "unsolicited":
            if universe[i] not in infl:
                assert lk.on_response(*universe[i], nodes, now) in (Verdict.UNSOLICITED, Verdict.DONE,
                                                                     Verdict.WRONG_ADDRESS)
        else:
            now += dt
            lk.handle_timer(now)
        assert len(lk._list) <= lk.max_shortlist
        assert lk.queries <= 30
        res = lk.result
        ds = [distance(c[0], TARGET) for c in res.closest]
        assert ds == sorted(ds) and len(ds) <= k
        assert OWN not in [c[0] for c in res.closest]
    # Whatever happened, silence from now on ends the lookup in bounded steps.
    for _ in range(200):
        if lk.done:
            break
        lk.next_queries(now)
        t = lk.get_timer()
        now = t if t is not None else now + 1.0
        lk.handle_timer(now)
    assert lk.done


def test_malformed_responses_are_dropped():
    lk = started()
    q = lk.next_queries(0.0)
    for nid, a in [(q[0][0], (["x"], 1)), ([1], q[0][1]), (q[0][0], None), (b"x", q[0][1]),
                   (q[0][0], (q[0][1][0], 0))]:
        assert lk.on_response(nid, a, [], 0.1) is Verdict.UNSOLICITED
    assert lk.on_response(*q[0], [], 0.1) is Verdict.ACCEPTED


def test_knows_shortlist_and_queried_ids_only():
    lk = started(n=6, k=4, alpha=1)
    assert lk.knows(node(0)[0]) and lk.knows(node(5)[0])
    assert not lk.knows(node(40)[0]) and not lk.knows(OWN)
    [q] = lk.next_queries(0.0)
    lk.on_timeout(q[0], 0.5)  # failed: leaves the shortlist, stays "queried"
    assert lk.knows(q[0])
    # A known id listed again changes nothing, whatever address it comes with.
    [q2] = lk.next_queries(0.5)
    before = lk.result
    assert lk.on_response(*q2, [(node(1)[0], ("10.99.0.1", 1))], 0.6) is Verdict.ACCEPTED
    assert lk.knows(node(1)[0]) and lk.result.queries == before.queries


@settings(max_examples=200, deadline=None)
@given(dists=st.lists(st.integers(1, 2**40), min_size=1, max_size=30, unique=True),
       scores=st.lists(st.sampled_from([0.0, 10.0, 50.0, 50.0, 90.0]), min_size=30, max_size=30),
       k=st.integers(1, 20), alpha=st.integers(1, 6))
def test_next_queries_order_is_log_distance_then_score_then_distance(dists, scores, k, alpha):
    """The scored pick (only the runs that can supply the next queries are scored) gives
    exactly the first ``alpha`` of the full sort of the k closest pending candidates."""
    nodes = [(d.to_bytes(20, "big"), (f"10.1.{i}.1", 6000 + i)) for i, d in enumerate(dists)]
    score_of = {nid: scores[i] for i, (nid, _a) in enumerate(nodes)}
    calls = []

    def score(nid):
        calls.append(nid)
        return score_of[nid]

    lk = Lookup(TARGET, nodes, k, alpha, 0.0, 1.0, own_id=OWN, score=score)
    top = sorted(nodes, key=lambda n: int.from_bytes(n[0], "big"))[:k]
    ref = sorted(top, key=lambda n: (int.from_bytes(n[0], "big").bit_length(), -score_of[n[0]],
                                     int.from_bytes(n[0], "big")))
    assert lk.next_queries(0.0) == ref[:alpha]
    assert len(calls) <= len(top)
