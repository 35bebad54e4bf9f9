"""Node metrics moved by real events over loopback sockets, read back from ``/metrics``:
link wire bytes against a byte-counting TCP proxy, outbound connections and handshakes,
onion circuits (relay and client, built, failed, refused) and cells relayed on a real
3-hop circuit, and dark-address resolver cache hits on a real loopback dark network.
``promtool check metrics`` accepts the exposition of a node that did all of it."""
from __future__ import annotations

import asyncio
import os
import urllib.request

import pytest

from qudag_core.identity import Identity
from qudag_io._loop import new_event_loop
from qudag_io.config import NodeSettings
from qudag_io.link import ConnectionClosed
from qudag_io.node import FileDirectory, Node, send_message, write_directory
from qudag_io.onion import CircuitError, OnionClient, OnionNode

from test_metrics import promtool_check


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request, monkeypatch):
    monkeypatch.setenv("QUDAG_LOOP", request.param)

    def _run(coro):
        loop = new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, 90))
        finally:
            loop.close()

    return _run


async def scrape(node: Node) -> dict[str, float]:
    """``/metrics`` over HTTP, as ``{'name{labels}': value}`` (no ``_created`` samples)."""
    url = f"http://{node.http.host}:{node.http.port}/metrics"
    text = (await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())).decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "_created" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def until(cond, what: str, tries: int = 200) -> None:
    for _ in range(tries):  # bounded: 200 x 25 ms
        if cond():
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"timed out waiting for {what}")


class CountingProxy:
    """A TCP relay that counts the bytes it carries each way (what really crossed the
    sockets, independent of the link adapter's own counters)."""

    def __init__(self, target: tuple) -> None:
        self.target = target
        self.up = self.down = 0  # client -> server, server -> client
        self.done = 0
        self.server = None

    async def start(self) -> tuple:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _handle(self, cr, cw) -> None:
        sr, sw = await asyncio.open_connection(*self.target)

        async def pump(r, w, attr):
            try:
                while data := await r.read(65536):
                    setattr(self, attr, getattr(self, attr) + len(data))
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                w.close()

        await asyncio.gather(pump(cr, sw, "up"), pump(sr, cw, "down"))
        self.done += 1

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


def test_link_bytes_are_wire_bytes_and_dials_count_as_outbound(run):
    async def main():
        a = await Node.start(Identity.generate(os.urandom), NodeSettings())
        b = await Node.start(Identity.generate(os.urandom), NodeSettings())
        proxy = CountingProxy(tuple(b.listener.addresses[0]))
        try:
            host, port = await proxy.start()
            conn = await a.dial(host, port, peer_id=b.identity.node_id)
            for size in (1, 1000, 40_000):
                await send_message(conn, os.urandom(size))
            ma = await scrape(a)
            assert ma['qudag_connections_active{direction="outbound"}'] == 1
            assert ma["qudag_handshakes_ok_total"] == 1
            await conn.close()
            await until(lambda: proxy.done == 1 and not b.peers, "the link to close")
            ma, mb = await scrape(a), await scrape(b)
            # Every byte that crossed the proxy is counted, handshakes and framing included;
            # the 41,001 payload bytes are only part of it.
            assert mb['qudag_bytes_received_total{transport="tcp"}'] == proxy.up > 41_001
            assert ma['qudag_bytes_sent_total{transport="tcp"}'] == proxy.up
            assert mb['qudag_bytes_sent_total{transport="tcp"}'] == proxy.down
            assert ma['qudag_bytes_received_total{transport="tcp"}'] == proxy.down
            assert ma['qudag_connections_active{direction="outbound"}'] == 0
            assert ma['qudag_connections_closed_total{direction="outbound"}'] == 1
            assert mb['qudag_connections_closed_total{direction="inbound"}'] == 1
            # A failed dial: counted by reason, not as a connection.
            with pytest.raises(ConnectionClosed):
                await a.dial(host, port, peer_id=a.identity.node_id)
            ma = await scrape(a)
            assert ma['qudag_handshakes_failed_total{reason="auth_failed"}'] == 1
            assert ma['qudag_connections_opened_total{direction="outbound"}'] == 1
        finally:
            await proxy.close()
            await a.stop()
            await b.stop()

    run(main())


