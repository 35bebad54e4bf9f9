"""Dark-address fetches through onion circuits (docs/dark.md §8, "Through onion
circuits"), over real loopback sockets on asyncio and uvloop.

Storage nodes of a ``start_loopback_network`` are also onion relays (node ``i`` on
``loopback.testnet_host(i)`` = ``127.(i+1).0.1``, same identity for its link listener and its
relay) serving ``DARK_SERVICE`` with ``register_dark_service``.  A resolver with
``DarkClient(onion=OnionClient(...))`` resolves through 3-hop circuits whose exit is each
storage node; the storage nodes' ``DescriptorServer``s (instrumented by ``_Spy``, which
records what ``handle`` is called with) must see its queries on circuit keys only,
never on a link and never from the resolver's address.  A storage node that is not a
relay fails only its own query (``DarkError``); garbage framing on the service stream
ends that stream while the exit keeps serving.
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from qudag_core.dark import DarkService, PutStatus, Publisher, Resolver
from qudag_core.dark.descriptor import OuterDescriptor, descriptor_index, period_of
from qudag_core.identity import Identity
from qudag_core.krpc import bencode
from qudag_io.dark import (DARK_GET, DARK_PUT, DARK_SERVICE, MAX_MESSAGE, DarkError, DescriptorServer,
                           register_dark_service, start_loopback_network)
from qudag_io.link import listen
from qudag_io import loopback
from qudag_io.onion import OnionClient, OnionNode, RelayDirectory, StreamClosed

N = 10
SERVICE = Identity.generate(os.urandom)


class _Spy(DescriptorServer):
    """Records (query name, peer_addr, via_circuit) of every message ``handle`` sees."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.seen: list = []

    def handle(self, data, peer_addr, *, via_circuit=False):
        try:
            q = bencode.decode(data, MAX_MESSAGE).get(b"q")
        except Exception:
            q = None
        self.seen.append((q, tuple(peer_addr), via_circuit))
        return super().handle(data, peer_addr, via_circuit=via_circuit)

    async def serve_stream(self, stream, circuit_key):
        try:
            await super().serve_stream(stream, circuit_key)
        finally:
            self.streams_ended += 1

    streams_ended = 0


async def _echo(conn):
    async for msg in conn:
        await conn.send(msg)


class _Net:
    """A dark loopback network plus onion relays on the nodes in ``relays`` (all of
    which serve DARK_SERVICE unless listed in ``no_service``)."""

    def __init__(self, net):
        self.net = net
        self.directory = RelayDirectory()
        self.onions: dict = {}  # node index -> OnionNode
        self.extra: list = []  # client-only onion nodes

    async def add_relays(self, relays, no_service=()):
        for i in relays:
            node = await OnionNode.start(self.net.identities[i], self.directory, host=loopback.testnet_host(i))
            self.onions[i] = node
            if i not in no_service:
                register_dark_service(node, self.net.servers[i])
            self.directory.add(node.directory_entry())

    async def onion_client(self, host, identity=None):
        node = await OnionNode.start(identity or Identity.generate(os.urandom), self.directory, relay=False, host=host)
        self.extra.append(node)
        return OnionClient(node)

    async def close(self):
        for node in [*self.extra, *self.onions.values()]:
            await node.close()
        await self.net.close()


async def _wait(cond, seconds=5.0):
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


def _dark_queries(srv):
    return [s for s in srv.seen if s[0] in (DARK_GET, DARK_PUT)]


