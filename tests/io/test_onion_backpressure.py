"""Relay backpressure over real loopback links (qudag_io.onion; docs/onion.md §4.1).

A relay whose mixer or outbound link queue is full stops reading its inbound links (TCP
then pushes back on the sender) instead of dropping cells: streams through a relay with
a tiny mixer arrive whole, the drop counters stay at 0, the mixer never holds more than
``max_queue``; a paused reader still ends when its link closes or its node shuts down;
two relays whose circuits run back and forth over the one link between them (the same
link in and out) do not deadlock.  Runs under asyncio's default loop and uvloop.
"""
from __future__ import annotations

import asyncio
import logging
import os
import random
from collections import deque

import pytest

import qudag_io.onion as onion
from qudag_core.identity import Identity
from qudag_io.onion import LINK_HIGH, MixerConfig, OnionClient, OnionNode, RelayDirectory

IDS = [Identity.generate(os.urandom) for _ in range(5)]  # key generation once per module
TINY = MixerConfig(mean_delay=0.001, max_queue=64)  # a real delay: cells accumulate


class _PeakDeque(deque):
    """The relay's mixer backlog, remembering how long it ever got."""

    peak = 0

    def append(self, item) -> None:  # type: ignore[override]
        super().append(item)
        self.peak = max(self.peak, len(self))


class _CountingEvent(asyncio.Event):
    """The relay's mixer-room event, counting how often a reader had to wait for it."""

    clears = 0

    def clear(self) -> None:
        self.clears += 1
        super().clear()


class Sampler:
    """Samples a relay's mixer length every millisecond and at every link message."""

    def __init__(self, relay: OnionNode) -> None:
        self.relay = relay
        self.peak = 0
        self.samples = 0
        relay.link_recv_hook = relay.link_send_hook = lambda peer, msg: self.sample()
        self._task = asyncio.ensure_future(self._run())

    def sample(self) -> None:
        self.samples += 1
        self.peak = max(self.peak, len(self.relay.mixer))

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(0.001)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def _echo(stream) -> None:
    while True:
        data = await stream.recv()
        if not data:
            return
        await stream.send(data)


async def _start(n: int, mixers: list[MixerConfig]) -> tuple[list[OnionNode], OnionNode, RelayDirectory]:
    directory = RelayDirectory()
    nodes: list[OnionNode] = []
    try:
        for ident, mixer in zip(IDS[:n], mixers):
            node = await OnionNode.start(ident, directory, mixer=mixer)
            node.register_service("echo", _echo)
            nodes.append(node)
            directory.add(node.directory_entry())
        client = await OnionNode.start(IDS[4], directory, relay=False)
    except BaseException:
        for node in nodes:
            await node.close()
        raise
    return nodes, client, directory


async def _echo_through(circ, size: int, seed: int) -> None:
    """``size`` random bytes to the exit's echo service and back, compared byte for byte
    (sending and reading concurrently, as the windows require)."""
    stream = await circ.open_stream(circ.exit_node_id, "echo")
    data = random.Random(seed).randbytes(size)
    got = bytearray()

    async def reader() -> None:
        while len(got) < size:
            chunk = await stream.recv()
            assert chunk, f"stream ended after {len(got)} of {size} bytes"
            got.extend(chunk)

    rt = asyncio.ensure_future(reader())
    try:
        for i in range(0, size, 16384):
            await stream.send(data[i : i + 16384])
        await rt
    finally:
        rt.cancel()
        await asyncio.gather(rt, return_exceptions=True)
    assert bytes(got) == data  # intact and in order
    await stream.close()


def _no_drops(*nodes: OnionNode) -> None:
    for node in nodes:
        assert node.cells_dropped_mixer_full == 0
        assert node.cells_dropped_link_closed == 0
        assert not node._mix_backlog


def test_tiny_mixer_relay_carries_1mib_each_way_without_loss(run_loop):
    """R1 -> R2 -> R3(echo), R2 with a 64-cell mixer and a 1 ms mean delay: 1 MiB goes
    out and comes back through it intact; nothing dropped, R2's mixer never above 64, and
    nothing ever waited in its backlog (every admitted message fit in the mixer)."""

    async def main():
        (r1, r2, r3), client, _ = await _start(3, [MixerConfig(), TINY, MixerConfig()])
        r2._mix_backlog = backlog = _PeakDeque()
        r2._mix_room = room = _CountingEvent()
        room.set()
        sampler = Sampler(r2)
        try:
            assert r2._mix_gated and r2._mix_high == 0  # 64 < 2 x 64 cells: admit when empty
            circ = await OnionClient(client, per_subnet=None).build_circuit(
                path=[r1.node_id, r2.node_id, r3.node_id]
            )
            await _echo_through(circ, 1 << 20, 1)
            assert circ.is_open
            _no_drops(r1, r2, r3, client)
            assert sampler.samples > 100
            assert 0 < sampler.peak <= TINY.max_queue
            assert backlog.peak == 0
            assert room.clears > 10  # R2's readers did pause for the mixer (the old code dropped here)
            assert r2.relay.cells_relayed >= 2 * (1 << 20) // 1024  # the stream crossed R2
            await circ.close()
        finally:
            await sampler.stop()
            for node in (client, r1, r2, r3):
                await node.close()

    run_loop(main, 90)


