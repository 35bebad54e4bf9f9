"""The TCP link adapter over real loopback sockets, under asyncio and uvloop."""
from __future__ import annotations

import asyncio
import hashlib
import os
import random

import ipaddress
import socket

import pytest
from hypothesis import given, strategies as st

from qudag_core.channel import ChannelConfig
from qudag_core.identity import Identity
from qudag_core.link import LinkConfig
from qudag_io.link import ConnectionClosed, connect, listen, source_address
from qudag_io.loopback import can_bind

ALICE = Identity.generate(os.urandom)
BOB = Identity.generate(os.urandom)


def _sizes(n: int, seed: int) -> list[int]:
    rnd = random.Random(seed)
    return [rnd.randrange(0, 65536) if rnd.random() < 0.02 else rnd.randrange(0, 2048) for _ in range(n)]


def test_ten_thousand_messages_hash_verified(run_loop):
    """Two nodes complete the handshake over real sockets and exchange 10,000 messages
    of random sizes in each direction, verified by a running SHA-256 on both ends."""
    n = 10_000

    async def main():
        server_digest = asyncio.get_running_loop().create_future()

        async def handler(conn):
            h_in, h_out = hashlib.sha256(), hashlib.sha256()

            async def reader():
                for _ in range(n):
                    m = await conn.recv()
                    h_in.update(len(m).to_bytes(4, "big") + m)

            async def writer():
                rnd = random.Random(2)
                for size in _sizes(n, 2):
                    m = rnd.randbytes(size)
                    h_out.update(len(m).to_bytes(4, "big") + m)
                    await conn.send(m)

            await asyncio.gather(reader(), writer())
            server_digest.set_result((h_in.digest(), h_out.digest()))
            await conn.recv()  # wait for the client's close

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler) as lst:
            host, port = lst.addresses[0]
            async with await connect(host, port, identity=ALICE, peer_certificate=lst.certificate) as conn:
                assert conn.peer_node_id == BOB.node_id
                h_out, h_in = hashlib.sha256(), hashlib.sha256()

                async def writer():
                    rnd = random.Random(1)
                    for size in _sizes(n, 1):
                        m = rnd.randbytes(size)
                        h_out.update(len(m).to_bytes(4, "big") + m)
                        await conn.send(m)

                async def reader():
                    for _ in range(n):
                        m = await conn.recv()
                        h_in.update(len(m).to_bytes(4, "big") + m)

                await asyncio.gather(writer(), reader())
                srv_in, srv_out = await server_digest
                assert srv_in == h_out.digest()
                assert srv_out == h_in.digest()

    run_loop(main, timeout=120)


def test_send_on_a_closing_link_is_connection_closed(run_loop):
    """Between our close() and the transport reporting the end, a send is refused with
    ``ConnectionClosed`` (what callers handle), not the core's ``LinkNotEstablished``."""

    async def main():
        async def handler(conn):
            try:
                while True:
                    await conn.recv()
            except ConnectionClosed:
                pass

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler) as lst:
            host, port = lst.addresses[0]
            conn = await connect(host, port, identity=ALICE, peer_certificate=lst.certificate)
            await conn.send(b"before")
            assert not conn.is_closed
            closing = asyncio.create_task(conn.close())
            await asyncio.sleep(0)  # close() has ended the core and now waits for the transport
            with pytest.raises(ConnectionClosed):
                conn.send_nowait(b"after")
            with pytest.raises(ConnectionClosed):
                await conn.send(b"after")
            await closing
            assert conn.is_closed
            await asyncio.wait_for(conn.wait_closed(), 1.0)
            with pytest.raises(ConnectionClosed):
                await conn.send(b"after")

    run_loop(main, timeout=30)


def test_connect_by_identity_without_certificate(run_loop):
    async def main():
        async def handler(conn):
            async for m in conn:
                await conn.send(m[::-1])

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler) as lst:
            host, port = lst.addresses[0]
            async with await connect(host, port, identity=ALICE, expected_peer_id=BOB.node_id) as conn:
                await conn.send(b"abc")
                assert await conn.recv() == b"cba"
            with pytest.raises(ConnectionClosed):
                await connect(host, port, identity=ALICE, expected_peer_id=ALICE.node_id, timeout=5)

    run_loop(main)


