"""End-to-end onion throughput over loopback (docs/onion-network.md §Performance).

(a) baseline: a plain 3-hop TCP forwarding chain on uvloop with no crypto at all: three
    asyncio proxies (client -> P1 -> P2 -> P3 -> sink), each copying bytes from one socket
    to the next with flow control (``drain``);
(b) a 3-hop onion circuit (``qudag_io.onion``: client node -> R1 -> R2 -> R3 hosting a
    sink service) over the post-quantum links, same uvloop, same session.

Same payload both ways: 4 MiB in 16 KiB writes, each awaited (``drain`` / ``send``);
both sinks read what has arrived (``read(65536)`` / ``recv()``, which at the exit returns
the run of cells of one link message, up to ~64 KB) and count it; a round ends when the
sink has counted every byte and its 1-byte acknowledgement came back.  Connections /
circuits are set up once, outside the timed rounds.  Both run on the same uvloop loop in
this one process.  The proxies are the ordinary asyncio-streams forwarder (read up to 64
KiB, write, drain): neither a deliberately slow one nor a tuned protocol-level splice.

Figures: wall-clock throughput (pytest-benchmark medians) and CPU seconds per round
(median of the timed rounds).  The CPU ratio is the one to quote: every node of both
chains runs in this process on one thread, so CPU per round is the cost of moving the
4 MiB, and unlike wall time it barely moves with what else the shared machine runs.

After the onion rounds, one more untimed round counts what crossed the links and the
suite measures, with the same kernels, what the cryptography alone costs per round (six
relay-layer passes per cell, a ChaCha20-Poly1305 seal and open of every link message): the
printed decomposition splits onion CPU into that floor and everything else.

Run:  PYTHONPATH=. python -m pytest benches/bench_onion_e2e.py --benchmark-only -q -s
(after ``tools/inplace.py $(find qudag_core -name '*.py' ! -name '__init__.py') csrc/*.c``
for the compiled build).  Ratios and decomposition are printed after the last benchmark.
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
ROUNDS = 5
_RESULTS: dict[str, float] = {}
_CPU: dict[str, float] = {}
_FLOOR: dict[str, float] = {}


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

    async def count_round(self, chunk: bytes) -> dict:
        """One more (untimed) round with the link hooks on: what crossed the links."""
        sizes: list[int] = []
        client_cells = [0]

        def any_send(peer, msg):
            sizes.append(len(msg))

        def client_io(peer, msg):
            client_cells[0] += len(msg) // 1024

        for n in self.nodes:
            n.link_send_hook = any_send
        self.client.link_send_hook = lambda peer, msg: (any_send(peer, msg), client_io(peer, msg))
        self.client.link_recv_hook = client_io
        try:
            await self.transfer(chunk)
        finally:
            for n in [self.client, *self.nodes]:
                n.link_send_hook = n.link_recv_hook = None
        return {"message_sizes": sizes, "client_cells": client_cells[0]}

    async def close(self) -> None:
        await self.stream.close()
        await self.circuit.close()
        for n in [self.client, *self.nodes]:
            await n.close()


def _best(fn, repeat: int = 3) -> float:
    """Lowest CPU seconds of ``repeat`` calls of ``fn`` (the floor, not a typical run)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def _crypto_floor(counts: dict) -> tuple[float, float, int]:
    """CPU seconds per round that the onion's cryptography alone costs, measured now with
    the same kernels: (relay layers, link AEAD, relay-layer passes).

    Relay layers: every cell, either way, gets six passes (client three, each relay one;
    backward: exit, two relays, client three).  Counted on the client's link, the mix per
    forward cell is one originating and two plain adds and three peels, done here on
    64-cell buffers.  Link AEAD: one seal and one open (FrameCipher, the link's kernel) of
    every link message sent in the counting round, at its size."""
    from qudag_core.channel.frames import FrameCipher
    from qudag_core.onion.relaycrypto import BACKWARD, FORWARD, new_layer

    cells = counts["client_cells"]
    batches = max(1, round(cells / 64))
    layers = [new_layer(os.urandom(32), FORWARD if i < 3 else BACKWARD, 1024, 5) for i in range(6)]
    buf = bytearray(os.urandom(64 * 1024))

    def relay_passes() -> None:
        for _ in range(batches):
            layers[0].encrypt(buf, originate=True)
            layers[1].encrypt(buf)
            layers[2].encrypt(buf)
            layers[3].decrypt(buf)
            layers[4].decrypt(buf)
            layers[5].decrypt(buf)

    relay = _best(relay_passes) * cells / (batches * 64)
    fc = FrameCipher(os.urandom(32))
    payloads = {n: os.urandom(n) for n in set(counts["message_sizes"])}
    frames = {n: fc.seal_frame(0, 0, p) for n, p in payloads.items()}

    def link_aead() -> None:
        for n in counts["message_sizes"]:
            fc.seal_frame(0, 0, payloads[n])
            fc.open_frame(0, frames[n])

    return relay, _best(link_aead), 6 * cells


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
        if isinstance(chain, OnionChain):
            _FLOOR.update(zip(("relay", "link", "passes"), _crypto_floor(runner.run(chain.count_round(chunk)))))
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
    if _FLOOR:
        floor = _FLOOR["relay"] + _FLOOR["link"]
        print(
            f"onion CPU per round {_CPU['onion'] * 1e3:.1f} ms = crypto floor {floor * 1e3:.1f} ms "
            f"(relay layers {_FLOOR['relay'] * 1e3:.1f} ms for {_FLOOR['passes']} passes, link AEAD "
            f"{_FLOOR['link'] * 1e3:.1f} ms) + everything else {(_CPU['onion'] - floor) * 1e3:.1f} ms "
            f"(Python, copies, syscalls, event loop)"
        )
        if "plain" in _CPU:
            print(
                f"everything else is {(_CPU['onion'] - floor) / _CPU['plain']:.2f}x the whole plain chain; "
                f"with no overhead beyond the plain chain's the CPU ratio would be "
                f"{_CPU['plain'] / (_CPU['plain'] + floor):.3f}"
            )
