"""Onion routing over real loopback links (qudag_io.onion; docs/onion-network.md).

Every node is a separate ``OnionNode`` with its own listener; cells travel as link
messages over the post-quantum TCP links.  Runs under asyncio's default loop and uvloop.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import random
import time

import pytest

from qudag_core.channel import ChannelConfig
from qudag_core.identity import Identity
from qudag_core.link import LinkConfig
from qudag_core.onion.cells import CELL_SIZE, CellCommand, DestroyReason, RELAY_DATA_MAX
from qudag_core.onion.path import NotEnoughRelays
from qudag_io.link import ConnectionClosed, connect
from qudag_io.loopback import can_bind
from qudag_io.onion import (
    CircuitError,
    DirectoryEntry,
    MixerConfig,
    OnionClient,
    OnionNode,
    RelayDirectory,
    StreamClosed,
)

IDS = [Identity.generate(os.urandom) for _ in range(4)]  # relay/keygen work once per module


class Net:
    """Three relays R1..R3 (R3 hosts the services) and a client-only node C."""

    def __init__(self, relays, client, directory):
        self.relays, self.client_node, self.directory = relays, client, directory

    @classmethod
    async def start(cls, *, link_config=None, **kw):
        directory = RelayDirectory()
        relays = []
        try:
            for ident in IDS[:3]:
                n = await OnionNode.start(ident, directory, link_config=link_config, **kw)
                relays.append(n)
                directory.add(n.directory_entry())
            client = await OnionNode.start(IDS[3], directory, relay=False, link_config=link_config)
        except BaseException:
            for n in relays:
                await n.close()
            raise
        return cls(relays, client, directory)

    async def circuit(self):
        r = self.relays
        return await OnionClient(self.client_node, per_subnet=None).build_circuit(
            path=[r[0].node_id, r[1].node_id, r[2].node_id]
        )

    async def close(self):
        for n in [self.client_node, *self.relays]:
            await n.close()


def _frame(m: bytes) -> bytes:
    return len(m).to_bytes(4, "big") + m


async def _digest_service(stream):
    """Reads framed messages until a zero-length frame, answers with the SHA-256 of all."""
    h = hashlib.sha256()
    n = 0
    while True:
        size = int.from_bytes(await stream.readexactly(4), "big")
        if size == 0:
            break
        h.update(await stream.readexactly(size))
        n += 1
    await stream.send(n.to_bytes(4, "big") + h.digest())


async def _echo(stream):
    while True:
        data = await stream.recv()
        if not data:
            return
        await stream.send(data)


def test_three_hop_transfer_sha256(run_loop):
    """1 MiB and 100 random-sized messages through 3 relays; SHA-256 equal on both ends."""

    async def main():
        net = await Net.start()
        try:
            net.relays[2].register_service("digest", _digest_service)
            circ = await net.circuit()
            assert circ.node_ids == [r.node_id for r in net.relays]
            # every relay is a separate node on its own socket; the circuit uses them all
            assert [r.relay.circuit_count for r in net.relays] == [1, 1, 1]
            stream = await circ.open_stream(net.relays[2].node_id, "digest")
            rnd = random.Random(7)
            msgs = [rnd.randbytes(1 << 20)] + [rnd.randbytes(rnd.randrange(0, 20000) + 1) for _ in range(100)]
            h = hashlib.sha256()
            for m in msgs:
                h.update(m)
                await stream.send(_frame(m))
            await stream.send((0).to_bytes(4, "big"))
            reply = await stream.readexactly(36)
            assert int.from_bytes(reply[:4], "big") == len(msgs)
            assert reply[4:] == h.digest()
            await stream.close()
            await circ.close()
            # DESTROY travelled the whole path
            for _ in range(200):
                if all(r.relay.circuit_count == 0 for r in net.relays):
                    break
                await asyncio.sleep(0.01)
            assert [r.relay.circuit_count for r in net.relays] == [0, 0, 0]
        finally:
            await net.close()

    run_loop(main, 120)


def test_service_reads_runs_of_cells(run_loop):
    """The exit hands a run of DATA cells that arrived in one link message to the service
    as one ``recv()`` (docs/onion-network.md §Performance), in order and complete: a
    256 KiB write arrives in far fewer reads than cells, byte for byte."""

    async def main():
        net = await Net.start()
        try:
            sizes: list[int] = []
            h = hashlib.sha256()

            async def sink(stream):
                total = 0
                while total < len(blob):
                    data = await stream.recv()
                    if not data:
                        return
                    sizes.append(len(data))
                    h.update(data)
                    total += len(data)
                await stream.send(b"ok")

            blob = random.Random(3).randbytes(256 << 10)
            net.relays[2].register_service("sink", sink)
            circ = await net.circuit()
            stream = await circ.open_stream(net.relays[2].node_id, "sink")
            await stream.send(blob)
            assert await stream.readexactly(2) == b"ok"
            cells = -(-len(blob) // RELAY_DATA_MAX)
            assert sum(sizes) == len(blob) and h.digest() == hashlib.sha256(blob).digest()
            assert max(sizes) > RELAY_DATA_MAX and len(sizes) < cells // 4
            await circ.close()
        finally:
            await net.close()

    run_loop(main, 60)


def test_unknown_service_refused(run_loop):
    async def main():
        net = await Net.start()
        try:
            circ = await net.circuit()
            with pytest.raises(ConnectionRefusedError):
                await circ.open_stream(net.relays[2].node_id, "nope")
            with pytest.raises(ValueError):
                await circ.open_stream(net.relays[1].node_id, "digest")  # not the last hop
            await circ.close()
        finally:
            await net.close()

    run_loop(main, 60)


def test_service_sending_on_a_circuit_the_core_already_dropped_gets_stream_closed(run_loop, caplog):
    """If the exit's relay core has forgotten a circuit before the exit heard of it, a
    service's send fails its stream (``StreamClosed``, the circuit error as cause) and the
    exit entry goes; the core's "no open circuit" error never reaches the handler."""
    import logging

    async def main():
        net = await Net.start()
        go = asyncio.Event()
        got = asyncio.Event()
        outcome = asyncio.get_running_loop().create_future()

        async def late(stream):
            await stream.recv()
            got.set()
            await go.wait()
            try:
                await stream.send(b"too late")
            except BaseException as exc:
                outcome.set_result(exc)
                raise
            outcome.set_result(None)

        try:
            exit_node = net.relays[2]
            exit_node.register_service("late", late)
            circ = await net.circuit()
            st = await circ.open_stream(exit_node.node_id, "late")
            await st.send(b"hello")
            await asyncio.wait_for(got.wait(), 10)
            (link_id, circ_id), = exit_node._exits
            exit_node.relay.destroy(link_id, circ_id)  # its events deliberately not handled
            go.set()
            exc = await asyncio.wait_for(outcome, 10)
            assert isinstance(exc, StreamClosed) and isinstance(exc.cause, CircuitError)
            assert (link_id, circ_id) not in exit_node._exits
            await circ.close()
        finally:
            await net.close()

    with caplog.at_level(logging.ERROR, logger="qudag_io.onion"):
        run_loop(main, 60)
    assert "service handler failed" not in caplog.text


