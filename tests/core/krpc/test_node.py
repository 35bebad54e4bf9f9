"""KrpcNode (sans-IO) driven by an in-memory datagram network with a virtual clock:
BEP 5 queries and errors, BEP 44 put/get rules, trust rules for replies, bootstrap and
lookups over a simulated network."""
from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qudag_core.krpc import bencode
from qudag_core.krpc import messages as M
from qudag_core.krpc.errors import KrpcErrorCode
from qudag_core.krpc.node import KrpcNode, NodeConfig
from qudag_core.krpc.node_events import (BootstrapDone, FindNodeResult, GetPeersResult, GetResult,
                                         OperationDone, PingResult, PutResult)
from qudag_core.krpc.routing import DiversityConfig, RoutingConfig


class Rng:
    def __init__(self, seed: bytes) -> None:
        self.seed, self.n = seed, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            self.n += 1
            out += hashlib.sha256(self.seed + self.n.to_bytes(8, "big")).digest()
        return out[:n]


LOOP_CFG = NodeConfig(query_timeout=1.0, routing=RoutingConfig(k=8, diversity=DiversityConfig(enabled=False)))


class Net:
    """N nodes on 127.0.0.1:<port>, a virtual clock and in-order delivery; ``dead``
    addresses swallow datagrams."""

    def __init__(self, n: int, seed: bytes = b"net", config: NodeConfig = LOOP_CFG) -> None:
        self.now = 0.0
        self.rng = Rng(seed)
        self.nodes = {}
        self.dead = set()
        self.events = {}
        for i in range(n):
            addr = ("127.0.0.1", 10000 + i)
            self.nodes[addr] = KrpcNode(self.rng(20), rng=Rng(seed + bytes([i % 256, i // 256])), now=0.0,
                                        config=config)
            self.events[addr] = []

    def addrs(self):
        return list(self.nodes)

    def deliver(self, max_rounds: int = 100000) -> int:
        moved = 0
        for _ in range(max_rounds):
            batch = []
            for src, node in self.nodes.items():
                for data, dst in node.datagrams_to_send(self.now):
                    batch.append((src, data, dst))
            if not batch:
                break
            for src, data, dst in batch:
                moved += 1
                if dst in self.dead or src in self.dead or dst not in self.nodes:
                    continue
                self.nodes[dst].receive_datagram(data, src, self.now)
        self.collect()
        return moved

    def collect(self):
        for a, node in self.nodes.items():
            self.events[a].extend(node.pop_events())

    def run(self, seconds: float, step: float = 0.25) -> None:
        end = self.now + seconds
        while self.now < end:
            self.deliver()
            self.now += step
            for a, node in self.nodes.items():
                if a in self.dead:
                    continue
                t = node.get_timer()
                if t is not None and t <= self.now:
                    node.handle_timer(self.now)
            self.deliver()

    def done(self, addr, op_id):
        for e in self.events[addr]:
            if isinstance(e, OperationDone) and e.op_id == op_id:
                return e
        return None

    def bootstrap_all(self):
        first = self.addrs()[0]
        for a, node in self.nodes.items():
            if a != first:
                node.bootstrap(self.now, (first,))
                self.deliver()
        self.run(3.0)
        # a second round lets early nodes learn about later ones
        for a, node in self.nodes.items():
            node.find_node(node.node_id, self.now)
        self.run(3.0)


def query(node: KrpcNode, data: bytes, src=("127.0.0.9", 4000), now: float = 0.0):
    node.receive_datagram(data, src, now)
    out = node.datagrams_to_send(now)
    msgs = [M.parse_message(d) for d, a in out if a == src]
    return [m for m in msgs if isinstance(m, (M.Response, M.Error))]  # not our pings of the querier


def fresh(seed=b"x", **kw) -> KrpcNode:
    return KrpcNode(Rng(seed)(20), rng=Rng(seed), now=0.0, config=NodeConfig(**kw))


OTHER = b"\x55" * 20


def test_ping_reply_carries_id_version_and_ip():
    n = fresh()
    [r] = query(n, M.Ping(transaction_id=b"aa", node_id=OTHER).encode())
    assert isinstance(r, M.Response) and r.transaction_id == b"aa" and r.node_id == n.node_id
    assert r.client_version == b"QD\x00\x01"
    assert r.ip == M.PeerAddr(ip=bytes([127, 0, 0, 9]), port=4000)  # BEP 42 "ip"


def test_unknown_method_204_and_malformed_203():
    n = fresh()
    [r] = query(n, b"d1:ad2:id20:" + OTHER + b"e1:q6:frobne1:t2:xy1:y1:qe")
    assert isinstance(r, M.Error) and r.code == KrpcErrorCode.METHOD_UNKNOWN and r.transaction_id == b"xy"
    # find_node without target: malformed arguments
    [r] = query(n, b"d1:ad2:id20:" + OTHER + b"e1:q9:find_node1:t2:zz1:y1:qe")
    assert isinstance(r, M.Error) and r.code == KrpcErrorCode.PROTOCOL and r.transaction_id == b"zz"
    # not bencode at all: no transaction id to answer to, dropped
    assert query(n, b"garbage") == []


def test_unknown_keys_ignored():
    n = fresh()
    [r] = query(n, b"d1:ad2:id20:" + OTHER + b"3:zzzi1ee1:q4:ping1:t2:ab1:y1:q3:zzz3:fooe")
    assert isinstance(r, M.Response)


def test_get_peers_token_and_announce_rules():
    n = fresh()
    ih = b"\x11" * 20
    [r] = query(n, M.GetPeers(transaction_id=b"g1", node_id=OTHER, info_hash=ih).encode())
    assert r.token and r.values is None and r.nodes is not None
    bad = M.AnnouncePeer(transaction_id=b"a1", node_id=OTHER, info_hash=ih, port=6881, token=b"nope")
    [e] = query(n, bad.encode())
    assert isinstance(e, M.Error) and e.code == KrpcErrorCode.PROTOCOL
    # a token is bound to the requester's IP
    [e] = query(n, M.AnnouncePeer(transaction_id=b"a2", node_id=OTHER, info_hash=ih, port=6881,
                                  token=r.token).encode(), src=("127.0.0.10", 4000))
    assert isinstance(e, M.Error)
    [ok] = query(n, M.AnnouncePeer(transaction_id=b"a3", node_id=OTHER, info_hash=ih, port=6881,
                                   token=r.token).encode())
    assert isinstance(ok, M.Response)
    [ok] = query(n, M.AnnouncePeer(transaction_id=b"a4", node_id=OTHER, info_hash=ih, port=1, implied_port=1,
                                   token=r.token).encode())
    [r2] = query(n, M.GetPeers(transaction_id=b"g2", node_id=OTHER, info_hash=ih).encode())
    assert {(p.host, p.port) for p in r2.values} == {("127.0.0.9", 6881), ("127.0.0.9", 4000)}


def _token(n, target, src=("127.0.0.9", 4000)):
    [r] = query(n, M.Get(transaction_id=b"t0", node_id=OTHER, target=target).encode(), src=src)
    return r.token


def test_bep44_immutable_put_get():
    n = fresh()
    v = bencode.encode(b"Hello World!")
    target = M.immutable_target(v)
    # BEP 44 test vector: target of "Hello World!"
    assert target.hex() == "e5f96f6f38320f0f33959cb4d3d656452117aadb"
    [ok] = query(n, M.Put(transaction_id=b"p1", node_id=OTHER, token=_token(n, target), value=v).encode())
    assert isinstance(ok, M.Response)
    [r] = query(n, M.Get(transaction_id=b"g1", node_id=OTHER, target=target).encode())
    assert r.value == v and r.key is None


def test_bep44_mutable_signature_seq_and_cas():
    n = fresh()
    sk = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
    pk = sk.public_key().public_bytes_raw()
    salt = b"foobar"
    target = M.mutable_target(pk, salt)

    def put(v, seq, sig=None, cas=None, tid=b"p"):
        v = bencode.encode(v)
        sig = sig or M.sign_mutable(sk, v, seq, salt)
        [r] = query(n, M.Put(transaction_id=tid, node_id=OTHER, token=_token(n, target), value=v, key=pk,
                             signature=sig, seq=seq, salt=salt, cas=cas).encode())
        return r

    assert isinstance(put(b"one", 1), M.Response)
    e = put(b"two", 2, sig=b"\x00" * 64)
    assert isinstance(e, M.Error) and e.code == KrpcErrorCode.INVALID_SIGNATURE
    e = put(b"zero", 0)
    assert isinstance(e, M.Error) and e.code == KrpcErrorCode.SEQ_LESS_THAN_CURRENT
    e = put(b"three", 3, cas=7)
    assert isinstance(e, M.Error) and e.code == KrpcErrorCode.CAS_MISMATCH
    assert isinstance(put(b"three", 3, cas=1), M.Response)
    [r] = query(n, M.Get(transaction_id=b"g", node_id=OTHER, target=target).encode())
    assert r.value == bencode.encode(b"three") and r.seq == 3 and r.key == pk
    M.verify_mutable(pk, r.signature, r.value, r.seq, salt)
    # seq filter: nothing newer than 3 -> no value
    [r] = query(n, M.Get(transaction_id=b"g", node_id=OTHER, target=target, seq=3).encode())
    assert r.value is None and r.seq == 3


def test_channel_only_methods_refused_over_udp():
    n = fresh()
    q = M.QdGet(transaction_id=b"q", node_id=OTHER, target=b"\x01" * 20, record_type=1)
    [e] = query(n, q.encode())
    assert isinstance(e, M.Error) and e.code == KrpcErrorCode.PROTOCOL


def test_queries_from_own_id_dropped_and_querier_pinged_not_inserted():
    n = fresh()
    assert query(n, M.Ping(transaction_id=b"a", node_id=n.node_id).encode()) == []
    src = ("127.0.0.9", 4000)
    n.receive_datagram(M.Ping(transaction_id=b"b", node_id=OTHER).encode(), src, 0.0)
    out = n.datagrams_to_send(0.0)
    msgs = [M.parse_message(d) for d, a in out]
    assert any(isinstance(m, M.Ping) for m in msgs)  # we ping the newcomer ...
    assert OTHER not in n.table  # ... and only its answer would insert it
    ping = next(m for m in msgs if isinstance(m, M.Ping))
    n.receive_datagram(M.Response(transaction_id=ping.transaction_id, node_id=OTHER).encode(), src, 0.1)
    assert OTHER in n.table


def _pinged(n, addr, now=0.0):
    op = n.ping(addr, now)
    [(data, a)] = n.datagrams_to_send(now)
    return op, M.parse_message(data)


def test_reply_trust_rules():
    n = fresh()
    addr = ("127.0.0.5", 5000)
    # unknown transaction id: dropped
    n.receive_datagram(M.Response(transaction_id=b"zzzz", node_id=OTHER).encode(), addr, 0.0)
    assert n.pop_events() == [] and n.datagrams_to_send(0.0) == []
    # right tid from another address: dropped, the query stays pending
    op, q = _pinged(n, addr)
    n.receive_datagram(M.Response(transaction_id=q.transaction_id, node_id=OTHER).encode(), ("127.0.0.6", 5000), 0.1)
    assert n.pop_events() == []
    n.receive_datagram(M.Response(transaction_id=q.transaction_id, node_id=OTHER).encode(), addr, 0.2)
    [ev] = n.pop_events()
    assert ev.op_id == op and ev.ok and isinstance(ev.result, PingResult) and ev.result.node_id == OTHER
    # echoing our own id: the query fails
    op, q = _pinged(n, addr)
    n.receive_datagram(M.Response(transaction_id=q.transaction_id, node_id=n.node_id).encode(), addr, 0.3)
    [ev] = n.pop_events()
    assert ev.op_id == op and not ev.ok
    # timeout
    op, q = _pinged(n, addr, now=1.0)
    assert n.get_timer() == pytest.approx(1.0 + n.config.query_timeout)
    n.handle_timer(1.0 + n.config.query_timeout)
    [ev] = n.pop_events()
    assert not ev.ok and ev.error == "timeout"


def test_wrong_node_id_in_lookup_reply_fails_that_node():
    n = fresh()
    nid = b"\x77" * 20
    addr = ("127.0.0.5", 5000)
    n.table.add_or_update(nid, addr, 0.0, responded=True)
    op = n.find_node(b"\x00" * 20, 0.0)
    [(data, a)] = n.datagrams_to_send(0.0)
    q = M.parse_message(data)
    n.receive_datagram(M.Response(transaction_id=q.transaction_id, node_id=b"\x78" * 20).encode(), addr, 0.1)
    [ev] = n.pop_events()
    assert ev.op_id == op and not ev.ok
    assert b"\x78" * 20 not in n.table


def test_datagrams_within_budget():
    n = fresh()
    rng = Rng(b"fill")
    for i in range(200):
        n.table.add_or_update(rng(20), (f"10.{i}.1.1", 6881), 0.0, responded=True)
    ih = b"\x22" * 20
    tok = _token(n, ih)
    for i in range(150):
        query(n, M.AnnouncePeer(transaction_id=b"a", node_id=OTHER, info_hash=ih, port=1000 + i,
                                token=tok).encode())
    n.receive_datagram(M.GetPeers(transaction_id=b"g", node_id=OTHER, info_hash=ih).encode(), ("127.0.0.9", 4000), 0.0)
    out = n.datagrams_to_send(0.0)
    assert out and all(len(d) <= 1400 for d, _ in out)
    r = M.parse_message(out[0][0])
    assert len(r.values) == n.config.max_values_per_reply and len(r.nodes) == n.config.k == 20


def test_network_bootstrap_lookups_and_storage():
    net = Net(30)
    net.bootstrap_all()
    assert all(len(nd.table) >= 8 for nd in net.nodes.values())
    assert any(isinstance(e, BootstrapDone) for evs in net.events.values() for e in evs)
    addrs = net.addrs()
    a, b = addrs[3], addrs[17]
    # find_node converges on the true closest nodes
    target = net.rng(20)
    op = net.nodes[a].find_node(target, net.now)
    net.run(2.0)
    ev = net.done(a, op)
    truth = sorted((nd.node_id for nd in net.nodes.values()), key=lambda i: int.from_bytes(i, "big") ^ int.from_bytes(target, "big"))
    assert isinstance(ev.result, FindNodeResult) and [x[0] for x in ev.result.nodes][:8] == truth[:8]
    # immutable put from a, get from b
    op, tgt = net.nodes[a].put_immutable(bencode.encode(b"value"), net.now)
    net.run(2.0)
    assert isinstance(net.done(a, op).result, PutResult) and net.done(a, op).result.stored >= 6
    sent0 = net.nodes[b].stats["sent"]
    op = net.nodes[b].get(tgt, net.now)
    net.run(2.0)
    r = net.done(b, op).result
    # quorum 1: the first verified immutable item ends the lookup (BEP 44; libtorrent too)
    assert isinstance(r, GetResult) and r.value == bencode.encode(b"value") and r.agreement == 1
    early = net.nodes[b].stats["sent"] - sent0
    # quorum reads run the whole lookup and count agreeing nodes
    sent0 = net.nodes[b].stats["sent"]
    op = net.nodes[b].get(tgt, net.now, quorum=3)
    net.run(2.0)
    assert net.nodes[b].stats["sent"] - sent0 > early
    r = net.done(b, op).result
    assert r.value == bencode.encode(b"value") and r.agreement >= 3
    # asking for more agreeing nodes than hold it gives no value
    op = net.nodes[b].get(tgt, net.now, quorum=r.agreement + 1)
    net.run(2.0)
    r2 = net.done(b, op).result
    assert r2.value is None and r2.agreement == r.agreement
    # mutable
    sk = Ed25519PrivateKey.from_private_bytes(b"\x09" * 32)
    pk = sk.public_key().public_bytes_raw()
    v = bencode.encode([1, b"x"])
    op, tgt = net.nodes[a].put_mutable(v, key=pk, signature=M.sign_mutable(sk, v, 5, b"s"), seq=5, salt=b"s", now=net.now)
    net.run(2.0)
    assert net.done(a, op).ok
    op = net.nodes[b].get(tgt, net.now, salt=b"s")
    net.run(2.0)
    r = net.done(b, op).result
    assert r.value == v and r.seq == 5 and r.key == pk
    # announce + get_peers
    ih = net.rng(20)
    op = net.nodes[a].announce(ih, 7000, net.now)
    net.run(2.0)
    assert net.done(a, op).result.stored >= 6
    op = net.nodes[b].get_peers(ih, net.now)
    net.run(2.0)
    r = net.done(b, op).result
    assert isinstance(r, GetPeersResult) and ("127.0.0.1", 7000) in r.peers


def test_lookups_survive_dead_nodes():
    net = Net(30, seed=b"dead")
    net.bootstrap_all()
    addrs = net.addrs()
    op, tgt = net.nodes[addrs[1]].put_immutable(bencode.encode(b"persist"), net.now)
    net.run(2.0)
    for a in addrs[20:26]:
        net.dead.add(a)
    ok = 0
    for i in range(5):
        op = net.nodes[addrs[2 + i]].get(tgt, net.now)
        net.run(6.0)
        ev = net.done(addrs[2 + i], op)
        ok += ev is not None and ev.result.value == bencode.encode(b"persist")
    assert ok == 5


def test_republish_after_12h_and_expiry_after_24h():
    net = Net(12, seed=b"repub")
    net.bootstrap_all()
    a = net.addrs()[0]
    op, tgt = net.nodes[a].put_immutable(bencode.encode(b"r"), net.now)
    net.run(2.0)
    holders = [x for x, nd in net.nodes.items() if x != a and nd.store.get(tgt, net.now) is not None]
    assert holders
    # jump 13 h: the origin republishes (local records), which refreshes the holders
    net.now += 13 * 3600
    net.run(3.0)
    assert all(net.nodes[x].store.get(tgt, net.now) is not None for x in holders)


def test_bep42_public_querier_with_wrong_id_is_answered_but_not_pinged():
    from qudag_core.krpc import bep42

    n = fresh()
    src = ("8.8.8.8", 6881)
    n.receive_datagram(M.Ping(transaction_id=b"a", node_id=b"\x00" * 20).encode(), src, 0.0)
    msgs = [M.parse_message(d) for d, _ in n.datagrams_to_send(0.0)]
    assert [type(m) for m in msgs] == [M.Response]  # answered, not pinged: id breaks BEP 42
    good = bep42.generate_node_id("8.8.8.8", Rng(b"42"))
    assert bep42.is_valid_node_id(good, "8.8.8.8")
    n.receive_datagram(M.Ping(transaction_id=b"b", node_id=good).encode(), src, 0.0)
    msgs = [M.parse_message(d) for d, _ in n.datagrams_to_send(0.0)]
    assert any(isinstance(m, M.Ping) for m in msgs)


def test_bucket_refresh_runs_lookups_after_15_minutes():
    n = fresh()
    rng = Rng(b"r")
    for i in range(5):
        n.table.add_or_update(rng(20), (f"10.{i}.0.1", 6881), 0.0, responded=True)
    n.handle_timer(1.0)
    assert not [d for d, _ in n.datagrams_to_send(1.0)]
    n.handle_timer(16 * 60.0)
    sent = [M.parse_message(d) for d, _ in n.datagrams_to_send(16 * 60.0)]
    assert sent and all(isinstance(m, M.FindNode) for m in sent)


def test_newcomer_pinged_once_per_interval():
    n = fresh()
    src = ("127.0.0.9", 4000)
    pings = 0
    for i in range(5):
        n.receive_datagram(M.Ping(transaction_id=b"x%d" % i, node_id=OTHER).encode(), src, float(i * 3))
        n.handle_timer(float(i * 3))
        pings += sum(isinstance(M.parse_message(d), M.Ping) for d, _ in n.datagrams_to_send(float(i * 3)))
    assert pings == 1


def _find_node_queries(out):
    qs = []
    for data, addr in out:
        m = M.parse_message(data)
        if isinstance(m, M.FindNode):
            qs.append((m, addr))
    return qs


def test_lookup_sends_next_query_as_soon_as_a_reply_arrives():
    """No timer between a reply and the next query: the reply that frees an alpha slot
    puts the next find_node in ``datagrams_to_send`` within the same call, at the same
    ``now``, and nothing is due on the timer."""
    n = fresh(b"eager")
    rng = Rng(b"peers")
    peers = [(rng(20), (f"10.{i}.0.1", 6881)) for i in range(8)]
    for nid, a in peers:
        n.table.add_or_update(nid, a, 0.0, responded=True)
    n.find_node(b"\x00" * 20, 1.0)
    first = _find_node_queries(n.datagrams_to_send(1.0))
    assert len(first) == n.config.alpha
    q, addr = first[0]
    rid = next(nid for nid, a in peers if a == addr)
    n.receive_datagram(M.Response(transaction_id=q.transaction_id, node_id=rid).encode(), addr, 1.0)
    out = n.datagrams_to_send(1.0)
    nxt = _find_node_queries(out)
    assert len(nxt) == 1 and nxt[0][1] not in {a for _q, a in first}
    assert n.get_timer() > 1.0  # nothing waits on the clock
    # Lookup queries are encoded once around the transaction id: byte for byte the
    # message's own encoding.
    for data, _a in out:
        q2 = M.parse_message(data)
        assert data == M.FindNode(transaction_id=q2.transaction_id, client_version=n.config.client_version,
                                  node_id=n.node_id, target=b"\x00" * 20).encode()


def test_transaction_ids_are_fresh_rng_bytes():
    """Transaction ids are consecutive 4-byte slices of the node's rng output (drawn in
    blocks), all distinct across many queries in flight."""
    drawn = []

    class Recording(Rng):
        def __call__(self, k: int) -> bytes:
            out = super().__call__(k)
            drawn.append(out)
            return out

    n = KrpcNode(b"\x01" * 20, rng=Recording(b"tids"), now=0.0)
    drawn.clear()
    for i in range(300):
        n.ping((f"10.{i % 200}.{i // 200}.1", 7000), 0.0)
    tids = [M.parse_message(d).transaction_id for d, _a in n.datagrams_to_send(0.0)]
    assert len(tids) == 300 and len(set(tids)) == 300 and all(len(t) == 4 for t in tids)
    pool = b"".join(drawn)
    assert b"".join(tids) == pool[:4 * 300]


def test_lookup_considers_only_the_capped_part_of_a_long_reply():
    """A reply listing more nodes than the lookup's cap (2k): only the first 2k entries
    can become candidates, whether or not the lookup knew some of them already."""
    n = fresh(b"cap", k=2, alpha=1)
    nid, addr = b"\x40" * 20, ("10.1.0.1", 6881)
    n.table.add_or_update(nid, addr, 0.0, responded=True)
    n.find_node(b"\x00" * 20, 0.0)
    [(q, a)] = _find_node_queries(n.datagrams_to_send(0.0))
    # Listed farthest first: the entries past the cap are the closest to the target, so
    # the lookup would query them if it looked at them.
    listed = [M.NodeInfo(node_id=bytes([0, 10 - i]) + bytes(18), ip=bytes([10, 2, i, 1]), port=6881)
              for i in range(10)]
    listed.insert(1, M.NodeInfo(node_id=nid, ip=bytes([10, 1, 0, 1]), port=6881))  # known: counts too
    n.receive_datagram(M.Response(transaction_id=q.transaction_id, node_id=nid, nodes=tuple(listed)).encode(),
                       addr, 0.1)
    allowed = {("10.2.%d.1" % x.ip[2], 6881) for x in listed[:4] if x.node_id != nid}
    asked = set()
    for _ in range(20):
        out = _find_node_queries(n.datagrams_to_send(0.2))
        if not out:
            break
        for q2, a2 in out:
            asked.add(a2)
            n.receive_datagram(M.Response(transaction_id=q2.transaction_id,
                                          node_id=next(x.node_id for x in listed
                                                       if ("10.2.%d.1" % x.ip[2], 6881) == a2)).encode(), a2, 0.2)
    assert asked and asked <= allowed


# ---- BEP 43 read-only nodes -----------------------------------------------------------

RO_CFG = NodeConfig(query_timeout=1.0, read_only=True,
                    routing=RoutingConfig(k=8, diversity=DiversityConfig(enabled=False)))


def test_read_only_node_flags_its_queries_and_answers_nothing():
    # BEP 43 "Read-Only State": 'ro' = 1 on each outgoing query; no reply to any query.
    n = fresh(read_only=True)
    n.ping(("127.0.0.5", 5000), 0.0)
    [(data, _)] = n.datagrams_to_send(0.0)
    q = M.parse_message(data)
    assert isinstance(q, M.Ping) and q.read_only and b"2:roi1e" in data
    for bad in (M.Ping(transaction_id=b"aa", node_id=OTHER).encode(),
                M.FindNode(transaction_id=b"ab", node_id=OTHER, target=OTHER).encode(),
                b"d1:ad2:id20:" + OTHER + b"e1:q6:frobne1:t2:xy1:y1:qe",       # unknown method: no 204
                b"d1:ad2:id20:" + OTHER + b"e1:q9:find_node1:t2:zz1:y1:qe"):   # malformed: no 203
        n.receive_datagram(bad, ("127.0.0.9", 4000), 0.0)
        assert n.datagrams_to_send(0.0) == []
    assert n.stats["dropped_read_only"] == 4 and n.stats["queries_answered"] == 0
    assert OTHER not in n.table and len(n.table) == 0
    # over a link too: nothing answered
    assert n.receive_link_message(M.Ping(transaction_id=b"l", node_id=OTHER).encode(), ("127.0.0.9", 4000), 0.0) is None
    # its lookup queries (the encoded-once template) carry the flag as well
    n.table.add_or_update(b"\x77" * 20, ("127.0.0.5", 5000), 0.0, responded=True)
    n.find_node(b"\x00" * 20, 0.0)
    [(data, _)] = n.datagrams_to_send(0.0)
    fq = M.parse_message(data)
    assert isinstance(fq, M.FindNode) and fq.read_only and fq.client_version == b"QD\x00\x01"


def test_read_only_querier_answered_but_not_pinged_nor_inserted():
    # BEP 43: a query with 'ro' = 1 is serviced as usual, the sender kept out of the table.
    n = fresh()
    src = ("127.0.0.9", 4000)
    n.receive_datagram(M.Ping(transaction_id=b"a", node_id=OTHER, read_only=True).encode(), src, 0.0)
    out = n.datagrams_to_send(0.0)
    msgs = [M.parse_message(d) for d, a in out]
    assert len(msgs) == 1 and isinstance(msgs[0], M.Response) and msgs[0].transaction_id == b"a"
    assert OTHER not in n.table and n.stats["read_only_queriers"] == 1
    # write tokens still work for it (get_peers -> announce_peer)
    ih = b"\x22" * 20
    [r] = query(n, M.GetPeers(transaction_id=b"g", node_id=OTHER, info_hash=ih, read_only=True).encode())
    [ok] = query(n, M.AnnouncePeer(transaction_id=b"n", node_id=OTHER, info_hash=ih, port=7000, token=r.token,
                                   read_only=True).encode())
    assert isinstance(ok, M.Response)
    assert not any(isinstance(M.parse_message(d), M.Query) for d, _ in n.datagrams_to_send(0.0))
    # the same id without the flag is pinged as a newcomer, as before
    n.receive_datagram(M.Ping(transaction_id=b"b", node_id=OTHER).encode(), src, 0.0)
    assert any(isinstance(M.parse_message(d), M.Ping) for d, _ in n.datagrams_to_send(0.0))


class LoggingNet(Net):
    """``Net`` that also records, parsed, what one address sends and receives."""

    watch = None

    def log_for(self, addr):
        self.watch, self.received, self.sent = addr, [], []
        return self.received, self.sent

    def deliver(self, max_rounds: int = 100000) -> int:
        moved = 0
        for _ in range(max_rounds):
            batch = [(src, data, dst) for src, node in self.nodes.items()
                     for data, dst in node.datagrams_to_send(self.now)]
            if not batch:
                break
            for src, data, dst in batch:
                moved += 1
                if src == self.watch:
                    self.sent.append(M.parse_message(data))
                if dst in self.dead or src in self.dead or dst not in self.nodes:
                    continue
                if dst == self.watch:
                    self.received.append(M.parse_message(data))
                self.nodes[dst].receive_datagram(data, src, self.now)
        self.collect()
        return moved


def test_read_only_node_uses_the_network_and_leaves_no_trace():
    net = LoggingNet(20, seed=b"ro")
    net.bootstrap_all()
    ro_addr = ("127.0.0.1", 11000)
    ro = KrpcNode(net.rng(20), rng=Rng(b"ro-node"), now=net.now, config=RO_CFG)
    net.nodes[ro_addr], net.events[ro_addr] = ro, []
    received, sent = net.log_for(ro_addr)
    ro.bootstrap(net.now, (net.addrs()[0],))
    net.run(3.0)
    assert any(isinstance(e, BootstrapDone) for e in net.events[ro_addr])
    assert len(ro.table) >= 8  # it learns the network from answers
    target = net.rng(20)
    op = ro.find_node(target, net.now)
    net.run(2.0)
    truth = sorted((nd.node_id for a, nd in net.nodes.items() if a != ro_addr),
                   key=lambda i: int.from_bytes(i, "big") ^ int.from_bytes(target, "big"))
    assert [x[0] for x in net.done(ro_addr, op).result.nodes][:8] == truth[:8]
    op, tgt = ro.put_immutable(bencode.encode(b"from a read-only node"), net.now)
    net.run(2.0)
    assert net.done(ro_addr, op).result.stored >= 6
    other = net.nodes[net.addrs()[5]]
    op = other.get(tgt, net.now)
    net.run(2.0)
    assert net.done(net.addrs()[5], op).result.value == bencode.encode(b"from a read-only node")
    op2, tgt2 = other.put_immutable(bencode.encode(b"for the read-only node"), net.now)
    net.run(2.0)
    op = ro.get(tgt2, net.now)
    net.run(2.0)
    assert net.done(ro_addr, op).result.value == bencode.encode(b"for the read-only node")
    net.run(10.0)  # past query timeouts and a few maintenance ticks
    # every query it sent carried ro = 1, and nobody queried it (so nobody pinged it)
    assert sent and all(m.read_only for m in sent if isinstance(m, M.Query))
    assert received and not any(isinstance(m, (M.Query, M.UnknownQuery)) for m in received)
    assert ro.stats["dropped_read_only"] == 0
    for a, nd in net.nodes.items():
        if a != ro_addr:
            assert ro.node_id not in nd.table
            assert all(n.addr != ro_addr for n in nd.table.closest(ro.node_id, 1000))
    assert sum(nd.stats["read_only_queriers"] for nd in net.nodes.values()) > 0
    # normal nodes still learn each other: a newcomer without the flag enters tables
    new_addr = ("127.0.0.1", 11001)
    new = KrpcNode(net.rng(20), rng=Rng(b"new-node"), now=net.now, config=LOOP_CFG)
    net.nodes[new_addr], net.events[new_addr] = new, []
    new.bootstrap(net.now, (net.addrs()[0],))
    net.run(3.0)
    assert sum(new.node_id in nd.table for a, nd in net.nodes.items() if a not in (ro_addr, new_addr)) >= 5
    assert all(len(nd.table) >= 8 for a, nd in net.nodes.items() if a != ro_addr)