def test_relay_with_room_for_a_message_keeps_its_mixer_under_the_watermark(run_loop):
    """With ``max_queue`` above two maximal link messages the reader pauses at the high
    watermark: the mixer holds at most high + one message's output, never ``max_queue``."""

    async def main():
        cfg = MixerConfig(mean_delay=0.002, max_queue=200)
        (r1, r2, r3), client, _ = await _start(3, [MixerConfig(), cfg, MixerConfig()])
        sampler = Sampler(r2)
        try:
            assert r2._mix_high == 200 - 2 * 64 and r2._mix_low == r2._mix_high // 2
            circ = await OnionClient(client, per_subnet=None).build_circuit(
                path=[r1.node_id, r2.node_id, r3.node_id]
            )
            await _echo_through(circ, 512 << 10, 2)
            _no_drops(r1, r2, r3, client)
            assert sampler.peak <= r2._mix_high + 64 < cfg.max_queue
            await circ.close()
        finally:
            await sampler.stop()
            for node in (client, r1, r2, r3):
                await node.close()

    run_loop(main, 90)


@pytest.mark.parametrize("end", ["link_closed", "node_closed"])
def test_reader_paused_for_the_mixer_ends_when_its_link_or_node_closes(run_loop, end):
    """R2's mixer is made to hold cells for ~30 s (after the circuit is built), so its
    reader pauses; closing the link it reads (R1 aborts it) or shutting R2 down ends the
    pause at once, and every task of every node ends."""

    async def main():
        pre = asyncio.all_tasks()
        (r1, r2, r3), client, _ = await _start(3, [MixerConfig(), TINY, MixerConfig()])
        nodes = [client, r1, r2, r3]
        try:
            circ = await OnionClient(client, per_subnet=None).build_circuit(
                path=[r1.node_id, r2.node_id, r3.node_id]
            )
            r2.mixer._mean = 30.0  # the mixer's one knob, turned after the build
            circ.send_drop(b"x" * 100)  # reaches R2 and waits in its mixer
            for _ in range(200):
                if len(r2.mixer):
                    break
                await asyncio.sleep(0.01)
            assert len(r2.mixer) == 1 and r2._mix_high == 0
            relayed = r2.relay.cells_relayed
            for _ in range(3):
                circ.send_drop(b"y")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            # paused: R2 holds the next message and reads nothing more from R1
            assert r2.relay.cells_relayed == relayed and len(r2.mixer) == 1
            inbound = r2._links_by_peer[r1.node_id]
            if end == "link_closed":
                r1._links_by_peer[r2.node_id].abort()
                for _ in range(200):
                    if inbound.id not in r2._links_by_id:
                        break
                    await asyncio.sleep(0.01)
                assert inbound.id not in r2._links_by_id and inbound.closed  # its read loop ended
            else:
                await asyncio.wait_for(r2.close(), 5.0)
                assert inbound.closed and not r2._tasks
        finally:
            for node in nodes:
                await asyncio.wait_for(node.close(), 10.0)
        # every task any node started has ended (listeners' handlers included)
        others = [t for t in asyncio.all_tasks() - pre if t is not asyncio.current_task()]
        for _ in range(100):
            if all(t.done() for t in others):
                break
            await asyncio.sleep(0.01)
        assert all(t.done() for t in others), [t for t in others if not t.done()]

    run_loop(main, 60)


def test_reader_paused_for_a_stuck_outbound_link_ends_when_its_link_closes(run_loop):
    """R2's link to R3 stops writing (hung peer): R2 queues what the stream sends until the
    link is over ``LINK_HIGH``, then stops reading from R1 instead of queueing more; when
    R1's link to it is aborted the paused reader ends (the stuck link does not hold it)."""

    async def main():
        pre = asyncio.all_tasks()
        (r1, r2, r3), client, _ = await _start(3, [MixerConfig(), MixerConfig(), MixerConfig()])
        nodes = [client, r1, r2, r3]
        senders = []
        try:
            circ = await OnionClient(client, per_subnet=None).build_circuit(
                path=[r1.node_id, r2.node_id, r3.node_id]
            )
            streams = [await _open(circ) for _ in range(2)]  # 2 x 500 cells of window
            out = r2._links_by_peer[r3.node_id]
            out.writer.cancel()  # R2 -> R3 writes nothing more; the link stays open
            await asyncio.sleep(0)
            senders += [asyncio.ensure_future(st.send(os.urandom(400 * 1000))) for st in streams]
            for _ in range(300):
                if out.pending_cells > LINK_HIGH:
                    break
                await asyncio.sleep(0.01)
            assert out.pending_cells > LINK_HIGH
            await asyncio.sleep(0.1)
            relayed, queued = r2.relay.cells_relayed, out.pending_cells
            for _ in range(3):
                circ.send_drop(b"z")
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            # R2 stopped reading: it holds one message and relays nothing more
            assert r2.relay.cells_relayed == relayed and out.pending_cells == queued
            inbound = r2._links_by_peer[r1.node_id]
            r1._links_by_peer[r2.node_id].abort()
            for _ in range(200):
                if inbound.id not in r2._links_by_id:
                    break
                await asyncio.sleep(0.01)
            assert inbound.closed and inbound.id not in r2._links_by_id
        finally:
            for node in nodes:
                await asyncio.wait_for(node.close(), 10.0)
        for t in senders:
            t.cancel()  # failed with the circuit, or still waiting for its window
        await asyncio.gather(*senders, return_exceptions=True)
        others = [t for t in asyncio.all_tasks() - pre if t is not asyncio.current_task()]
        for _ in range(100):
            if all(t.done() for t in others):
                break
            await asyncio.sleep(0.01)
        assert all(t.done() for t in others), [t for t in others if not t.done()]

    run_loop(main, 60)