def test_recv_after_local_close_raises_instead_of_hanging(run_loop):
    """No half-close: once this end closed, a pending or later ``recv`` raises
    ``StreamClosed`` (bytes received before are still returned first)."""

    async def main():
        net = await Net.start()
        try:
            net.relays[2].register_service("echo", _echo)
            circ = await net.circuit()
            st = await circ.open_stream(net.relays[2].node_id, "echo")
            assert st.circuit_key == f"{circ.link.id}:{circ.circ_id}"
            await st.send(b"ping")
            assert await asyncio.wait_for(st.recv(), 10) == b"ping"
            pending = asyncio.ensure_future(st.recv())
            await asyncio.sleep(0)
            await st.close()
            with pytest.raises(StreamClosed):
                await asyncio.wait_for(pending, 5)
            with pytest.raises(StreamClosed):
                await asyncio.wait_for(st.recv(), 5)
            await circ.close()
        finally:
            await net.close()

    run_loop(main, 60)


def test_every_cell_on_the_links_is_cell_sized(run_loop):
    """For every relay payload length 0..998 (DROP cells to the exit) and every stream
    write length 1..998, every link message the middle relay receives or sends is a whole
    number of 1024-byte cells, and each cell it carries is exactly 1024 bytes."""

    async def main():
        net = await Net.start()
        try:
            net.relays[2].register_service("echo", _echo)
            circ = await net.circuit()
            stream = await circ.open_stream(net.relays[2].node_id, "echo")
            seen: list[int] = []
            cells: list[int] = []

            def record(peer, msg):
                seen.append(len(msg))
                cells.extend(len(msg[i : i + CELL_SIZE]) for i in range(0, len(msg), CELL_SIZE))

            mid = net.relays[1]
            mid.link_send_hook = record
            mid.link_recv_hook = record
            forwarded: list[int] = []
            mid.cell_filter = lambda peer, cell: forwarded.append(len(cell)) or cell
            for n in range(RELAY_DATA_MAX + 1):
                circ.send_drop(os.urandom(n))
            for n in range(1, RELAY_DATA_MAX + 1):
                data = os.urandom(n)
                await stream.send(data)
                assert await stream.readexactly(n) == data
            await stream.close()
            await circ.close()
            await asyncio.sleep(0.05)
            assert seen and all(m % CELL_SIZE == 0 for m in seen)
            assert set(cells) == {CELL_SIZE}
            assert set(forwarded) == {CELL_SIZE}
            # the middle forwarded each DROP once and each echoed write there and back
            assert len(forwarded) >= (RELAY_DATA_MAX + 1) + 2 * RELAY_DATA_MAX
            assert len(cells) >= 2 * len(forwarded)
        finally:
            await net.close()

    run_loop(main, 120)


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_tampering_in_the_middle_destroys_circuit(run_loop, direction):
    """The middle relay flips one bit in one forwarded RELAY cell: the next honest layer
    does not recognise it, the circuit is destroyed along the path, no plaintext of the
    tampered message is delivered, the client is told and later sends fail."""

    async def main():
        net = await Net.start()
        try:
            got: list[bytes] = []

            async def sink(stream):
                while True:
                    data = await stream.recv()
                    if not data:
                        return
                    got.append(data)
                    await stream.send(b"ack:" + data[:8])

            net.relays[2].register_service("sink", sink)
            circ = await net.circuit()
            stream = await circ.open_stream(net.relays[2].node_id, "sink")
            await stream.send(b"first message")
            assert await stream.recv() == b"ack:first me"
            mid = net.relays[1]
            towards = net.relays[2].node_id if direction == "forward" else net.relays[0].node_id
            flipped = []

            def flip(peer, cell):
                if peer == towards and cell[4] == CellCommand.RELAY and not flipped:
                    b = bytearray(cell)
                    b[100] ^= 0x01
                    flipped.append(True)
                    return bytes(b)
                return cell

            mid.cell_filter = flip
            t0 = time.monotonic()
            try:
                await stream.send(b"second message")
                await stream.recv()
            except StreamClosed:
                pass
            exc = await asyncio.wait_for(circ.closed, 5.0)
            assert flipped
            assert isinstance(exc, CircuitError) and exc.reason == DestroyReason.INTEGRITY
            # forward: the exit saw garbage and destroyed it (DESTROY came back: remote);
            # backward: the client's own layers failed to recognise it (local destroy)
            assert exc.remote == (direction == "forward")
            assert time.monotonic() - t0 < 5.0
            assert got == [b"first message"] if direction == "forward" else got[0] == b"first message"
            with pytest.raises(StreamClosed):
                await stream.send(b"third")
            with pytest.raises(CircuitError):
                await circ.open_stream(net.relays[2].node_id, "sink")
            for _ in range(200):
                if all(r.relay.circuit_count == 0 for r in net.relays):
                    break
                await asyncio.sleep(0.01)
            assert [r.relay.circuit_count for r in net.relays] == [0, 0, 0]
        finally:
            await net.close()

    run_loop(main, 60)


