"""Dark addresses over the real DHT (docs/dark.md §8): a 20-node loopback network of
``DhtNode``s (UDP KRPC) whose link listeners serve ``DescriptorServer``s, on asyncio and
uvloop.  Publishing and resolving use real ``find_node`` lookups and real authenticated
links; connecting by ``.dark`` name runs the real handshake.

The descriptor codec's 100,000 random mutations are covered by
tests/core/dark/test_dark_descriptor.py::test_hundred_thousand_mutations_all_rejected and
the cache behaviour by tests/core/dark/test_dark_resolver.py (test_cache_hits_and_expiry,
test_negative_cache_shorter_ttl, test_failed_fetches_not_cached,
test_cache_is_bounded_lru); here the attacks are
replayed through the network: rollback (store and client), a descriptor served for
another index, and a forgery at the real index."""
from __future__ import annotations

import asyncio
import os
import pathlib
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "core" / "dark"))
from dark_helpers import Rng, forge  # noqa: E402

from qudag_core.dark import (DarkAddress, DarkService, NotFound, Publisher, PutStatus, Resolver, Rollback,  # noqa: E402
                             WrongIndex, parse_name)
from qudag_core.dark.descriptor import DescriptorDecryptFailed, OuterDescriptor, descriptor_index, period_of  # noqa: E402
from qudag_core.identity import Identity  # noqa: E402
from qudag_io.dark import DarkError, DescriptorServer, connect_dark, start_loopback_network  # noqa: E402
from qudag_io.link import ConnectionClosed, listen  # noqa: E402

N = 20
SERVICE = Identity.generate(os.urandom)
OTHER = Identity.generate(os.urandom)


async def _echo(conn):
    async for msg in conn:
        await conn.send(b"echo:" + msg)


class _Evil(DescriptorServer):
    """A storage node that may serve chosen bytes instead of what its store holds."""

    serve: dict = {}

    def descriptors_at(self, index, now):
        fake = self.serve.get(index)
        return list(fake) if fake is not None else super().descriptors_at(index, now)


async def _setup(svc_listener, **resolver_kw):
    net = await start_loopback_network(N, server_factory=_Evil)
    _Evil.serve = {}
    svc = DarkService.from_identity(SERVICE, certificate=svc_listener.certificate)
    service_client = net.client(3)
    client = net.client(11, resolver=Resolver(os.urandom, **resolver_kw))
    return net, svc, service_client, client


def _ok(results):
    return [s for _, s in results if isinstance(s, PutStatus) and s.accepted]


def test_publish_resolve_connect_by_dark_name(run_loop):
    async def main():
        t0 = time.monotonic()
        async with await listen("127.0.0.1", 0, identity=SERVICE, handler=_echo) as lst:
            net, svc, sc, client = await _setup(lst, dummies=1)
            try:
                pub = Publisher(svc, os.urandom)
                published = await sc.publish(pub)
                assert published and all(len(_ok(res)) == 3 for _, res in published), published
                # the descriptors sit on the 3 nodes closest to the index, found by UDP lookups
                index = published[0][0]
                holders = [nd.node_id for nd, s in zip(net.dhts, net.servers) if s.store.get(index)]
                closest = sorted((nd.node_id for nd in net.dhts), key=lambda i: int.from_bytes(i, "big") ^
                                 int.from_bytes(index, "big"))[:3]
                assert sorted(holders) == sorted(closest)

                name = str(svc.address)
                conn = await connect_dark(name, client)
                async with conn:
                    assert conn.peer_node_id == SERVICE.node_id
                    await conn.send(b"hi")
                    assert await conn.recv() == b"echo:hi"
                ep = await client.resolve(name.upper())  # names are case-insensitive; cache hit now
                assert ep.is_long_term and client.resolver.cache_hits == 1

                # a node holding the wrong address: same bytes from the network, no decryption
                fetched = await client.fetch(index)
                assert fetched and len(fetched) == 1
                wrong = DarkAddress.from_public_key(OTHER.signing_key.public_key.raw)
                with pytest.raises(DescriptorDecryptFailed):
                    OuterDescriptor.from_bytes(fetched[0]).open(wrong)
                assert OuterDescriptor.from_bytes(fetched[0]).open(svc.address).expires_at > time.time()
                with pytest.raises(NotFound):
                    await client.resolve(wrong)  # nothing published under its index
                with pytest.raises(DarkError):
                    await client.resolve("my-alias.dark")
                print(f"\n20-node dark run on {run_loop.kind}: {time.monotonic() - t0:.1f}s")
            finally:
                await client.close()
                await sc.close()
                await net.close()

    run_loop(main, 60)