def test_resolve_and_publish_through_circuits(run_loop):
    async def main():
        async with await listen("127.0.0.1", 0, identity=SERVICE, handler=_echo) as lst:
            net = _Net(await start_loopback_network(N, server_factory=_Spy))
            sc = client = None
            try:
                svc = DarkService.from_identity(SERVICE, certificate=lst.certificate)
                sc = net.net.client(0)  # the service publishes directly
                published = await sc.publish(Publisher(svc, os.urandom))
                assert published
                index = descriptor_index(svc.address, period_of(time.time()))
                holders = [i for i, s in enumerate(net.net.servers) if s.store.get(index)]
                assert len(holders) == 3, holders
                nonrelay = holders[0]
                me = next(i for i in range(1, N) if i not in holders)
                await net.add_relays([i for i in range(N) if i not in (nonrelay, me)])
                rnode = await OnionNode.start(net.net.identities[me], net.directory, relay=False,
                                              host=loopback.testnet_host(me))
                net.extra.append(rnode)
                client = net.net.client(me, onion=OnionClient(rnode), resolver=Resolver(os.urandom, via_circuit=True))
                lookups = []
                find_node = client.dht.find_node

                async def counted(target):
                    lookups.append(target)
                    return await find_node(target)

                client.dht.find_node = counted
                for s in net.net.servers:
                    s.seen.clear()

                ep = await client.resolve(svc.address)
                assert ep.expected_peer_id == SERVICE.node_id
                assert ep.certificate.to_bytes() == lst.certificate.to_bytes()

                # the relay holders answered on circuit keys; nobody saw a link query, the
                # resolver's address, or a find_node for the index from the resolver
                for i in holders[1:]:
                    got = [s for s in _dark_queries(net.net.servers[i]) if s[0] == DARK_GET]
                    assert got and all(via and peer[0] == "circuit" for _, peer, via in got), got
                everything = [s for srv in net.net.servers for s in srv.seen]
                assert not [s for s in everything if not s[2]], everything
                assert not [s for s in everything if s[1][0] == loopback.testnet_host(me)]
                assert net.net.servers[nonrelay].seen == []
                assert lookups == []

                # the storage node that is no relay: its query fails, the others' succeed
                nonrelay_id = net.net.dhts[nonrelay].node_id
                with pytest.raises(DarkError, match="not an onion relay"):
                    await client._call(nonrelay_id, DARK_GET, {b"x": index, b"i": 0})
                fetched = await client.fetch(index)
                assert fetched and len(fetched) == 1
                outer = OuterDescriptor.from_bytes(fetched[0])
                assert outer.revision == ep.revision and outer.open(svc.address).expires_at > time.time()
                assert net.net.servers[nonrelay].seen == []  # never asked directly, not even now
                assert len(client._circs) == 2  # pooled: one circuit per relay holder

                # publishing through circuits: a higher revision replaces the stored one on the
                # relay holders; the non-relay holder's put fails, no direct link is opened
                newer = svc.build(period_of(time.time()), ep.revision + 1, int(time.time() + 3600), os.urandom)
                res = dict(await client.put_descriptor(index, newer))
                assert isinstance(res[nonrelay_id], DarkError)
                for i in holders[1:]:
                    assert res[net.net.dhts[i].node_id] is PutStatus.REPLACED
                    puts = [s for s in _dark_queries(net.net.servers[i]) if s[0] == DARK_PUT]
                    assert len(puts) == 1 and puts[0][2] and puts[0][1][0] == "circuit"
                assert client._links == {}
                client.resolver = Resolver(os.urandom, via_circuit=True)  # fresh cache
                assert (await client.resolve(svc.address)).revision == ep.revision + 1

                # close() ends every circuit: the relays drop them all
                circs = [ch.circuit for ch in client._circs.values()]
                await client.close()
                assert client._circs == {} and all(not c.is_open for c in circs)
                assert await _wait(lambda: all(n.relay.circuit_count == 0 for n in net.onions.values()))
            finally:
                for c in (client, sc):
                    if c is not None:
                        await c.close()
                await net.close()

    run_loop(main, 90)


def _frame(msg: bytes) -> bytes:
    return len(msg).to_bytes(4, "big") + msg


async def _ask(stream, msg: bytes) -> dict:
    await stream.send(_frame(msg))
    size = int.from_bytes(await stream.readexactly(4), "big")
    assert 0 < size <= MAX_MESSAGE
    return bencode.decode(await stream.readexactly(size), MAX_MESSAGE)


async def _ended(stream) -> bool:
    try:
        return await asyncio.wait_for(stream.recv(), 5) == b""
    except StreamClosed:
        return True


