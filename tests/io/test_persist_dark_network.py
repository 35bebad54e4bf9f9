"""End to end on loopback: a node publishes a dark address and goes away for good; the
storage nodes restart (same identities and databases, new ports); a fresh node resolves
the address from the descriptors they reloaded -- nobody republished (docs/dark.md §8,
docs/persistence.md)."""
from __future__ import annotations

import asyncio
import os

import pytest
import uvloop

from qudag_core.dark import Publisher, ResolveError
from qudag_core.dark.descriptor import DarkService, PutStatus
from qudag_core.identity import Identity
from qudag_io.config import NodeSettings
from qudag_io.node import Node
from qudag_io.persist import NodeDatabase


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request):
    factory = uvloop.new_event_loop if request.param == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as r:
        yield r


def _settings(directory: str, i: int, boot=()) -> NodeSettings:
    host = f"127.0.{i}.1"
    return NodeSettings(link_listen=(host, 0), dht_listen=(host, 0), bootstrap=list(boot), bootstrap_timeout=5.0,
                        dark_directory=directory, http_enabled=False)


async def _start_storage(idents, dbs, directory, *, persist: bool = True):
    nodes = []
    try:
        for i, (ident, db) in enumerate(zip(idents, dbs)):
            boot = [nodes[0].dht.address] if nodes else []
            nodes.append(await Node.start(ident, _settings(directory, i + 1, boot),
                                          database=db if persist else None))
        # every node learns the others (the first one started alone)
        await asyncio.gather(*(n.dht.find_node(n.dht.node_id) for n in nodes))
    except BaseException:
        await asyncio.gather(*(n.stop(save=False) for n in nodes))
        raise
    return nodes


@pytest.mark.parametrize("persist", [True, False], ids=["database", "memory-only"])
def test_storage_nodes_serve_descriptors_after_restart_without_republish(runner, tmp_path, persist):
    """With the database the address resolves after the restart; the memory-only run
    (the same steps, no database after the restart) shows the restart really emptied
    the stores and resolution then fails."""
    async def main():
        directory = str(tmp_path / "dark-directory.json")
        idents = [Identity.generate(os.urandom) for _ in range(4)]
        paths = [tmp_path / f"s{i}.db" for i in range(4)]
        dbs = [NodeDatabase.open(p) for p in paths]
        nodes: list = []
        try:
            nodes = await _start_storage(idents, dbs, directory)
            pub = await Node.start(Identity.generate(os.urandom), _settings(directory, 9, [nodes[0].dht.address]))
            try:
                service = DarkService.from_identity(pub.identity, certificate=pub.certificate)
                results = await pub.dark.publish(Publisher(service, os.urandom))
                statuses = [s for _, per_node in results for _, s in per_node]
                assert any(isinstance(s, PutStatus) and s.accepted for s in statuses), statuses
                name = str(service.address)
                cert = pub.certificate.to_bytes()
            finally:
                await pub.stop(save=False)  # the publisher is gone: nothing republishes
            held = [len(n.dark_server.store) for n in nodes]
            assert sum(held) >= 1
            # restart every storage node (same identity, same database, new ports)
            await asyncio.gather(*(n.stop(save=False) for n in nodes))
            nodes = []
            for db in dbs:
                db.close()
            dbs = [NodeDatabase.open(p) for p in paths]
            nodes = await _start_storage(idents, dbs, directory, persist=persist)
            # reloaded before serving (or, memory-only, nothing at all)
            assert [len(n.dark_server.store) for n in nodes] == (held if persist else [0] * 4)
            client = await Node.start(Identity.generate(os.urandom), _settings(directory, 10, [nodes[0].dht.address]))
            try:
                if persist:
                    ep = await client.dark.resolve(name)
                    assert ep.certificate.to_bytes() == cert and ep.expected_peer_id == service_peer(cert)
                else:
                    with pytest.raises(ResolveError):
                        await client.dark.resolve(name)
            finally:
                await client.stop(save=False)
        finally:
            await asyncio.gather(*(n.stop(save=False) for n in nodes))
            for db in dbs:
                db.close()

    runner.run(asyncio.wait_for(main(), 120))


def service_peer(cert: bytes):
    from qudag_core.identity import NodeCertificate

    return NodeCertificate.from_bytes(cert).node_id
