"""Bad input to the dark storage protocol (qudag_io.dark, docs/dark.md §8): the storing
side answers any link message with a reply or nothing, never another exception; a
storage node that answers with garbage makes resolution fail with a declared
``ResolveError``, never a crash or a hang."""
from __future__ import annotations

import asyncio
import os
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.dark import DarkService, NotFound, Publisher, PutStatus, Resolver
from qudag_core.dark.descriptor import descriptor_index, lookup_periods
from qudag_core.identity import Identity
from qudag_core.krpc import bencode
from qudag_core.krpc import messages as M
from qudag_io.dark import DescriptorServer, start_loopback_network
from qudag_io.dht import DhtNode

SERVICE = Identity.generate(os.urandom)
_CERT = SERVICE.issue_certificate([("127.0.0.1", 4433)], now=time.time())
_DESC = DarkService.from_identity(SERVICE, certificate=_CERT)
_PUB = Publisher(_DESC, os.urandom).due(time.time())

_values = st.recursive(st.binary(max_size=40) | st.integers(-2**70, 2**70),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.binary(max_size=8), c, max_size=4),
                       max_leaves=12)
_args = st.fixed_dictionaries({}, optional={b"x": st.binary(max_size=24) | _values, b"i": _values,
                                            b"d": st.sampled_from([d for _, d in _PUB]) | st.binary(max_size=64) | _values})
_queries = st.fixed_dictionaries({b"y": st.sampled_from([b"q", b"r", b"e"]) | st.binary(max_size=3),
                                  b"q": st.sampled_from([b"dark_get", b"dark_put", b"ping", b"qd_get"]),
                                  b"t": st.binary(max_size=20)},
                                 optional={b"a": _args | _values})


def _server():
    runner = asyncio.Runner()
    dht = runner.run(DhtNode.start("127.0.0.1", 0, wait_bootstrap=False))
    return runner, dht, DescriptorServer(dht)


def test_handle_any_bytes_and_any_query():
    runner, dht, srv = _server()
    try:
        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.binary(max_size=200) | _queries.map(bencode.encode))
        def prop(data):
            reply = srv.handle(data, ("127.0.0.1", 9))
            if reply is not None:
                msg = bencode.decode(reply, 1 << 17)
                assert isinstance(msg, dict) and msg[b"y"] in (b"r", b"e")

        prop()
        # the real thing goes through, byte-exact, and is served back (by a fresh server:
        # the property may have stored one of the real descriptors already)
        srv = DescriptorServer(dht)
        index, data = _PUB[0]
        put = bencode.encode({b"t": b"aa", b"y": b"q", b"q": b"dark_put", b"a": {b"d": data}})
        assert bencode.decode(srv.handle(put, ("127.0.0.1", 9)))[b"r"][b"s"] == PutStatus.ACCEPTED.value.encode()
        get = bencode.encode({b"t": b"bb", b"y": b"q", b"q": b"dark_get", b"a": {b"x": index, b"i": 0}})
        r = bencode.decode(srv.handle(get, ("127.0.0.1", 9)), 1 << 17)[b"r"]
        assert r == {b"n": 1, b"d": data}
        # trailing garbage after a valid message: not a dark query, goes to KRPC (error or drop)
        reply = srv.handle(put + b"x", ("127.0.0.1", 9))
        assert reply is None or bencode.decode(reply)[b"y"] == b"e"
        assert srv.store.get(index) == [data]
    finally:
        runner.run(dht.close())
        runner.close()