@pytest.mark.parametrize("failure", ["killed", "hung"])
def test_middle_relay_failure_reported_with_unacked_data(run_loop, failure):
    """The middle relay fails mid-transfer, either killed (listener closed, TCP aborted)
    or hung (stops reading and writing, sockets stay open: only the links' keepalive /
    idle timeout can tell).  Either is noticed within two keepalive periods (0.2 s links,
    idle timeout 1.5 periods) and the sender learns how many bytes and messages the
    destination never acknowledged."""
    keepalive = 0.2
    cfg = LinkConfig(channel=ChannelConfig(keepalive_interval=keepalive, idle_timeout=1.5 * keepalive))

    async def main():
        net = await Net.start(link_config=cfg)
        try:
            received = [0]

            async def counter(stream):
                while True:
                    data = await stream.recv()
                    if not data:
                        return
                    received[0] += len(data)

            net.relays[2].register_service("count", counter)
            circ = await net.circuit()
            stream = await circ.open_stream(net.relays[2].node_id, "count")
            killed_at: list[float] = []

            async def killer():
                while stream.acked_bytes < 256 * 1024:  # mid-transfer: some data acknowledged
                    await asyncio.sleep(0.005)
                killed_at.append(time.monotonic())
                if failure == "killed":
                    await net.relays[1].kill()
                else:
                    net.relays[1].freeze()

            kt = asyncio.get_running_loop().create_task(killer())
            sent = 0
            chunk = os.urandom(16 * 1024)
            with pytest.raises(StreamClosed) as info:
                for _ in range(10_000):
                    await stream.send(chunk)
                    sent += len(chunk)
            noticed = time.monotonic()
            await kt
            err = info.value
            assert isinstance(err.cause, CircuitError)
            print(f"\n{failure}: noticed after {noticed - killed_at[0]:.3f} s")
            assert noticed - killed_at[0] < 2 * keepalive
            offered = sent + len(chunk)
            acked = offered - err.unacked_bytes
            assert err.unacked_bytes > 0 and err.unacked_messages >= 1
            # acknowledged bytes really arrived; nothing claimed acknowledged is missing
            assert 0 < acked <= received[0] <= offered
        finally:
            await net.close()

    run_loop(main, 60)