async def _open(circ):
    return await circ.open_stream(circ.exit_node_id, "echo")


def test_two_relays_ping_pong_over_one_link_do_not_deadlock(run_loop, monkeypatch):
    """Circuits A -> B -> A and B -> A -> B (explicit paths: a relay may appear twice, not
    twice in a row), echo at the exits, tiny mixers on both relays and a link watermark of
    16 cells so every pause engages: each relay reads from the link it writes to, and
    both push to each other at once.  Both 256 KiB round trips complete, nothing lost."""
    monkeypatch.setattr(onion, "LINK_HIGH", 16)

    async def main():
        (a, b), client, _ = await _start(2, [TINY, TINY])
        try:
            oc = OnionClient(client, per_subnet=None)
            c1 = await oc.build_circuit(path=[a.node_id, b.node_id, a.node_id])
            c2 = await oc.build_circuit(path=[b.node_id, a.node_id, b.node_id])
            assert len(a._links_by_id) == len(b._links_by_id) == 2  # client + the A-B link
            await asyncio.gather(_echo_through(c1, 256 << 10, 3), _echo_through(c2, 256 << 10, 4))
            _no_drops(a, b, client)
            assert c1.is_open and c2.is_open
            await c1.close()
            await c2.close()
        finally:
            for node in (client, a, b):
                await node.close()

    run_loop(main, 90)


def _shrink(conn, opt) -> None:
    """Tests: a small kernel socket buffer, so a peer that stops reading is felt at once."""
    import socket

    sock = conn._p.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, opt, 4096)


def test_hung_next_hop_is_aborted_and_the_paused_reader_resumes(run_loop, monkeypatch, caplog):
    """R3 stops reading its link from R2 (hung, not closed): R2's writer blocks on the full
    socket, its readers pause behind it; after ``LINK_STALL_TIMEOUT`` R2 aborts that link
    (the circuit on it is destroyed, its queued cells counted as dropped for a closed link)
    and reading from R1 resumes: a new circuit through R2 carries data again."""
    import socket

    monkeypatch.setattr(onion, "LINK_STALL_TIMEOUT", 0.5)
    caplog.set_level(logging.WARNING, logger="qudag.onion")

    async def main():
        (r1, r2, r3), client, _ = await _start(3, [MixerConfig(), MixerConfig(), MixerConfig()])
        senders = []
        try:
            path = [r1.node_id, r2.node_id, r3.node_id]
            circ = await OnionClient(client, per_subnet=None).build_circuit(path=path)
            streams = [await _open(circ) for _ in range(2)]
            out = r2._links_by_peer[r3.node_id]
            far = r3._links_by_peer[r2.node_id]
            _shrink(out.conn, socket.SO_SNDBUF)
            _shrink(far.conn, socket.SO_RCVBUF)
            far.conn.freeze()  # R3 reads nothing more from R2 (and sends nothing)
            senders += [asyncio.ensure_future(st.send(os.urandom(400 * 1000))) for st in streams]
            exc = await asyncio.wait_for(circ.closed, 10.0)  # destroyed once R2 gave up the link
            assert exc.remote
            assert out.closed and r2._links_by_peer.get(r3.node_id) is not out
            assert "stalled" in caplog.text  # R2 aborted it (nothing else closes a frozen link)
            assert r2.cells_dropped_link_closed > 0  # what was queued for the dead link
            assert r2.cells_dropped_mixer_full == 0
            assert not r2._links_by_peer[r1.node_id].closed  # the inbound link survived
            far.abort()
            circ2 = await OnionClient(client, per_subnet=None).build_circuit(path=path)
            await _echo_through(circ2, 64 << 10, 5)
            await circ2.close()
        finally:
            for t in senders:
                t.cancel()
            await asyncio.gather(*senders, return_exceptions=True)
            for node in (client, r1, r2, r3):
                await asyncio.wait_for(node.close(), 10.0)

    run_loop(main, 60)
