"""Relay, relayed end-to-end links and DCUtR TCP punching over loopback (no NAT needed).

The namespace matrix (test_nat_matrix.py) runs the same code through real NATs; these
tests check the adapter logic quickly on 127.0.0.1 under both event loops.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import time

import pytest

from qudag_core.identity import Identity
from qudag_core.nat.relay import RelayLimits
from qudag_core.nat.traversal_events import CircuitEnded, RelayRefusal
from qudag_io.link import ConnectionClosed, listen
from qudag_io.traversal import RelayClientLink, RelayError, RelayNode, accept_relayed, establish

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop else [])


def run(loop_name, coro_fn, timeout=30.0):
    async def bounded():
        return await asyncio.wait_for(coro_fn(), timeout)
    if loop_name == "uvloop":
        return uvloop.run(bounded())
    return asyncio.run(bounded())


async def _relay(limits=None):
    ident = Identity.generate(os.urandom)
    node = RelayNode(limits)
    server = await listen("127.0.0.1", 0, identity=ident, handler=node.handle)
    return node, server


async def _client(server, ident=None):
    ident = ident or Identity.generate(os.urandom)
    host, port = server.addresses[0]
    return ident, await RelayClientLink.open(host, port, identity=ident, relay_certificate=server.certificate)


async def _exchange(a, b, size=200_000):
    payload = os.urandom(size)
    chunks = [payload[i:i + 40_000] for i in range(0, size, 40_000)]
    for c in chunks:
        await a.send(c)
    got = b"".join([await b.recv() for _ in chunks])
    assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
    await b.send(b"ack")
    assert await a.recv() == b"ack"


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("punch", [False, True])
def test_relayed_then_maybe_punched(loop_name, punch):
    async def main():
        node, server = await _relay()
        async with server:
            a_id, a = await _client(server)
            b_id, b = await _client(server)
            await b.reserve()
            await a.reserve()
            acc = asyncio.ensure_future(accept_relayed(b, identity=b_id, dial_timeout=2.0))
            res_a = await establish(b_id.node_id, identity=a_id, relay=a, punch=punch, dial_timeout=2.0)
            res_b = await acc
            assert res_a.path == res_b.path == ("punched" if punch else "relay")
            assert res_a.connection.peer_node_id == b_id.node_id
            assert res_b.connection.peer_node_id == a_id.node_id
            await _exchange(res_a.connection, res_b.connection)
            await res_a.connection.close()
            await res_b.connection.close()
            await a.close()
            await b.close()
            node.close()
            if not punch:
                ended = [e for e in node.events if isinstance(e, CircuitEnded)]
                assert ended and ended[0].relayed > 200_000
    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_relay_refuses_without_reservation_and_over_quota(loop_name):
    async def main():
        node, server = await _relay(RelayLimits(reservation_bytes=60_000))
        async with server:
            a_id, a = await _client(server)
            b_id, b = await _client(server)
            with pytest.raises(RelayError) as exc:  # b holds no reservation yet
                await a.open_circuit(b_id.node_id)
            assert exc.value.code == RelayRefusal.NO_RESERVATION
            with pytest.raises(RelayError):  # unknown node id
                await a.open_circuit(os.urandom(20))
            await b.reserve()
            acc = asyncio.ensure_future(accept_relayed(b, identity=b_id, dial_timeout=1.0))
            res_a = await establish(b_id.node_id, identity=a_id, relay=a, punch=False)
            res_b = await acc
            assert res_a.path == "relay"
            # 80 kB exceeds the 60 kB quota: the relay ends the circuit, the link dies.
            await res_a.connection.send(os.urandom(40_000))
            await res_a.connection.send(os.urandom(40_000))
            with pytest.raises(ConnectionClosed):
                for _ in range(3):
                    await asyncio.wait_for(res_b.connection.recv(), 5)
            ended = [e for e in node.events if isinstance(e, CircuitEnded)]
            assert ended and ended[0].code == RelayRefusal.QUOTA_EXCEEDED
            await a.close()
            await b.close()
            node.close()
    run(loop_name, main)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_establish_prefers_direct_then_relay(loop_name):
    """Order: a reachable certificate address wins (path "direct"); a dead one falls
    through to the relay within the direct timeout."""
    async def main():
        node, server = await _relay()
        async with server:
            b_id, b = await _client(server)
            a_id, a = await _client(server)
            await b.reserve()

            async def echo(conn):
                async for m in conn:
                    await conn.send(m)

            async with await listen("127.0.0.1", 0, identity=b_id, handler=echo) as direct:
                addr = direct.addresses[0]
                res = await establish(b_id.node_id, identity=a_id, relay=a, peer_certificate=direct.certificate)
                assert res.path == "direct"
                await _exchange_echo(res.connection)
                await res.connection.close()
            # The listener is gone: its address refuses, so the relay path is taken.
            dead = b_id.issue_certificate([addr], now=time.time())
            acc = asyncio.ensure_future(accept_relayed(b, identity=b_id, dial_timeout=1.0))
            t0 = time.monotonic()
            res = await establish(b_id.node_id, identity=a_id, relay=a, peer_certificate=dead,
                                  direct_timeout=1.0, punch=False)
            assert res.path == "relay" and time.monotonic() - t0 < 5
            other = await acc
            await res.connection.send(b"via relay")
            assert await other.connection.recv() == b"via relay"
            await res.connection.close()
            await a.close()
            await b.close()
            node.close()
    run(loop_name, main)


async def _exchange_echo(conn):
    payload = os.urandom(30_000)
    await conn.send(payload)
    assert await conn.recv() == payload