def test_mixer_delays_never_reorder_a_circuit(run_loop):
    """Relays with a real mixing delay (exponential, mean 2 ms): cells of the circuit are
    delayed but never reordered (a reordered cell would fail relay crypto and kill it)."""

    async def main():
        net = await Net.start(mixer=MixerConfig(mean_delay=0.002))
        try:
            net.relays[2].register_service("digest", _digest_service)
            circ = await net.circuit()
            stream = await circ.open_stream(net.relays[2].node_id, "digest")
            rnd = random.Random(3)
            msgs = [rnd.randbytes(rnd.randrange(1, 5000)) for _ in range(40)]
            for m in msgs:
                await stream.send(_frame(m))
            await stream.send((0).to_bytes(4, "big"))
            reply = await stream.readexactly(36)
            assert reply[4:] == hashlib.sha256(b"".join(msgs)).digest()
            assert not any(r._mix_passthrough for r in net.relays)  # the heap mixer was in use
            await circ.close()
        finally:
            await net.close()

    run_loop(main, 60)


def test_circuit_lifetime_timer_destroys_path(run_loop):
    """The client core's lifetime timer runs through get_timer/handle_timer: at expiry the
    circuit is destroyed (FINISHED) and every relay forgets it."""

    async def main():
        net = await Net.start()
        net.client_node.circuit_lifetime = 0.3
        try:
            circ = await net.circuit()
            exc = await asyncio.wait_for(circ.closed, 5.0)
            assert exc.reason == DestroyReason.FINISHED and not exc.remote
            assert circ.rotation_due  # rotation was signalled before expiry (0.8 x lifetime)
            for _ in range(200):
                if all(r.relay.circuit_count == 0 for r in net.relays):
                    break
                await asyncio.sleep(0.01)
            assert [r.relay.circuit_count for r in net.relays] == [0, 0, 0]
        finally:
            await net.close()

    run_loop(main, 30)


