"""Routing-table benchmarks: ``closest()`` and ``add_or_update`` against the peer
``kademlia`` package (bmuller, PyPI ``kademlia``) and a brute-force sort, same node set,
same session.  Note the peer's ``find_neighbors`` is approximate (it stops after
traversing k nodes); ours is exact (tests compare it to brute force).

Run: ``PYTHONPATH=. python -m pytest benches/bench_routing.py -q --benchmark-min-rounds=5``
"""
from __future__ import annotations

import asyncio
import hashlib

import pytest

from qudag_core.krpc.routing import RoutingConfig, RoutingTable

kademlia_routing = pytest.importorskip("kademlia.routing")
kademlia_node = pytest.importorskip("kademlia.node")

N_INSERT = 4000
K = 20


def ids(n: int, seed: bytes) -> list[bytes]:
    return [hashlib.sha1(seed + i.to_bytes(4, "big")).digest() for i in range(n)]


OWN = hashlib.sha1(b"own").digest()
NODES = ids(N_INSERT, b"n")
ADDRS = [(f"10.{(i >> 8) & 255}.{i & 255}.1", 6881) for i in range(N_INSERT)]
TARGETS = ids(64, b"t")


class _PeerProtocol:
    """The peer table pings a full bucket's head through its protocol; answer with a
    finished future so no event loop is needed."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def call_ping(self, node):
        f = self.loop.create_future()
        f.set_result(None)
        return f


def build_ours() -> RoutingTable:
    t = RoutingTable(OWN, config=RoutingConfig(k=K))
    for nid, a in zip(NODES, ADDRS):
        t.add_or_update(nid, a, 0.0, responded=True)
    return t


def build_peer():
    proto = _PeerProtocol()
    t = kademlia_routing.RoutingTable(proto, K, kademlia_node.Node(OWN))
    for nid, (h, p) in zip(NODES, ADDRS):
        t.add_contact(kademlia_node.Node(nid, h, p))
    return t, proto


@pytest.mark.benchmark(group="routing-insert")
def test_insert_ours(benchmark):
    t = benchmark.pedantic(build_ours, rounds=3, iterations=1)
    assert len(t) > 100


@pytest.mark.benchmark(group="routing-insert")
def test_insert_peer_kademlia(benchmark):
    t, proto = benchmark.pedantic(build_peer, rounds=3, iterations=1)
    proto.loop.close()
    assert sum(len(b) for b in t.buckets) > 100


@pytest.mark.benchmark(group="routing-closest")
def test_closest_ours(benchmark):
    t = build_ours()

    def run():
        return [t.closest(x, K) for x in TARGETS]

    out = benchmark(run)
    assert all(len(r) == K for r in out)


@pytest.mark.benchmark(group="routing-closest")
def test_closest_peer_kademlia(benchmark):
    t, proto = build_peer()
    targets = [kademlia_node.Node(x) for x in TARGETS]

    def run():
        return [t.find_neighbors(x, K) for x in targets]

    out = benchmark(run)
    proto.loop.close()
    assert all(len(r) == K for r in out)


@pytest.mark.benchmark(group="routing-closest")
def test_closest_brute_force_sort(benchmark):
    t = build_ours()
    everyone = [(int.from_bytes(n.node_id, "big"), n) for n in t]

    def run():
        out = []
        for x in TARGETS:
            xi = int.from_bytes(x, "big")
            out.append([n for _, n in sorted(everyone, key=lambda e: e[0] ^ xi)[:K]])
        return out

    out = benchmark(run)
    assert out[0] == t.closest(TARGETS[0], K)