def test_garbage_and_silent_clients_do_not_stop_the_listener(run_loop):
    """Raw garbage, a truncated handshake and a silent client each get dropped (the
    silent one at the handshake timeout); the listener keeps serving."""
    cfg = LinkConfig(handshake_timeout=0.5)

    async def main():
        served = []

        async def handler(conn):
            served.append(conn.peer_node_id)
            await conn.send(b"hi")

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler, config=cfg) as lst:
            host, port = lst.addresses[0]
            bad = []
            for payload in (os.urandom(5000), b"\x00" * 3, b""):
                r, w = await asyncio.open_connection(host, port)
                if payload:
                    w.write(payload)
                bad.append((r, w))
            for r, w in bad:
                # The listener closes each bad connection: EOF within a bounded time.
                data = await asyncio.wait_for(r.read(), 5)
                assert len(data) < 100_000
                w.close()
            async with await connect(host, port, identity=ALICE, peer_certificate=lst.certificate) as conn:
                assert await conn.recv() == b"hi"
            assert served == [ALICE.node_id]

    run_loop(main)


def test_cookie_mode_under_load_still_connects(run_loop):
    """With the cookie threshold at zero every inbound handshake is 'under load': the
    responder demands a cookie before any KEM work and the initiator retries with it."""
    cfg = LinkConfig(cookie_threshold=0)

    async def main():
        async def handler(conn):
            await conn.send(await conn.recv())

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler, config=cfg) as lst:
            host, port = lst.addresses[0]
            conns = await asyncio.gather(
                *[connect(host, port, identity=ALICE, peer_certificate=lst.certificate) for _ in range(3)]
            )
            for i, c in enumerate(conns):
                await c.send(bytes([i]))
                assert await c.recv() == bytes([i])
                await c.close()

    run_loop(main)


def test_keepalive_holds_idle_link_open(run_loop):
    """Keepalive PINGs keep an idle link alive past the idle timeout; both ends stay open."""
    cfg = LinkConfig(channel=ChannelConfig(keepalive_interval=0.1, idle_timeout=0.4))

    async def main():
        done = asyncio.Event()

        async def handler(conn):
            await done.wait()
            await conn.send(b"still here")

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler, config=cfg) as lst:
            host, port = lst.addresses[0]
            async with await connect(host, port, identity=ALICE, peer_certificate=lst.certificate,
                                     config=cfg) as conn:
                await asyncio.sleep(1.2)
                assert not conn.is_closed
                done.set()
                assert await conn.recv() == b"still here"

    run_loop(main)


def test_idle_peer_is_dropped(run_loop):
    """A peer that completes the handshake and then goes silent (no keepalives) is
    dropped after the idle timeout."""
    server_cfg = LinkConfig(channel=ChannelConfig(keepalive_interval=None, idle_timeout=0.3))
    client_cfg = LinkConfig(channel=ChannelConfig(keepalive_interval=None, idle_timeout=None))

    async def main():
        ended = asyncio.get_running_loop().create_future()

        async def handler(conn):
            try:
                await conn.recv()
            except ConnectionClosed as exc:
                ended.set_result(exc)

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler, config=server_cfg) as lst:
            host, port = lst.addresses[0]
            conn = await connect(host, port, identity=ALICE, peer_certificate=lst.certificate, config=client_cfg)
            exc = await asyncio.wait_for(ended, 5)
            assert not exc.by_peer
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 5)
            await conn.close()

    run_loop(main)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_127_8 = pytest.mark.skipif(not can_bind(["127.6.0.1", "127.7.0.1"]),
                                 reason="this system binds only 127.0.0.1 on loopback")


