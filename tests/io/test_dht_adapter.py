"""qudag_io.dht on real loopback UDP sockets, under asyncio's default loop and uvloop:
every async API call against a small network of our own nodes."""
from __future__ import annotations

import asyncio
import os

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qudag_core.krpc import bencode
from qudag_core.krpc import messages as M
from qudag_core.krpc.node import NodeConfig
from qudag_io.dht import DhtError, DhtNode

import pytest

CFG = NodeConfig(query_timeout=0.5)


async def small_network(n: int):
    # distinct 127.x.y.1 addresses keep the routing table's IP-diversity limits satisfied
    first = await DhtNode.start("127.0.1.1", 0, config=CFG)
    nodes = [first]
    for i in range(2, n + 1):
        nodes.append(await DhtNode.start(f"127.0.{i}.1", 0, config=CFG, bootstrap=[first.address]))
    for nd in nodes:
        await nd.find_node(nd.node_id)
    return nodes


def test_api_roundtrip(run_loop):
    async def main():
        nodes = await small_network(6)
        try:
            a, b = nodes[1], nodes[4]
            pr = await a.ping(b.address)
            assert pr.node_id == b.node_id and pr.rtt >= 0
            fr = await a.find_node(b.node_id)
            assert fr.nodes[0] == (b.node_id, b.address)
            v = bencode.encode(b"hello from " + run_loop.kind.encode())
            target = await a.put(v)
            assert target == M.immutable_target(v)
            g = await b.get(target)
            assert g.value == v and g.agreement == 1  # the first verified immutable item ends it
            g = await b.get(target, quorum=2)
            assert g.value == v and g.agreement >= 2
            sk = Ed25519PrivateKey.from_private_bytes(os.urandom(32))
            pk = sk.public_key().public_bytes_raw()
            mv = bencode.encode({b"n": 1})
            mt = await a.put_mutable(mv, key=pk, signature=M.sign_mutable(sk, mv, 1, b"salt"), seq=1, salt=b"salt")
            g = await b.get(mt, salt=b"salt")
            assert g.value == mv and g.seq == 1 and g.key == pk
            ih = os.urandom(20)
            ar = await a.announce(ih, 6881)
            assert ar.stored >= 3
            gp = await b.get_peers(ih)
            assert ("127.0.2.1", 6881) in gp.peers
            missing = await b.get(os.urandom(20))
            assert missing.value is None
            # a dead address: the ping times out with DhtError
            with pytest.raises(DhtError):
                await a.ping(("127.0.0.1", 9))
        finally:
            for nd in nodes:
                await nd.close()

    run_loop(main, 30)


class _CountingLoop:
    """The running loop, counting ``call_at`` (what the adapter arms its timer with)."""

    def __init__(self, loop):
        self._loop = loop
        self.call_at_count = 0

    def call_at(self, when, cb, *args):
        self.call_at_count += 1
        return self._loop.call_at(when, cb, *args)

    def __getattr__(self, name):
        return getattr(self._loop, name)


def test_timer_rearmed_only_for_an_earlier_deadline(run_loop):
    """Every query moves the core's next deadline; the adapter re-arms its one timer only
    when the core wants waking earlier, so a lookup costs no timer per datagram, the
    armed timer is never later than the core's deadline, and a timer that fires early
    just re-arms."""
    async def main():
        nodes = await small_network(8)
        try:
            a = nodes[3]
            counting = _CountingLoop(a._loop)
            a._loop = counting
            sent0 = a.core.stats["sent"]
            for _ in range(20):
                res = await a.find_node(os.urandom(20))
                assert res.nodes
                assert a._timer_at is not None and a._timer_at <= a.core.get_timer()
            datagrams = a.core.stats["sent"] - sent0 + a.core.stats["received"]
            assert datagrams > 60 and counting.call_at_count <= 4
            # Past the query timeout (0.5 s): the early timer fired, found nothing due
            # and re-armed for the core's real deadline.
            await asyncio.sleep(0.8)
            assert a._timer is not None and a._timer_at <= a.core.get_timer()
            assert (await a.find_node(os.urandom(20))).nodes
        finally:
            for nd in nodes:
                await nd.close()

    run_loop(main, 30)


def test_read_only_node_over_real_sockets_stays_out_of_tables(run_loop):
    """BEP 43 through the adapter (what `qudag dht` / `qudag resolve` use): a read-only
    node bootstraps, puts and gets over real UDP, flags every query ro=1, and afterwards
    no node of the network holds it in its table or has queried it."""

    async def main():
        nodes = await small_network(5)
        ro = await DhtNode.start("127.0.9.1", 0, config=NodeConfig(query_timeout=0.5, read_only=True),
                                 bootstrap=[nodes[0].address])
        try:
            await ro.find_node(ro.node_id)
            v = bencode.encode(b"read-only " + run_loop.kind.encode())
            target = await ro.put(v)
            assert (await nodes[3].get(target)).value == v
            assert (await ro.get(target)).value == v
            for nd in nodes:
                assert ro.node_id not in {n.node_id for n in nd.core.table}
            assert sum(nd.core.stats.get("read_only_queriers", 0) for nd in nodes) > 0
            assert ro.core.stats["queries_answered"] == 0
        finally:
            await ro.close()
            for nd in nodes:
                await nd.close()

    run_loop(main, 30)