def test_descriptor_attacks_over_the_network(run_loop):
    async def main():
        async with await listen("127.0.0.1", 0, identity=SERVICE, handler=_echo) as lst:
            net, svc, sc, client = await _setup(lst, cache_ttl=0.01)
            attacker = net.client(17)
            try:
                now = time.time()
                period = period_of(now)
                index = descriptor_index(svc.address, period)
                old = svc.build(period, 100, int(now + 3600), os.urandom)
                new = svc.build(period, 200, int(now + 3600), os.urandom)
                assert len(_ok(await sc.put_descriptor(index, old))) == 3
                assert (await client.resolve(svc.address)).revision == 100
                assert len(_ok(await sc.put_descriptor(index, new))) == 3
                await asyncio.sleep(0.02)  # past cache_ttl
                assert (await client.resolve(svc.address)).revision == 200

                # (1) rollback: the stores refuse the replayed old revision ...
                res = await attacker.put_descriptor(index, old)
                assert [s for _, s in res] == [PutStatus.ROLLBACK] * 3
                # ... and the client refuses it when storage nodes serve only the old one
                _Evil.serve[index] = [old]
                await asyncio.sleep(0.02)
                with pytest.raises(Rollback):
                    await client.resolve(svc.address)

                # (2) a descriptor served for a different index (another period's) is refused
                other = svc.build(period + 1, 300, int(now + 3600), os.urandom)
                _Evil.serve[index] = [other]
                with pytest.raises(WrongIndex):
                    await client.resolve(svc.address)
                _Evil.serve.clear()

                # (3) a forgery at the real index (someone who knows the address, own period
                # key, higher revision): stored beside the real one, never displaces it
                forged = forge(svc.address, period, 10**12, os.urandom(32), rng=Rng(os.urandom(8)),
                               claim_identity_pk=SERVICE.signing_key.public_key.raw,
                               certificate=OTHER.issue_certificate(lst.addresses, now=now).to_bytes())
                assert len(_ok(await attacker.put_descriptor(index, forged))) == 3
                assert sorted(map(len, [s.store.get(index) for s in net.servers if s.store.get(index)])) == [2, 2, 2]
                await asyncio.sleep(0.02)
                ep = await client.resolve(svc.address)
                assert ep.revision == 200 and ep.certificate.node_id == SERVICE.node_id
                async with await client.connect(str(svc.address)) as conn:
                    await conn.send(b"x")
                    assert await conn.recv() == b"echo:x"
                # the forger cannot replace the real slot either: it is keyed by the real period key
                res = await attacker.put_descriptor(index, new)
                assert [s for _, s in res] == [PutStatus.ROLLBACK] * 3
            finally:
                for c in (client, sc, attacker):
                    await c.close()
                await net.close()

    run_loop(main, 60)


def test_unreachable_service_and_hijacked_endpoint(run_loop):
    """The name resolves, but the socket in the certificate is Mallory's: the handshake
    refuses, because Mallory cannot prove the identity the address commits to."""

    async def main():
        mallory = Identity.generate(os.urandom)
        async with await listen("127.0.0.1", 0, identity=mallory, handler=_echo) as evil:
            net = await start_loopback_network(N)
            real_cert = SERVICE.issue_certificate(evil.addresses, now=time.time())
            svc = DarkService.from_identity(SERVICE, certificate=real_cert)
            sc, client = net.client(0), net.client(19)
            try:
                assert all(len(_ok(r)) == 3 for _, r in await sc.publish(Publisher(svc, os.urandom)))
                with pytest.raises(ConnectionClosed):
                    await connect_dark(str(svc.address), client, timeout=5)
                with pytest.raises(NotFound):  # an unpublished (but valid) address
                    await client.resolve(parse_name(str(DarkAddress.from_public_key(OTHER.signing_key.public_key.raw))))
            finally:
                await client.close()
                await sc.close()
                await net.close()

    run_loop(main, 60)


class _Recording(DescriptorServer):
    """A storage node that records the source address of every link it serves."""

    sources: list = []

    async def serve_link(self, conn, peer_addr=None):
        self.sources.append((self.dht.address[0], conn.remote_address[0]))
        await super().serve_link(conn, peer_addr)


def test_loopback_network_nodes_link_from_their_own_addresses(run_loop):
    """``start_loopback_network`` puts node ``i`` on ``testnet_host(i)`` (its own /16, the
    ``qudag testnet`` plan), and a node's client dials storage nodes and dark names from
    that address: each storage node sees 127.3.0.1 for node 2, as per-IP limits would."""
    from qudag_io.loopback import testnet_host

    n = 6

    async def main():
        seen = []

        async def record(conn):
            seen.append(conn.remote_address[0])
            await _echo(conn)

        async with await listen("127.0.0.1", 0, identity=SERVICE, handler=record) as lst:
            _Recording.sources = []
            net = await start_loopback_network(n, server_factory=_Recording)
            sc, client = net.client(2), net.client(4)
            try:
                assert [d.address[0] for d in net.dhts] == [testnet_host(i) for i in range(n)]
                assert [lst_.addresses[0][0] for lst_ in net.listeners] == [testnet_host(i) for i in range(n)]
                assert sc.local_hosts == (testnet_host(2),) == ("127.3.0.1",)
                svc = DarkService.from_identity(SERVICE, certificate=lst.certificate)
                published = await sc.publish(Publisher(svc, os.urandom))
                assert published and all(len(_ok(r)) >= 1 for _, r in published), published
                from_sc = [src for node, src in _Recording.sources if node != testnet_host(2)]
                assert from_sc and set(from_sc) == {"127.3.0.1"}, _Recording.sources
                _Recording.sources.clear()
                conn = await connect_dark(str(svc.address), client)
                async with conn:
                    await conn.send(b"hi")
                    assert await conn.recv() == b"echo:hi"
                    assert conn.local_address[0] == "127.5.0.1"
                assert seen == ["127.5.0.1"]
                from_client = [src for node, src in _Recording.sources if node != testnet_host(4)]
                assert from_client and set(from_client) == {"127.5.0.1"}, _Recording.sources
                # An explicit local_addr wins over the client's hosts.
                conn = await connect_dark(str(svc.address), client, local_addr=("127.0.0.1", 0))
                async with conn:
                    assert conn.local_address[0] == "127.0.0.1"
                assert seen[-1] == "127.0.0.1"
            finally:
                await client.close()
                await sc.close()
                await net.close()

    run_loop(main, 60)