def test_dark_put_rate_limited_per_link_before_any_signature_check():
    """Each accepted-looking put costs the server an ML-DSA verification, so puts are
    limited per link: past the burst a put gets error 202 and costs no verification,
    while another link (another peer address) is still served."""
    runner, dht, _ = _server()
    try:
        t = [time.time()]
        srv = DescriptorServer(dht, clock=lambda: t[0], put_rate=1.0, put_burst=3)
        junk = bencode.encode({b"t": b"aa", b"y": b"q", b"q": b"dark_put", b"a": {b"d": b"\x01" * 64}})
        link_a, link_b = ("127.0.0.1", 40001), ("127.0.0.1", 40002)
        replies = [bencode.decode(srv.handle(junk, link_a)) for _ in range(5)]
        assert [r[b"y"] for r in replies] == [b"r"] * 3 + [b"e"] * 2
        assert replies[-1][b"e"][0] == 202
        assert bencode.decode(srv.handle(junk, link_b))[b"y"] == b"r"
        checks = srv.store.signature_checks
        index, data = _PUB[0]
        real = bencode.encode({b"t": b"bb", b"y": b"q", b"q": b"dark_put", b"a": {b"d": data}})
        assert bencode.decode(srv.handle(real, link_a))[b"e"][0] == 202
        assert srv.store.signature_checks == checks and srv.store.get(index) == []
        t[0] += 1.0  # one token back
        assert bencode.decode(srv.handle(real, link_a))[b"r"][b"s"] == PutStatus.ACCEPTED.value.encode()
        # dark_get is not limited by the put budget
        get = bencode.encode({b"t": b"cc", b"y": b"q", b"q": b"dark_get", b"a": {b"x": index, b"i": 0}})
        assert bencode.decode(srv.handle(get, link_a), 1 << 17)[b"r"][b"n"] == 1
    finally:
        runner.run(dht.close())
        runner.close()


class _Garbage(DescriptorServer):
    def handle(self, data, peer_addr):
        msg = bencode.decode(data, 1 << 17)
        if msg.get(b"q") == b"dark_get":
            return os.urandom(int.from_bytes(os.urandom(1), "big"))
        return super().handle(data, peer_addr)


def test_garbage_from_every_storage_node_is_a_declared_failure(run_loop):
    async def main():
        net = await start_loopback_network(8, server_factory=_Garbage)
        sc, client = net.client(1), net.client(6)
        try:
            res = await sc.publish(Publisher(_DESC, os.urandom))
            assert all(isinstance(s, PutStatus) and s.accepted for _, r in res for _, s in r)
            try:
                await client.resolve(_DESC.address)
            except NotFound as exc:
                assert "failed" in str(exc)
            else:
                raise AssertionError("resolved from garbage")
        finally:
            await client.close()
            await sc.close()
            await net.close()

    run_loop(main, 60)


def test_concurrent_fetches_share_links_and_unreachable_nodes_fail_cleanly(run_loop):
    """Dummy fetches and the real one go out together: one link per storage node (none
    leaked), and a storage node whose listener is gone is a failed fetch, not a crash."""

    async def main():
        net = await start_loopback_network(8)
        sc = net.client(1)
        client = net.client(6, resolver=Resolver(os.urandom, dummies=3))
        try:
            await sc.publish(Publisher(_DESC, os.urandom))
            ep = await client.resolve(_DESC.address)
            assert ep.certificate.node_id == SERVICE.node_id
            await client.close()  # dummies may have linked to every node already
            fresh = next(nid for nid in net.directory if nid != net.dhts[6].node_id)
            a, b = await asyncio.gather(client._link(fresh), client._link(fresh))
            assert a is b and not a.conn.is_closed
            # every other node's link listener goes away: fetches fail, NotFound is declared
            for lst in net.listeners[:6] + net.listeners[7:]:
                await lst.close()
            await client.close()
            client.resolver = type(client.resolver)(os.urandom)
            try:
                await client.resolve(_DESC.address)
            except NotFound:
                pass
            else:  # only possible if the client's own node holds it (one of the k closest
                # to the index of one of the periods looked up)
                assert any(net.servers[6].store.get(descriptor_index(_DESC.address, p))
                           for p in lookup_periods(time.time()))
        finally:
            await client.close()
            await sc.close()
            await net.close()

    run_loop(main, 60)