def test_circuits_and_cells_relayed_on_a_three_hop_circuit(run, tmp_path):
    async def main():
        path = str(tmp_path / "relays.json")
        relays = [await Node.start(Identity.generate(os.urandom), NodeSettings(relay=True, onion_directory=path))
                  for _ in range(4)]
        client = None
        try:
            write_directory(path, [r.onion.certificate for r in relays])
            before = [await scrape(r) for r in relays]
            for m in before:
                assert m["qudag_cells_relayed_total"] == 0
                assert m['qudag_circuits_built_total{role="relay"}'] == 0
            client = await OnionNode.start(Identity.generate(os.urandom), FileDirectory(path), relay=False)
            circ = await OnionClient(client, per_subnet=None).build_circuit(hops=3)
            by_id = {bytes(r.identity.node_id): r for r in relays}
            entry, middle, exit_ = (by_id[n] for n in circ.node_ids)
            stream = await circ.open_stream(circ.exit_node_id, "echo")
            payload = os.urandom(100_000)
            await stream.send(payload)
            assert await stream.readexactly(len(payload)) == payload
            ms = {r: await scrape(r) for r in (entry, middle, exit_)}
            # Onion links are connections with handshakes: the client dialled the entry,
            # the entry the middle, the middle the exit.
            for r, inbound, outbound in ((entry, 1, 1), (middle, 1, 1), (exit_, 1, 0)):
                assert ms[r]['qudag_connections_active{direction="inbound"}'] == inbound
                assert ms[r]['qudag_connections_opened_total{direction="outbound"}'] == outbound
                assert ms[r]["qudag_handshakes_ok_total"] == inbound + outbound
            for r, m in ms.items():
                assert m['qudag_circuits_built_total{role="relay"}'] == 1
                assert m['qudag_circuits_active{role="relay"}'] == 1
                assert m['qudag_circuits_failed_total{role="relay"}'] == 0
                assert m['qudag_circuits_built_total{role="client"}'] == 0
            # 100,000 bytes each way is at least 2 x 100 cells through entry and middle
            # (plus the EXTEND/EXTENDED of the hops behind them); the exit relays nothing,
            # it is the end of the circuit.
            assert ms[entry]["qudag_cells_relayed_total"] >= 200
            assert ms[middle]["qudag_cells_relayed_total"] >= 200
            assert ms[exit_]["qudag_cells_relayed_total"] == 0
            assert ms[entry]["qudag_cells_relayed_total"] > ms[middle]["qudag_cells_relayed_total"]
            for r in (entry, middle, exit_):
                assert r.status()["circuits"]["cells_relayed"] == ms[r]["qudag_cells_relayed_total"]
                # onion link wire bytes: at least the cells it received
                assert ms[r]['qudag_bytes_received_total{transport="tcp"}'] >= 1024 * 100
            await stream.close()
            await circ.close()
            await until(lambda: entry.onion.relay.circuit_count == middle.onion.relay.circuit_count == 0,
                        "DESTROY to travel the path")
            assert (await scrape(middle))['qudag_circuits_active{role="relay"}'] == 0

            # A relay node building its own circuit counts it as a client circuit.
            own = await OnionClient(entry.onion, per_subnet=None).build_circuit(path=[middle.onion.node_id,
                                                                                       exit_.onion.node_id])
            m = await scrape(entry)
            assert m['qudag_circuits_built_total{role="client"}'] == 1
            assert m['qudag_circuits_active{role="client"}'] == 1
            await own.close()
            assert (await scrape(entry))['qudag_circuits_active{role="client"}'] == 0

            # Extending to a relay that is gone: the client's build fails (the middle relay
            # accepted the circuit, so it counts it as built on its side).
            gone = next(r for r in relays if r not in (entry, middle, exit_))
            gone_id = gone.onion.node_id
            await gone.stop()
            with pytest.raises(CircuitError):
                await OnionClient(entry.onion, per_subnet=None).build_circuit(path=[middle.onion.node_id, gone_id],
                                                                              timeout=20)
            m = await scrape(entry)
            assert m['qudag_circuits_failed_total{role="client"}'] == 1
            assert m['qudag_circuits_built_total{role="client"}'] == 1

            # A failed handshake on the onion listener is counted by reason.
            rd, wr = await asyncio.open_connection(*exit_.onion.address)
            wr.write(b"\xff" * 300)
            await wr.drain()
            await asyncio.wait_for(rd.read(), 5)
            wr.close()
            await until(lambda: exit_.metrics.registry.get_sample_value(
                "qudag_handshakes_failed_total", {"reason": "bad_message"}) == 1, "the failure to be counted")
            # The middle dialled the relay that was gone: no handshake, no connection.
            m = await scrape(middle)
            assert m['qudag_connections_opened_total{direction="outbound"}'] == 1

            # A relay at its circuit limit refuses CREATE: a rate-limit drop, not a circuit.
            middle.onion.relay._max_circuits = 0
            with pytest.raises(CircuitError):
                await OnionClient(client, per_subnet=None).build_circuit(path=[middle.onion.node_id], timeout=20)
            m = await scrape(middle)
            assert m['qudag_ratelimit_drops_total{limiter="circuits"}'] == 1
            # the 3-hop circuit, `own` and the one that failed further on
            assert m['qudag_circuits_built_total{role="relay"}'] == 3
            proc = promtool_check((await asyncio.to_thread(
                lambda: urllib.request.urlopen(f"http://{middle.http.host}:{middle.http.port}/metrics",
                                               timeout=5).read())))
            assert proc.returncode == 0, proc.stdout + proc.stderr
        finally:
            if client is not None:
                await client.close()
            for r in relays:
                await r.stop()

    run(main())