def test_bad_frames_end_the_stream_not_the_exit(run_loop):
    async def main():
        net = _Net(await start_loopback_network(6, server_factory=_Spy))
        try:
            await net.add_relays(range(6), no_service=(5,))
            oc = await net.onion_client(loopback.testnet_client_host(0))
            exit_node = net.onions[4]
            index = os.urandom(20)
            get = bencode.encode({b"t": b"aa", b"y": b"q", b"q": DARK_GET, b"a": {b"x": index, b"i": 0}})
            circ = await oc.build_circuit(3, exit=exit_node.node_id)
            try:
                garbage = [
                    b"\xff\xff\xff\xff",                                   # length above MAX_MESSAGE
                    (MAX_MESSAGE + 1).to_bytes(4, "big") + b"x" * 100,     # just above
                    b"\x00\x00\x00\x00" + _frame(get),                     # zero length
                    b"\x00\x00\x10\x00" + b"short",                        # frame cut by END
                    b"\x00\x00",                                           # header cut by END
                ]
                srv = net.net.servers[4]
                for k, bad in enumerate(garbage):
                    st = await circ.open_stream(exit_node.node_id, DARK_SERVICE)
                    await st.send(bad)
                    if k >= 3:  # a cut frame: the client ends the stream
                        await st.close()
                    else:  # a bad length: the exit ends it
                        assert await _ended(st), bad
                    assert await _wait(lambda: srv.streams_ended == k + 1), bad
                    assert srv.seen == []  # nothing reached handle()
                # the exit still serves new streams on the same circuit, and on others
                st = await circ.open_stream(exit_node.node_id, DARK_SERVICE)
                r = await _ask(st, get)
                assert r[b"t"] == b"aa" and r[b"r"] == {b"n": 0}
                # anything but dark_get/dark_put: an error reply, not the KRPC node
                ping = bencode.encode({b"t": b"pp", b"y": b"q", b"q": b"ping", b"a": {b"id": b"x" * 20}})
                r = await _ask(st, ping)
                assert r[b"y"] == b"e" and r[b"e"][0] == 204 and r[b"t"] == b"pp"
                r = await _ask(st, b"not bencode")
                assert r[b"y"] == b"e" and r[b"e"][0] == 204
                r = await _ask(st, bencode.encode({b"t": b"", b"y": b"q", b"q": DARK_GET, b"a": {}}))
                assert r[b"y"] == b"e" and r[b"e"][0] == 203
                r = await _ask(st, bencode.encode({b"t": b"bb", b"y": b"q", b"q": DARK_GET, b"a": {b"x": b"short"}}))
                assert r[b"y"] == b"e" and r[b"e"][0] == 203
                # several queries in one send: one reply each, in order
                many = [bencode.encode({b"t": bytes([65 + k]), b"y": b"q", b"q": DARK_GET,
                                        b"a": {b"x": index, b"i": k}}) for k in range(3)]
                await st.send(b"".join(_frame(m) for m in many))
                for k in range(3):
                    size = int.from_bytes(await st.readexactly(4), "big")
                    assert bencode.decode(await st.readexactly(size), MAX_MESSAGE)[b"t"] == bytes([65 + k])
                await st.close()
                assert all(via and peer[0] == "circuit" for _, peer, via in srv.seen)
                keys = {peer for _, peer, _ in srv.seen}
                assert len(keys) == 1  # every stream of one circuit: one circuit key
                assert net.net.dhts[4].core is not None
            finally:
                await circ.close()

            # a DarkClient over circuits: a relay without the service fails with DarkError,
            # a serving relay answers
            client = net.net.client(0, onion=oc)
            try:
                with pytest.raises(DarkError):
                    await client._call(net.net.dhts[5].node_id, DARK_GET, {b"x": index, b"i": 0})
                r = await client._call(net.net.dhts[4].node_id, DARK_GET, {b"x": index, b"i": 0})
                assert r == {b"n": 0}
                # a second circuit: another circuit key at the exit
                assert len({peer for _, peer, _ in net.net.servers[4].seen}) == 2
            finally:
                await client.close()
            # the pool is bounded: with max_links=1 a query to another node evicts (and
            # destroys) the first circuit
            client = net.net.client(0, onion=oc, max_links=1)
            try:
                await client._call(net.net.dhts[4].node_id, DARK_GET, {b"x": index, b"i": 0})
                first = client._circs[net.net.dhts[4].node_id].circuit
                r = await client._call(net.net.dhts[3].node_id, DARK_GET, {b"x": index, b"i": 0})
                assert r == {b"n": 0} and list(client._circs) == [net.net.dhts[3].node_id]
                assert await _wait(lambda: not first.is_open)
            finally:
                await client.close()
            assert await _wait(lambda: all(n.relay.circuit_count == 0 for n in net.onions.values()))
        finally:
            await net.close()

    run_loop(main, 60)


