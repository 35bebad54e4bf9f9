"""Routing-table invariants under random operation sequences (Hypothesis state machine):
never more than k per bucket, diversity limits hold, good nodes are never evicted by
newcomers, our own id is never inserted, closest() equals brute force."""
from __future__ import annotations

import hashlib

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qudag_core.krpc.routing import (
    DiversityConfig,
    NodeState,
    RoutingConfig,
    RoutingTable,
    address_prefix,
    distance,
)

OWN = hashlib.sha1(b"own").digest()
CFG = RoutingConfig(k=3, replacement_cache_size=2, ping_interval=5.0,
                    diversity=DiversityConfig(per_bucket=2, per_table=4))


def _ids() -> list[bytes]:
    t = RoutingTable(OWN)
    out = []
    for i in range(48):
        b = i % 6  # crowd a few buckets so they fill up
        out.append(t.random_id_in_bucket(b, lambda n, i=i: hashlib.sha256(b"id%d" % i).digest()[:n]))
    return out


IDS = _ids() + [OWN]
ADDRS = [(f"198.51.{p}.{h}", 4000 + h) for p in range(4) for h in range(1, 9)] + [("2001:db8:7::1", 1)]


class RoutingMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.t = RoutingTable(OWN, config=CFG, now=0.0)
        self.now = 0.0
        self.pending_pings: set[bytes] = set()

    def good_ids(self) -> set[bytes]:
        return {n.node_id for n in self.t if n.state(self.now, CFG) is NodeState.GOOD}

    @rule(i=st.sampled_from(range(len(IDS))), a=st.sampled_from(ADDRS), responded=st.booleans(),
          queried=st.booleans())
    def add(self, i, a, responded, queried):
        before = self.good_ids()
        r = self.t.add_or_update(IDS[i], a, self.now, responded=responded, queried_us=queried)
        after = {n.node_id for n in self.t}
        assert before <= after, "a good node was evicted by a newcomer"
        for pid, paddr in r.pings:
            node = self.t.get(pid)
            assert node is not None and node.addr == paddr
            assert node.state(self.now, CFG) is NodeState.QUESTIONABLE
            self.pending_pings.add(pid)

    @rule(i=st.sampled_from(range(len(IDS))))
    def fail(self, i):
        self.t.mark_failed(IDS[i], self.now)

    @rule(i=st.sampled_from(range(len(IDS))))
    def remove(self, i):
        present = IDS[i] in self.t
        removed = self.t.remove(IDS[i], self.now)
        assert IDS[i] not in self.t
        assert removed or not present

    @rule(dt=st.sampled_from([0.5, 10.0, 300.0, 901.0]))
    def tick(self, dt):
        self.now += dt

    @precondition(lambda self: len(self.t) > 0)
    @rule(goal=st.binary(min_size=20, max_size=20), count=st.integers(0, 10))
    def closest(self, goal, count):
        got = [n.node_id for n in self.t.closest(goal, count)]
        live = [n.node_id for n in self.t if n.failures < CFG.bad_after_failures]
        assert got == sorted(live, key=lambda x: distance(x, goal))[:count]

    @rule(seed=st.binary(min_size=1, max_size=4))
    def refresh(self, seed):
        ctr = [0]

        def rng(n):
            ctr[0] += 1
            return hashlib.sha256(seed + bytes([ctr[0] & 255])).digest()[:n]

        for target in self.t.due_refreshes(self.now, rng):
            assert 0 <= self.t.bucket_index(target) < 160

    @invariant()
    def structure(self):
        nodes = list(self.t)
        assert len(nodes) == len(self.t) == len({n.node_id for n in nodes})
        assert OWN not in self.t
        assert len({n.addr for n in nodes}) == len(nodes)
        per_bucket: dict = {}
        per_table: dict = {}
        for n in nodes:
            b = self.t.bucket_index(n.node_id)
            p = address_prefix(n.addr[0], CFG.diversity)
            per_bucket[(b, p)] = per_bucket.get((b, p), 0) + 1
            per_table[p] = per_table.get(p, 0) + 1
        assert all(v <= CFG.diversity.per_bucket for v in per_bucket.values())
        assert all(v <= CFG.diversity.per_table for v in per_table.values())
        assert all(v <= CFG.k for v in self.t.bucket_sizes().values())
        assert {p: c for p, c in per_table.items()} == self.t.prefix_counts()
        for b in self.t.bucket_sizes():
            reps = self.t.replacement_ids(b)
            assert len(reps) <= CFG.replacement_cache_size
            assert not set(reps) & {n.node_id for n in nodes}


RoutingMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestRoutingMachine = RoutingMachine.TestCase