def test_extend_to_unknown_relay_fails_build(run_loop):
    """The client's directory lists a relay the relays' directory does not: the middle
    relay cannot open the link, answers DESTROY(CONNECT_FAILED), build_circuit raises."""

    async def main():
        net = await Net.start()
        try:
            ghost = Identity.generate(os.urandom)
            cert = ghost.issue_certificate([("127.0.0.1", 9)], now=time.time())
            client_dir = RelayDirectory([*(r.directory_entry() for r in net.relays), DirectoryEntry(cert)])
            net.client_node.directory = client_dir
            with pytest.raises(CircuitError) as info:
                await OnionClient(net.client_node, per_subnet=None).build_circuit(
                    path=[net.relays[0].node_id, net.relays[1].node_id, bytes(ghost.node_id)], timeout=10
                )
            assert info.value.reason == DestroyReason.CONNECT_FAILED and info.value.remote
        finally:
            await net.close()

    run_loop(main, 30)


def test_link_message_not_whole_cells_closes_link(run_loop):
    """A neighbour whose link message is not a whole number of cells loses the link; a
    well-formed cell for an unknown circuit is just dropped."""

    async def main():
        net = await Net.start()
        r = net.relays[0]
        try:
            host, port = r.address
            conn = await connect(host, port, identity=IDS[3], peer_certificate=r.certificate)
            try:
                await conn.send(os.urandom(CELL_SIZE))  # unknown circuit: dropped
                await conn.send(os.urandom(CELL_SIZE - 1))
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(conn.recv(), 5.0)
            finally:
                await conn.close()
            assert r.relay.circuit_count == 0
        finally:
            await net.close()

    run_loop(main, 30)


def test_path_selection_from_directory(run_loop):
    """build_circuit(hops=3) picks 3 distinct relays from the directory (never the client
    itself), and the /16 rule, on by default, refuses a loopback-only directory."""

    async def main():
        net = await Net.start()
        try:
            net.directory.add(net.client_node.directory_entry())  # client is listed too
            circ = await OnionClient(net.client_node, per_subnet=None).build_circuit(hops=3)
            assert sorted(circ.node_ids) == sorted(r.node_id for r in net.relays)
            await circ.close()
            with pytest.raises(NotEnoughRelays):
                await OnionClient(net.client_node).build_circuit(hops=3)
        finally:
            await net.close()

    run_loop(main, 30)


@pytest.mark.skipif(not can_bind(["127.7.0.1", "127.10.0.1"]), reason="this system binds only 127.0.0.1 on loopback")
def test_relays_dial_next_hops_from_their_own_address(run_loop):
    """Relays on 127.7/8/9.0.1 and a client on 127.10.0.1, each in its own /16: a circuit
    is built with the production path rule on, and every hop sees the link from the
    previous one come from that node's listen address (what per-IP limits and logs at
    the next hop key on), not from 127.0.0.1."""
    hosts = ["127.7.0.1", "127.8.0.1", "127.9.0.1"]

    async def main():
        directory = RelayDirectory()
        nodes = []
        try:
            for ident, host in zip(IDS[:3], hosts):
                n = await OnionNode.start(ident, directory, host=host)
                n.register_service("echo", _echo)
                nodes.append(n)
                directory.add(n.directory_entry())
            client = await OnionNode.start(IDS[3], directory, relay=False, host="127.10.0.1")
            nodes.append(client)
            assert [n.bound_hosts for n in nodes] == [(h,) for h in hosts + ["127.10.0.1"]]
            circ = await OnionClient(client).build_circuit(hops=3)  # per_subnet=1: distinct /16s
            by_id = {n.node_id: n for n in nodes}
            path = [by_id[i] for i in circ.node_ids]
            stream = await circ.open_stream(circ.exit_node_id, "echo")
            await stream.send(b"from 127.10.0.1")
            assert await stream.readexactly(15) == b"from 127.10.0.1"
            await stream.close()
            for prev, hop in zip([client, *path[:2]], path):
                link = hop._links_by_peer[prev.node_id]  # the accepting side of prev's dial
                assert not link.outbound
                assert link.conn.remote_address[0] == prev.address[0], (prev.address, link.conn.remote_address)
                out = prev._links_by_peer[hop.node_id]
                assert out.outbound and out.conn.local_address[0] == prev.address[0]
            await circ.close()
        finally:
            for n in nodes:
                await n.close()

    run_loop(main, 30)


