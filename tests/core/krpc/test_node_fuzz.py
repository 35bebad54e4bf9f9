"""Hypothesis fuzzing of KrpcNode's receive path: arbitrary bytes, mutated valid KRPC
messages and valid-but-hostile messages from many sources only ever lead to declared
handling (a reply, an error reply or a drop), never an exception, and state stays
bounded."""
from __future__ import annotations

import hashlib

from hypothesis import HealthCheck, given, settings, strategies as st

from qudag_core.krpc import bencode
from qudag_core.krpc import messages as M
from qudag_core.krpc.node import KrpcNode, NodeConfig


class Rng:
    def __init__(self, seed: bytes = b"fuzz") -> None:
        self.seed, self.n = seed, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.n += 1
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
        return out[:n]


SMALL = NodeConfig(max_pending=64, max_new_node_pings=4, max_infohashes=8, max_peers_per_infohash=4,
                   max_outgoing=256)

ids = st.binary(min_size=20, max_size=20)
tids = st.binary(min_size=1, max_size=4)
addrs = st.tuples(st.sampled_from(["127.0.0.1", "10.0.0.2", "8.8.8.8", "::1", "2001:db8::1", "bogus", ""]),
                  st.integers(min_value=-1, max_value=70000))


def valid_messages():
    return st.one_of(
        st.builds(M.Ping, transaction_id=tids, node_id=ids),
        st.builds(M.FindNode, transaction_id=tids, node_id=ids, target=ids),
        st.builds(M.GetPeers, transaction_id=tids, node_id=ids, info_hash=ids),
        st.builds(M.AnnouncePeer, transaction_id=tids, node_id=ids, info_hash=ids,
                  port=st.integers(1, 65535), token=st.binary(min_size=1, max_size=12)),
        st.builds(M.Get, transaction_id=tids, node_id=ids, target=ids),
        st.builds(M.Put, transaction_id=tids, node_id=ids, token=st.binary(min_size=1, max_size=12),
                  value=st.binary(max_size=40).map(bencode.encode)),
        st.builds(M.Put, transaction_id=tids, node_id=ids, token=st.binary(min_size=1, max_size=12),
                  value=st.binary(max_size=40).map(bencode.encode), key=st.binary(min_size=32, max_size=32),
                  signature=st.binary(min_size=64, max_size=64), seq=st.integers(0, 2**63 - 1)),
        st.builds(M.Response, transaction_id=tids, node_id=ids),
        st.builds(M.Error, transaction_id=tids, code=st.integers(0, 1000), message=st.binary(max_size=20)),
    ).map(lambda m: m.encode())


def mutate(data: bytes, edits) -> bytes:
    b = bytearray(data)
    for pos, val in edits:
        if b:
            b[pos % len(b)] = val
    return bytes(b)


def drive(node: KrpcNode, data: bytes, addr, now: float) -> None:
    node.receive_datagram(data, addr, now)
    for out, dst in node.datagrams_to_send(now):
        assert len(out) <= M.DATAGRAM_BUDGET
        M.parse_message(out)  # everything we send parses
    node.pop_events()
    t = node.get_timer()
    if t is not None and t <= now:
        node.handle_timer(now)


def check_bounded(node: KrpcNode) -> None:
    c = node.config
    assert len(node._pending) <= c.max_pending
    assert len(node._new_pings) <= c.max_new_node_pings
    assert len(node._pinged) <= 4096 and len(node._ops) <= c.max_pending + 16
    assert len(node._peers) <= c.max_infohashes
    assert all(len(p) <= c.max_peers_per_infohash for p in node._peers.values())
    assert len(node._heap) <= 4 * c.max_pending + 64 or not node._pending


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.binary(max_size=200), valid_messages(),
                                    st.tuples(valid_messages(), st.lists(st.tuples(st.integers(0, 500),
                                                                                   st.integers(0, 255)),
                                                                         max_size=4)).map(lambda x: mutate(*x))),
                          addrs), max_size=30))
def test_arbitrary_datagrams_only_declared_handling(items):
    node = KrpcNode(b"\x01" * 20, rng=Rng(), now=0.0, config=SMALL)
    now = 0.0
    for data, addr in items:
        now += 0.01
        drive(node, data, addr, now)
    check_bounded(node)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(valid_messages(), st.integers(0, 255)), min_size=50, max_size=200))
def test_many_sources_stay_bounded(items):
    node = KrpcNode(b"\x02" * 20, rng=Rng(b"b"), now=0.0, config=SMALL)
    now = 0.0
    for i, (data, last) in enumerate(items):
        now += 0.5
        drive(node, data, (f"10.{i % 200}.{last}.1", 1000 + i), now)
    check_bounded(node)


@settings(max_examples=60, deadline=None)
@given(st.lists(valid_messages(), max_size=20), st.lists(ids, min_size=1, max_size=5))
def test_replies_to_our_lookups_fuzzed(bodies, targets):
    """Replies matched to our own in-flight queries (right tid, right address) with
    arbitrary content: the lookup either uses them or fails the node; no exception."""
    node = KrpcNode(b"\x03" * 20, rng=Rng(b"c"), now=0.0, config=SMALL)
    for i in range(10):
        node.table.add_or_update(bytes([i + 10]) * 20, ("127.0.0.1", 2000 + i), 0.0, responded=True)
    for t in targets:
        node.find_node(t, 0.0)
        node.get(t, 0.0)
    sent = node.datagrams_to_send(0.0)
    now = 0.0
    for (data, dst), body in zip(sent, bodies):
        q = M.parse_message(data)
        raw = bencode.decode(body)
        raw[b"t"] = q.transaction_id
        now += 0.01
        drive(node, bencode.encode(raw), dst, now)
    node.handle_timer(now + 100)
    node.pop_events()
    check_bounded(node)
