"""End-to-end onion throughput over loopback (docs/onion-network.md §Performance).

(a) baseline: a plain 3-hop TCP forwarding chain on uvloop with no crypto at all: three
    asyncio proxies (client -> P1 -> P2 -> P3 -> sink), each copying bytes from one socket
    to the next with flow control (``drain``);
(b) a 3-hop onion circuit (``qudag_io.onion``: client node -> R1 -> R2 -> R3 hosting a
    sink service) over the post-quantum links, same uvloop, same session.

Same payload both ways: 4 MiB in 16 KiB writes; a round ends when the sink has counted
every byte and its 1-byte acknowledgement came back.  Connections / circuits are set up
once, outside the timed rounds.

Run:  PYTHONPATH=. python -m pytest benches/bench_onion_e2e.py --benchmark-only -q -s
(after ``tools/inplace.py csrc/relay.c qudag_core/onion/*.py ...`` for the compiled
build).  The throughput ratio is printed after the last benchmark (medians).
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest
import uvloop

from qudag_core.identity import Identity
from qudag_io.onion import OnionClient, OnionNode, RelayDirectory

TOTAL = 4 << 20
WRITE = 16 << 10
ROUNDS = 3
_RESULTS: dict[str, float] = {}
_CPU: dict[str, float] = {}


@pytest.fixture(scope="module")
def runner():
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        yield r


# -- (a) plain chain ------------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


class PlainChain:
    async def start(self) -> None:
        self.servers = []
        self.tasks: set[asyncio.Task] = set()

        async def sink(reader, writer):
            got = 0
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                got += len(data)
                if got >= TOTAL:
                    got -= TOTAL
                    writer.write(b"\x01")
                    await writer.drain()
            writer.close()

        srv = await asyncio.start_server(sink, "127.0.0.1", 0)
        self.servers.append(srv)
        port = srv.sockets[0].getsockname()[1]
        for _ in range(3):
            port = await self._proxy(port)
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)

    async def _proxy(self, upstream_port: int) -> int:
        async def handle(reader, writer):
            ur, uw = await asyncio.open_connection("127.0.0.1", upstream_port)
            t1 = asyncio.ensure_future(_pipe(reader, uw))
            t2 = asyncio.ensure_future(_pipe(ur, writer))
            self.tasks.update((t1, t2))

        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.servers.append(srv)
        return srv.sockets[0].getsockname()[1]

    async def transfer(self, chunk: bytes) -> None:
        for _ in range(TOTAL // WRITE):
            self.writer.write(chunk)
            await self.writer.drain()
        assert await asyncio.wait_for(self.reader.readexactly(1), 60) == b"\x01"

    async def close(self) -> None:
        self.writer.close()
        for s in self.servers:
            s.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for s in self.servers:
            await s.wait_closed()


# -- (b) onion circuit --------------------------------------------------------------------


class OnionChain:
    async def start(self) -> None:
        directory = RelayDirectory()
        self.nodes = []
        for _ in range(3):
            n = await OnionNode.start(Identity.generate(os.urandom), directory)
            self.nodes.append(n)
            directory.add(n.directory_entry())

        async def sink(stream):
            got = 0
            while True:
                data = await stream.recv()
                if not data:
                    return
                got += len(data)
                if got >= TOTAL:
                    got -= TOTAL
                    await stream.send(b"\x01")

        self.nodes[2].register_service("sink", sink)
        self.client = await OnionNode.start(Identity.generate(os.urandom), directory, relay=False)
        self.circuit = await OnionClient(self.client, per_subnet=None).build_circuit(
            path=[n.node_id for n in self.nodes]
        )
        self.stream = await self.circuit.open_stream(self.nodes[2].node_id, "sink")

    async def transfer(self, chunk: bytes) -> None:
        for _ in range(TOTAL // WRITE):
            await self.stream.send(chunk)
        assert await asyncio.wait_for(self.stream.recv(), 60) == b"\x01"

    async def close(self) -> None:
        await self.stream.close()
        await self.circuit.close()
        for n in [self.client, *self.nodes]:
            await n.close()


def _run(benchmark, runner, chain, name):
    chunk = os.urandom(WRITE)
    runner.run(chain.start())
    cpu: list[float] = []

    def round_() -> None:
        t0 = time.process_time()
        runner.run(chain.transfer(chunk))
        cpu.append(time.process_time() - t0)

    try:
        benchmark.pedantic(round_, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    finally:
        runner.run(chain.close())
    _RESULTS[name] = TOTAL / benchmark.stats.stats.median
    # every node runs in this one process: CPU seconds per round are the cost, and unlike
    # wall time they do not depend on what else the (shared) machine is doing
    _CPU[name] = sorted(cpu[1:])[len(cpu[1:]) // 2]


def test_plain_tcp_chain_3_hops(benchmark, runner):
    _run(benchmark, runner, PlainChain(), "plain")


def test_onion_circuit_3_hops(benchmark, runner):
    _run(benchmark, runner, OnionChain(), "onion")
    if "plain" in _RESULTS:
        plain, onion = _RESULTS["plain"], _RESULTS["onion"]
        print(
            f"\nplain chain {plain / 1e6:.1f} MB/s, onion circuit {onion / 1e6:.1f} MB/s, "
            f"ratio {onion / plain:.3f} (goal 0.4); CPU per round plain {_CPU['plain'] * 1e3:.1f} ms, "
            f"onion {_CPU['onion'] * 1e3:.1f} ms, CPU ratio {_CPU['plain'] / _CPU['onion']:.3f}"
        )