@needs_127_8
def test_connect_local_addr_is_the_source_the_listener_sees(run_loop):
    """``connect(local_addr=...)``: the accepting side's transport reports that address as
    the peer; without it the kernel picks (127.0.0.1 on Linux), not the node's address."""

    async def main():
        seen: asyncio.Queue = asyncio.Queue()

        async def handler(conn):
            await seen.put(conn.remote_address)
            async for m in conn:
                await conn.send(m)

        async with await listen("127.6.0.1", 0, identity=BOB, handler=handler) as lst:
            host, port = lst.addresses[0]
            async with await connect(host, port, identity=ALICE, peer_certificate=lst.certificate,
                                     local_addr=("127.7.0.1", 0)) as conn:
                await conn.send(b"x")
                assert await conn.recv() == b"x"
                peer = await asyncio.wait_for(seen.get(), 5)
                assert peer[0] == "127.7.0.1" and conn.local_address[0] == "127.7.0.1"
                assert peer[1] == conn.local_address[1] != 0  # port 0: the kernel picked one
            async with await connect(host, port, identity=ALICE, peer_certificate=lst.certificate) as conn:
                await conn.send(b"y")
                assert await conn.recv() == b"y"
                assert (await asyncio.wait_for(seen.get(), 5))[0] != "127.7.0.1"

    run_loop(main)


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
@needs_127_8
def test_source_address_picks_the_bound_address_of_the_peers_family(run_loop):
    """A node bound to 127.7.0.1 and ::1 dials an IPv6 peer from ::1 and an IPv4 peer
    from 127.7.0.1; what each listener sees is that address."""
    bound = ["127.7.0.1", "::1"]

    async def main():
        seen: asyncio.Queue = asyncio.Queue()

        async def handler(conn):
            await seen.put(conn.remote_address[0])
            await conn.recv()

        async with await listen("::1", 0, identity=BOB, handler=handler) as v6, \
                await listen("127.6.0.1", 0, identity=BOB, handler=handler) as v4:
            for lst, want in ((v6, "::1"), (v4, "127.7.0.1")):
                host, port = lst.addresses[0]
                async with await connect(host, port, identity=ALICE, peer_certificate=lst.certificate,
                                         local_addr=source_address(host, bound)):
                    assert await asyncio.wait_for(seen.get(), 5) == want

    run_loop(main)


def test_connect_local_addr_not_on_this_machine_is_oserror(run_loop):
    """A source address the machine does not have (TEST-NET-1) fails the dial with
    ``OSError`` before any handshake; so does one of the other family."""

    async def main():
        async def handler(conn):
            await conn.recv()

        async with await listen("127.0.0.1", 0, identity=BOB, handler=handler) as lst:
            host, port = lst.addresses[0]
            with pytest.raises(OSError):
                await connect(host, port, identity=ALICE, peer_certificate=lst.certificate,
                              local_addr=("192.0.2.1", 0), timeout=5)
            if _has_ipv6_loopback():
                with pytest.raises(OSError):
                    await connect(host, port, identity=ALICE, peer_certificate=lst.certificate,
                                  local_addr=("::1", 0), timeout=5)

    run_loop(main)


@pytest.mark.parametrize("peer, bound, want", [
    ("127.8.0.1", ["127.7.0.1"], ("127.7.0.1", 0)),         # loopback node, loopback peer
    ("127.0.0.1", ["127.7.0.1"], ("127.7.0.1", 0)),
    ("198.51.100.7", ["203.0.113.5"], ("203.0.113.5", 0)),  # a node on a public address
    ("127.0.0.1", ["203.0.113.5"], ("203.0.113.5", 0)),     # public source reaches local peers
    ("198.51.100.7", ["127.7.0.1"], None),                   # loopback cannot reach another host
    ("127.8.0.1", ["0.0.0.0"], None),                        # wildcard: the kernel's choice
    ("::1", ["::"], None),
    ("::1", ["127.7.0.1"], None),                            # no bound address of the family
    ("127.8.0.1", ["::1"], None),
    ("::1", ["127.7.0.1", "::1"], ("::1", 0)),               # the one of the peer's family
    ("127.8.0.1", ["::1", "127.7.0.1"], ("127.7.0.1", 0)),
    ("127.8.0.1", ["0.0.0.0", "127.7.0.1"], None),           # first of the family decides
    ("localhost", ["127.7.0.1"], None),                      # a name: family unknown
    ("relay.example", ["203.0.113.5"], None),
    ("127.8.0.1", ["localhost", "127.7.0.1"], ("127.7.0.1", 0)),  # names among bound skipped
    ("127.8.0.1", [], None),
])
def test_source_address_table(peer, bound, want):
    assert source_address(peer, bound) == want


_hosts = st.one_of(
    st.ip_addresses().map(str),
    st.sampled_from(["0.0.0.0", "::", "127.0.0.1", "::1", "localhost", "", "fe80::1%eth0"]),
    st.text(max_size=40),
)


@given(_hosts, st.lists(_hosts, max_size=4))
def test_source_address_is_a_bound_ip_of_the_peers_family_or_none(peer, bound):
    """Any input: None, or ``(h, 0)`` with ``h`` one of ``bound``, an IP address of the
    peer's family that is not a wildcard and not loopback facing a non-loopback peer."""
    got = source_address(peer, bound)
    if got is None:
        return
    h, port = got
    assert port == 0 and h in bound
    ip, pip = ipaddress.ip_address(h.split("%")[0]), ipaddress.ip_address(peer.split("%")[0])
    assert ip.version == pip.version and not ip.is_unspecified
    assert pip.is_loopback or not ip.is_loopback