def test_garbage_cells_from_a_neighbour_are_dropped(run_loop, caplog):
    """An authenticated neighbour sends 400 hostile cells (random bytes; every link
    command with random circuit ids and payloads; truncated CREATE handshakes) in random
    batches: the relay drops or destroys, raises nothing, keeps no half-open state past
    its handshake timeout, and still carries a normal circuit afterwards."""

    async def main():
        net = await Net.start(handshake_timeout=0.5)
        r = net.relays[0]
        rnd = random.Random(11)
        try:
            host, port = r.address
            conn = await connect(host, port, identity=IDS[3], peer_certificate=r.certificate)
            try:
                cells = []
                for i in range(400):
                    kind = i % 3
                    if kind == 0:
                        cells.append(rnd.randbytes(CELL_SIZE))
                    else:
                        cmd = rnd.choice([0, 1, 2, 3, 4, 5, 200])
                        circ = rnd.choice([0, 1, rnd.randrange(1 << 32)])
                        body = rnd.randbytes(rnd.randrange(0, CELL_SIZE - 5))
                        if kind == 2:  # a plausible first CREATE fragment with a bad handshake
                            cmd, body = 1, (2357).to_bytes(2, "big") + (0).to_bytes(2, "big") + b"\x01" + body
                        cell = circ.to_bytes(4, "big") + bytes([cmd]) + body
                        cells.append(cell[:CELL_SIZE].ljust(CELL_SIZE, b"\x00"))
                while cells:
                    k = rnd.randrange(1, 33)
                    await conn.send(b"".join(cells[:k]))
                    del cells[:k]
                # the link stays up (hostile cells are not a link-level violation)
                await asyncio.sleep(0.2)
                assert not conn.is_closed
                assert r.relay.circuit_count > 0  # the truncated CREATEs are half-open now
            finally:
                await conn.close()
            # half-open circuits expire through the relay's timer
            for _ in range(200):
                if r.relay.circuit_count == 0:
                    break
                await asyncio.sleep(0.01)
            assert r.relay.circuit_count == 0
            net.relays[2].register_service("echo", _echo)
            circ = await net.circuit()
            stream = await circ.open_stream(net.relays[2].node_id, "echo")
            await stream.send(b"still works")
            assert await stream.readexactly(11) == b"still works"
            await circ.close()
        finally:
            await net.close()
        assert not [rec for rec in caplog.records if rec.levelno >= 40]  # nothing logged as an error

    run_loop(main, 60)


def test_many_streams_one_circuit_then_forgotten(run_loop):
    """Twenty concurrent streams on one circuit each get their own echo; once closed on
    both ends neither the client circuit nor the exit keeps them."""

    async def main():
        net = await Net.start()
        try:
            net.relays[2].register_service("echo", _echo)
            circ = await net.circuit()

            async def one(i):
                st = await circ.open_stream(net.relays[2].node_id, "echo")
                data = os.urandom(100 + 997 * i)
                await st.send(data)
                assert await st.readexactly(len(data)) == data
                await st.close()
                return st

            streams = await asyncio.gather(*(one(i) for i in range(20)))
            assert len({s.stream_id for s in streams}) == 20
            for _ in range(200):
                if not circ.streams and not any(ex.streams for ex in net.relays[2]._exits.values()):
                    break
                await asyncio.sleep(0.01)
            assert circ.streams == {}
            assert all(ex.streams == {} for ex in net.relays[2]._exits.values())
            await circ.close()
        finally:
            await net.close()

    run_loop(main, 60)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from qudag_io.onion import OnionStream  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5000), max_size=20), st.lists(st.integers(1, 120), max_size=12))
def test_ack_accounting_per_piece_equals_per_cell(pieces, acks):
    """``acked_bytes`` kept per piece the mux took (O(1) per SENDME) equals summing the
    acknowledged cells' sizes one by one, the mux cutting each piece into full cells and
    a last short one; acknowledgements beyond what was sent count nothing."""
    cells: list[int] = []
    for n in pieces:
        cells += [RELAY_DATA_MAX] * (n // RELAY_DATA_MAX) + ([n % RELAY_DATA_MAX] if n % RELAY_DATA_MAX else [])

    async def main():
        s = OnionStream(None, 1)
        for n in pieces:
            s._taken(n)
        acked = 0
        for k in acks:
            s._acked(k)
            acked = min(acked + k, len(cells))
            assert s.acked_bytes == sum(cells[:acked])

    asyncio.run(main())
