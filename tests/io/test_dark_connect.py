"""Connect by .dark name over real loopback sockets (qudag_io.link), asyncio and uvloop.

A service listens, publishes its descriptor into an in-memory DescriptorStore (standing in
for the DHT), a client resolves the name and dials with the certificate and node id the
descriptor proved; a forged descriptor or a hijacked address is refused by the handshake."""
from __future__ import annotations

import os
import pathlib
import sys
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "core" / "dark"))
from dark_helpers import Rng, drive, forge  # noqa: E402

from qudag_core.dark import DarkService, DescriptorStore, Publisher, Resolved, Resolver, parse_name  # noqa: E402
from qudag_core.dark.descriptor import OuterDescriptor, period_of  # noqa: E402
from qudag_core.identity import Identity, NodeCertificate  # noqa: E402
from qudag_io.link import ConnectionClosed, connect, listen  # noqa: E402

SERVICE = Identity.generate(os.urandom)
CLIENT = Identity.generate(os.urandom)
MALLORY = Identity.generate(os.urandom)


async def _echo(conn):
    msg = await conn.recv()
    await conn.send(b"echo:" + msg)
    try:
        await conn.recv()
    except ConnectionClosed:
        pass


def test_connect_by_dark_name(run_loop):
    async def main():
        async with await listen("127.0.0.1", 0, identity=SERVICE, handler=_echo) as lst:
            now = time.time()
            store = DescriptorStore()
            svc = DarkService.from_identity(SERVICE, certificate=lst.certificate)
            for _, data in Publisher(svc, os.urandom).due(now):
                assert store.put(data, now).accepted
            name = str(svc.address)

            resolver = Resolver(os.urandom, dummies=2)
            results, _ = drive(resolver, store, resolver.resolve(parse_name(name), now), now)
            ev = results[0]
            assert isinstance(ev, Resolved) and ev.endpoint.is_long_term
            host, port = ev.endpoint.certificate.addresses[0]
            async with await connect(host, port, identity=CLIENT, peer_certificate=ev.endpoint.certificate,
                                     expected_peer_id=ev.endpoint.expected_peer_id) as conn:
                assert conn.peer_node_id == SERVICE.node_id
                await conn.send(b"hi")
                assert await conn.recv() == b"echo:hi"

    run_loop(main, timeout=60)


def test_forged_descriptor_refused_by_handshake(run_loop):
    """Mallory knows the address and publishes a descriptor carrying *his* certificate
    for the real service's socket.  The resolver rejects it; a client that trusted it
    anyway is refused by the handshake (Mallory's certified key isn't the listener's)."""

    async def main():
        async with await listen("127.0.0.1", 0, identity=SERVICE, handler=_echo) as lst:
            now = time.time()
            host, port = lst.addresses[0]
            svc = DarkService.from_identity(SERVICE, certificate=lst.certificate)
            mallory_cert = MALLORY.issue_certificate([(host, port)], now=now)
            forged = forge(svc.address, period_of(now), 10**12, os.urandom(32), certificate=mallory_cert.to_bytes(),
                           claim_identity_pk=SERVICE.signing_key.public_key.raw, rng=Rng())
            store = DescriptorStore()
            assert store.put(forged, now).accepted
            resolver = Resolver(os.urandom)
            results, _ = drive(resolver, store, resolver.resolve(svc.address, now), now)
            assert not isinstance(results[0], Resolved)
            # A careless client that skips verification and dials with the forged data:
            inner = OuterDescriptor.from_bytes(forged).open(svc.address)
            bogus = NodeCertificate.from_bytes(inner.service_certificate)
            with pytest.raises(ConnectionClosed):
                await connect(host, port, identity=CLIENT, peer_certificate=bogus,
                              expected_peer_id=bogus.node_id, timeout=5)

    run_loop(main, timeout=60)


def test_hijacked_address_refused_by_handshake(run_loop):
    """The name resolves correctly but the network sends the client to Mallory's
    listener: the handshake fails because Mallory cannot prove the expected identity."""

    async def main():
        async with await listen("127.0.0.1", 0, identity=MALLORY, handler=_echo) as evil:
            now = time.time()
            host, port = evil.addresses[0]
            real_cert = SERVICE.issue_certificate([(host, port)], now=now)
            svc = DarkService.from_identity(SERVICE, certificate=real_cert)
            store = DescriptorStore()
            for _, data in Publisher(svc, os.urandom).due(now):
                assert store.put(data, now).accepted
            resolver = Resolver(os.urandom)
            ev = drive(resolver, store, resolver.resolve(svc.address, now), now)[0][0]
            assert isinstance(ev, Resolved)
            with pytest.raises(ConnectionClosed):
                await connect(host, port, identity=CLIENT, peer_certificate=ev.endpoint.certificate,
                              expected_peer_id=ev.endpoint.expected_peer_id, timeout=5)

    run_loop(main, timeout=60)