def test_via_circuit_without_onion_still_refused(run_loop):
    async def main():
        net = await start_loopback_network(2)
        try:
            with pytest.raises(DarkError):
                net.client(0, resolver=Resolver(os.urandom, via_circuit=True))
            with pytest.raises(ValueError):
                net.client(0, hops=0)
            onode = await OnionNode.start(net.identities[0], RelayDirectory(), relay=False,
                                          host=loopback.testnet_host(0))
            try:
                with pytest.raises(ValueError, match="at least 2"):
                    net.client(0, onion=OnionClient(onode), hops=1)
                # with an onion client, via_circuit is accepted
                c = net.client(0, onion=OnionClient(onode), resolver=Resolver(os.urandom, via_circuit=True))
                assert c.hops == 3
                await c.close()
            finally:
                await onode.close()
        finally:
            await net.close()

    run_loop(main, 30)


def test_nodes_with_relays_resolve_through_circuits(run_loop, tmp_path):
    """``qudag_io.node.Node``: a relay serves DARK_SERVICE for the descriptors it stores;
    a node started with ``dark_circuit_hops=3`` resolves through circuits (no direct
    storage link, no find_node for the index); the default keeps direct links."""
    from qudag_io.config import NodeSettings
    from qudag_io.node import Node, write_directory

    dark_dir, onion_dir = str(tmp_path / "dark.json"), str(tmp_path / "relays.json")

    def settings(i, boot):
        h = loopback.testnet_host(40 + i)
        return NodeSettings(link_listen=(h, 0), dht_listen=(h, 0), onion_listen=(h, 0), bootstrap=list(boot),
                            bootstrap_timeout=5.0, relay=True, onion_directory=onion_dir, dark_directory=dark_dir,
                            http_enabled=False)

    async def main():
        nodes: list = []
        try:
            for i in range(6):
                boot = [nodes[0].dht.address] if nodes else []
                nodes.append(await Node.start(Identity.generate(os.urandom), settings(i, boot),
                                              dark_circuit_hops=3 if i == 5 else 0))
            await asyncio.gather(*(n.dht.find_node(n.dht.node_id) for n in nodes))
            write_directory(onion_dir, [n.onion.certificate for n in nodes])
            for n in nodes:  # both files are re-read at most every 0.5 s: read them now
                n.onion.directory.reload()
                n.dark.directory.reload()
            pub, res = nodes[0], nodes[5]
            assert pub.dark.onion is None and res.dark.onion is not None and res.dark.hops == 3
            svc = DarkService.from_identity(pub.identity, certificate=pub.certificate)
            results = await pub.dark.publish(Publisher(svc, os.urandom))
            assert all(len([s for _, s in r if isinstance(s, PutStatus) and s.accepted]) == 3 for _, r in results)
            lookups = []
            find_node = res.dht.find_node

            async def counted(target):
                lookups.append(target)
                return await find_node(target)

            res.dht.find_node = counted
            ep = await res.dark.resolve(str(svc.address))
            assert ep.certificate.to_bytes() == pub.certificate.to_bytes()
            assert res.dark._links == {} and lookups == []
            remote = [nid for nid in await res.dark.storage_nodes(descriptor_index(svc.address, period_of(time.time())))
                      if nid != res.dht.node_id]
            assert remote and sorted(res.dark._circs) == sorted(remote)
            with pytest.raises(ValueError):
                Node(Identity.generate(os.urandom), NodeSettings(), dark_circuit_hops=3)  # no relay
        finally:
            await asyncio.gather(*(n.stop(save=False) for n in nodes))

    run_loop(main, 90)