def test_resolver_cache_hits_and_misses_on_a_dark_network(run):
    from qudag_core.dark import DarkService, NotFound, Publisher
    from qudag_io.dark import start_loopback_network
    from qudag_io.link import listen

    async def main():
        service = Identity.generate(os.urandom)
        node = await Node.start(Identity.generate(os.urandom), NodeSettings())
        net = await start_loopback_network(8)
        clients = []
        try:
            async with await listen("127.0.0.1", 0, identity=service, handler=lambda c: c.recv()) as lst:
                svc = DarkService.from_identity(service, certificate=lst.certificate)
                publisher_client, client = net.client(1), net.client(5)
                clients += [publisher_client, client]
                assert await publisher_client.publish(Publisher(svc, os.urandom))
                node.meter_resolver(client.resolver)
                name = str(svc.address)
                ep1 = await client.resolve(name)
                m = await scrape(node)
                assert m["qudag_resolver_cache_misses_total"] == 1 and m["qudag_resolver_cache_hits_total"] == 0
                ep2 = await client.resolve(name)
                assert ep1 == ep2
                m = await scrape(node)
                assert m["qudag_resolver_cache_hits_total"] == 1 == client.resolver.cache_hits
                assert m["qudag_resolver_cache_misses_total"] == 1
                other = DarkService.from_identity(Identity.generate(os.urandom), certificate=lst.certificate)
                with pytest.raises(NotFound):
                    await client.resolve(str(other.address))  # a miss, then a cached failure
                with pytest.raises(NotFound):
                    await client.resolve(str(other.address))
                m = await scrape(node)
                assert m["qudag_resolver_cache_misses_total"] == 2
                assert m["qudag_resolver_cache_hits_total"] == 2
                text = "\n".join(m)
                assert name.split(".")[0] not in text and str(other.address).split(".")[0] not in text
        finally:
            for c in clients:
                await c.close()
            await net.close()
            await node.stop()

    run(main())


def test_a_failing_collect_hook_does_not_break_the_exposition(run):
    async def main():
        node = await Node.start(Identity.generate(os.urandom), NodeSettings())
        try:
            def broken() -> None:
                raise RuntimeError("source gone")

            node.metrics.add_collect_hook(broken)
            node.metrics.add_collect_hook(lambda: node.metrics.cells_relayed(3))
            m = await scrape(node)
            assert m["qudag_cells_relayed_total"] == 3  # hooks after the broken one still ran
        finally:
            await node.stop()

    run(main())


# -- cells the onion layer drops ------------------------------------------------------------


class CellTally:
    """Cells a relay handed to its mixer (``cell_filter``: every cell it is about to send,
    before the mixer) and cells it really wrote to a link (``link_send_hook``), by peer:
    the difference is what it dropped, counted without the metrics."""

    def __init__(self, relay: OnionNode) -> None:
        self.offered: dict[bytes, int] = {}
        self.sent: dict[bytes, int] = {}
        relay.cell_filter = self._offer
        relay.link_send_hook = self._sent

    def _offer(self, peer: bytes, cell: bytes) -> bytes:
        self.offered[peer] = self.offered.get(peer, 0) + 1
        return cell

    def _sent(self, peer: bytes, message: bytes) -> None:
        self.sent[peer] = self.sent.get(peer, 0) + len(message) // 1024

    def dropped(self) -> int:
        return sum(self.offered.values()) - sum(self.sent.values())


def idle(relay: OnionNode) -> bool:
    """Nothing waits in the relay: its mixer, its mixer backlog and every link queue are empty."""
    return (
        len(relay.mixer) == 0
        and not relay._mix_backlog
        and all(link.pending_cells == 0 for link in relay._links_by_id.values())
    )


def test_relay_counts_cells_dropped_by_its_full_mixer_and_for_a_closed_link(run):
    from qudag_io.onion import MixerConfig, RelayDirectory

    queue, burst = 8, 40  # one link message of 40 cells into a mixer that holds 8

    async def main():
        node = await Node.start(Identity.generate(os.urandom), NodeSettings())
        directory = RelayDirectory()
        onions: list[OnionNode] = []
        try:
            # A relay with a tiny mixer (a real delay, so it is not the pass-through),
            # metered by the node, between a client and an exit.
            relay = await OnionNode.start(Identity.generate(os.urandom), directory,
                                          mixer=MixerConfig(mean_delay=0.001, max_queue=queue))
            onions.append(relay)
            exit_ = await OnionNode.start(Identity.generate(os.urandom), directory)
            onions.append(exit_)
            client = await OnionNode.start(Identity.generate(os.urandom), directory, relay=False)
            onions.append(client)
            directory.add(relay.directory_entry())
            directory.add(exit_.directory_entry())
            node.meter_onion(relay)
            with pytest.raises(RuntimeError):
                node.meter_onion(exit_)  # one onion node per node's metrics
            circ = await OnionClient(client, per_subnet=None).build_circuit(path=[relay.node_id, exit_.node_id])
            await until(lambda: idle(relay), "the relay to go idle")
            m0 = await scrape(node)
            assert m0['qudag_cells_dropped_total{reason="mixer_full"}'] == 0  # building fit in the mixer
            assert m0['qudag_cells_dropped_total{reason="link_closed"}'] == 0
            assert m0['qudag_circuits_built_total{role="relay"}'] == 1  # the metered relay carries it

            # A message bigger than the whole mixer: what does not fit waits (in order) for
            # room instead of being dropped, and the reader admits nothing more meanwhile.
            tally = CellTally(relay)
            arrived = {"cells": 0}
            exit_.link_recv_hook = lambda peer, msg: arrived.__setitem__("cells", arrived["cells"] + len(msg) // 1024)
            for _ in range(burst):
                circ.send_drop(b"cover")  # queued together: the client sends them as one link message
            await until(lambda: sum(tally.offered.values()) >= burst and idle(relay), "the burst to pass the relay")
            assert tally.dropped() == 0
            m1 = await scrape(node)
            assert m1['qudag_cells_dropped_total{reason="mixer_full"}'] == 0
            assert m1['qudag_cells_dropped_total{reason="link_closed"}'] == 0
            await until(lambda: arrived["cells"] == burst, "the cells to arrive")

            # The last resort, still counted: a backlog bound below what waits (relayed
            # traffic never gets there with the shipped bound; lowered here to reach it).
            relay._mix_backlog_max = 10
            tally = CellTally(relay)
            arrived["cells"] = 0
            for _ in range(burst):
                circ.send_drop(b"cover")
            await until(lambda: sum(tally.offered.values()) >= burst and idle(relay), "the burst to pass the relay")
            dropped = tally.dropped()
            assert dropped == burst - queue - 10  # the mixer kept 8, the backlog 10
            m1 = await scrape(node)
            assert m1['qudag_cells_dropped_total{reason="mixer_full"}'] == dropped
            assert m1['qudag_cells_dropped_total{reason="link_closed"}'] == 0
            # what the relay did send reached the exit
            await until(lambda: arrived["cells"] == tally.sent.get(exit_.node_id, 0), "the cells to arrive")
            assert arrived["cells"] == queue + 10
            relay._mix_backlog_max = 1 << 16

            # Cells queued for a link that then dies: a fresh circuit over the same links,
            # the relay's link to the exit stops writing (hung), cells pile up, it is dropped.
            circ2 = await OnionClient(client, per_subnet=None).build_circuit(path=[relay.node_id, exit_.node_id])
            await until(lambda: idle(relay), "the relay to go idle")
            tally = CellTally(relay)
            link = relay._links_by_peer[exit_.node_id]
            link.freeze()
            for _ in range(5):
                circ2.send_drop()
            await until(lambda: link.pending_cells == 5, "the cells to queue on the hung link")
            link.abort()
            await until(lambda: exit_.node_id not in relay._links_by_peer and idle(relay), "the link to be dropped")
            assert tally.dropped() == tally.offered[exit_.node_id] == 5
            m2 = await scrape(node)
            assert m2['qudag_cells_dropped_total{reason="link_closed"}'] == 5
            assert m2['qudag_cells_dropped_total{reason="mixer_full"}'] == dropped
        finally:
            for o in onions:
                await o.close()
            await node.stop()

    run(main())


# -- inbound connections whose handshake fails ------------------------------------------


async def raw_exchange(addr: tuple, data: bytes) -> bytes:
    """Connect, send ``data``, half-close, and return everything the server sends until it
    closes (bounded)."""
    rd, wr = await asyncio.open_connection(*addr)
    try:
        wr.write(data)
        await wr.drain()
        wr.write_eof()
        return await asyncio.wait_for(rd.read(), 10)
    finally:
        wr.close()


def test_failed_inbound_handshakes_count_their_wire_bytes_and_reason(run):
    import time

    from qudag_core.link import Link

    async def main():
        node = await Node.start(Identity.generate(os.urandom), NodeSettings(relay=True))

        def failed(reason: str) -> float:
            return node.metrics.registry.get_sample_value("qudag_handshakes_failed_total", {"reason": reason})

        try:
            m0 = await scrape(node)
            # Garbage: an unknown frame type, answered with an ALERT.
            garbage = b"\xff" * 300
            reply = await raw_exchange(tuple(node.listener.addresses[0]), garbage)
            await until(lambda: failed("bad_message") == 1, "the failure to be counted")
            m1 = await scrape(node)
            assert len(reply) > 0
            assert m1['qudag_bytes_received_total{transport="tcp"}'] - m0['qudag_bytes_received_total{transport="tcp"}'] == len(garbage)
            assert m1['qudag_bytes_sent_total{transport="tcp"}'] - m0['qudag_bytes_sent_total{transport="tcp"}'] == len(reply)

            # A real first handshake message, cut in half, then the client hangs up.
            first = Link.initiator(identity=Identity.generate(os.urandom), now=time.time(), rng=os.urandom,
                                   peer_certificate=node.listener.certificate).data_to_send()
            truncated = first[: len(first) // 2]
            assert len(truncated) > 100
            reply = await raw_exchange(tuple(node.listener.addresses[0]), truncated)
            await until(lambda: failed("closed") == 1, "the failure to be counted")
            m2 = await scrape(node)
            assert reply == b""  # the responder had nothing to answer yet
            assert m2['qudag_bytes_received_total{transport="tcp"}'] - m1['qudag_bytes_received_total{transport="tcp"}'] == len(truncated)
            assert m2['qudag_bytes_sent_total{transport="tcp"}'] == m1['qudag_bytes_sent_total{transport="tcp"}']

            # The onion relay's listener: the same, read from its own listener.
            reply = await raw_exchange(tuple(node.onion.address), garbage[:123])
            await until(lambda: failed("bad_message") == 2, "the failure to be counted")
            m3 = await scrape(node)
            assert m3['qudag_bytes_received_total{transport="tcp"}'] - m2['qudag_bytes_received_total{transport="tcp"}'] == 123
            assert m3['qudag_bytes_sent_total{transport="tcp"}'] - m2['qudag_bytes_sent_total{transport="tcp"}'] == len(reply)
            # None of them is a connection or a completed handshake.
            assert m3["qudag_handshakes_ok_total"] == 0
            assert m3['qudag_connections_opened_total{direction="inbound"}'] == 0
            assert m3['qudag_handshakes_failed_total{reason="other"}'] == 0
        finally:
            await node.stop()

    run(main())


# -- cells the relay core discards ------------------------------------------------------------


def test_relay_core_discards_reach_metrics_by_reason(run, tmp_path):
    """Cells for circuits a relay node does not have, and a link message of cells for a
    real circuit that no layer recognises at its last hop, sent down a real link: each
    reason of ``qudag_cells_dropped_total`` counts exactly those cells.  A node metering a
    client-only onion node counts the cells sent to it for no circuit of its own."""
    from qudag_core.onion.cells import PAYLOAD_SIZE, CellCommand, build_cell
    from qudag_core.onion.relay import DISCARD_REASONS

    def cells(circ_ids) -> bytes:
        return b"".join(bytes(build_cell(c, CellCommand.RELAY, os.urandom(PAYLOAD_SIZE))) for c in circ_ids)

    def dropped(m: dict, reason: str) -> float:
        return m[f'qudag_cells_dropped_total{{reason="{reason}"}}']

    async def main():
        path = str(tmp_path / "relays.json")
        node = await Node.start(Identity.generate(os.urandom), NodeSettings(relay=True, onion_directory=path))
        plain = await Node.start(Identity.generate(os.urandom), NodeSettings())
        onions: list[OnionNode] = []
        try:
            client_only = await OnionNode.start(Identity.generate(os.urandom), FileDirectory(path), relay=False)
            onions.append(client_only)
            plain.meter_onion(client_only)
            write_directory(path, [node.onion.certificate, client_only.certificate])
            client = await OnionNode.start(Identity.generate(os.urandom), FileDirectory(path), relay=False)
            onions.append(client)
            core = node.onion.relay
            m0 = await scrape(node)
            assert all(dropped(m0, r) == 0 for r in DISCARD_REASONS)

            # One link message of 5 relay cells for circuit ids the relay has no circuit for.
            link = await client.link_to(node.onion.node_id)
            await link.conn.send(cells(range(1000, 1005)))
            await until(lambda: core.discarded_unknown_circuit == 5, "the cells to reach the relay core")
            m1 = await scrape(node)
            assert dropped(m1, "unknown_circuit") == 5
            assert all(dropped(m1, r) == 0 for r in DISCARD_REASONS if r != "unknown_circuit")

            # A real circuit ending at the node, then 4 cells for it in one link message that
            # no layer recognises (tagged or garbage): the first is rejected and destroys the
            # circuit, the other 3 go with it.
            circ = await OnionClient(client, per_subnet=None).build_circuit(path=[node.onion.node_id])
            assert core.circuit_count == 1
            await circ.link.conn.send(cells([circ.circ_id] * 4))
            await until(lambda: core.circuit_count == 0 and not circ.is_open, "the circuit to be destroyed")
            m2 = await scrape(node)
            assert dropped(m2, "rejected") == 1
            assert dropped(m2, "after_destroy") == 3
            assert dropped(m2, "unknown_circuit") == 5
            assert dropped(m2, "malformed") == dropped(m2, "circuit_limit") == 0
            assert m2["qudag_cells_relayed_total"] == 0
            assert {r: dropped(m2, r) for r in DISCARD_REASONS} == core.cells_discarded
            assert dropped(m2, "mixer_full") == dropped(m2, "link_closed") == 0

            # A client-only onion node has no relay core to hand them to: 3 cells dropped.
            to_client_only = await client.link_to(client_only.node_id)
            await to_client_only.conn.send(cells([7, 8, 9]))
            await until(lambda: client_only.cells_dropped_not_relay == 3, "the cells to arrive")
            mp = await scrape(plain)
            assert dropped(mp, "unknown_circuit") == 3
            assert sum(dropped(mp, r) for r in DISCARD_REASONS) == 3
        finally:
            for o in onions:
                await o.close()
            await plain.stop()
            await node.stop()

    run(main())


# -- DHT routing table -------------------------------------------------------------------------


def test_dht_routing_table_gauge_is_the_table_length(run):
    """Four nodes, each on its own 127.x.0.1 (distinct /24s: the table's IP-diversity limit
    does not bite), bootstrapped from the first: every node's gauge is its table's length,
    from 0 alone to the 3 others once lookups have run (the figure ``/status`` reports too)."""

    async def main():
        nodes: list[Node] = []
        try:
            first = await Node.start(Identity.generate(os.urandom),
                                     NodeSettings(dht_listen=("127.1.0.1", 0), link_listen=("127.1.0.1", 0)))
            nodes.append(first)
            assert (await scrape(first))["qudag_dht_routing_table_nodes"] == 0 == len(first.dht.core.table)
            for i in range(2, 5):
                nodes.append(await Node.start(
                    Identity.generate(os.urandom),
                    NodeSettings(dht_listen=(f"127.{i}.0.1", 0), link_listen=(f"127.{i}.0.1", 0),
                                 bootstrap=[tuple(first.dht.address)])))
            for _ in range(20):  # bounded: lookups until every node knows the 3 others
                if all(len(n.dht.core.table) == len(nodes) - 1 for n in nodes):
                    break
                for n in nodes:
                    await n.dht_find_node(os.urandom(20))
            sizes = [len(n.dht.core.table) for n in nodes]
            assert sizes == [3, 3, 3, 3]
            for n in nodes:
                m = await scrape(n)
                assert m["qudag_dht_routing_table_nodes"] == len(n.dht.core.table) == n.status()["routing_table_size"]
        finally:
            for n in nodes:
                await n.stop()

    run(main())
