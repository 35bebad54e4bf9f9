"""The node runtime: one identity, a TCP link listener, a UDP DHT node, the metrics/status
HTTP server, metrics wired to where events happen, and a clean shutdown.

What runs (``await Node.start(identity, settings)``):

* a link listener (``qudag_io.link.listen``) on ``settings.link_listen``; every accepted,
  authenticated link is a *peer*.  Links carry application messages (:data:`MSG_DATA`
  prefix; each is acknowledged with :data:`MSG_ACK` + its BLAKE3-256 digest so the sender
  knows it arrived intact) and handed to ``on_message(peer_id, data)``;
* a ``DhtNode`` (KRPC over UDP) on ``settings.dht_listen``, bootstrapping from
  ``settings.bootstrap``; the node's own DHT operations go through :meth:`Node.dht_put`,
  :meth:`dht_get`, :meth:`dht_find_node`, :meth:`dht_ping`, which time them into the
  metrics;
* ``start_http_server`` on ``settings.http_listen`` (127.0.0.1 by default) with
  ``/metrics`` and ``/status``.

The decision a reader would ask about: **where metrics come from without a metrics call
on every hot path.**  The node counts events at its own boundary: link connections
(accepted ones and its own dials); handshake outcomes (a dial's result, or a failed
inbound handshake reported by the listener's ``on_handshake_failed`` hook, classified by
its handshake error code); every UDP datagram of the DHT socket (``transport="udp"``, by
wrapping the datagram transport's ``sendto`` and the protocol's ``datagram_received``
right after ``DhtNode.start``, so the first bootstrap queries are not counted); and the
DHT operations the node starts, with their latency.  Everything else is a count another
object keeps, read on every scrape (:meth:`Node.sync_metrics`, a collect hook of the
metrics registry) and turned into increments: TCP wire bytes of every link, handshakes
and framing included (``Connection.bytes_received``/``bytes_sent``; a link's final
counts are kept when it closes; the listeners add those of inbound connections whose
handshake failed), the DHT core's rate-limiter drops and routing-table size, and with a
relay the relay core's cells relayed, cells discarded and circuits and the onion
adapter's client circuits, link bytes and dropped cells.  A dark-address resolver the node drives is metered with
:meth:`Node.meter_resolver`.

With ``settings.relay`` the node also runs an ``OnionNode`` with **its own link
listener** (``settings.onion_listen``): the simplest honest wiring, as the onion adapter
owns its links (cells only, one link per neighbour) while the node's links carry
application messages; sharing one listener would need a protocol switch on the link.
The relay's directory is a :class:`FileDirectory` (certificates in a JSON file, re-read
when a relay is missing) until relay descriptors are distributed through the DHT.  As a
circuit's last hop the node serves the ``"echo"`` stream service and the ``"msg"``
service (application messages over a circuit, :func:`send_over_stream`).  ``/status``
reports the circuits open through the relay and the cells it has relayed.

Outbound TCP links leave from the address of the listener that names the node to that
peer (``qudag_io.link.source_address``): :meth:`Node.dial` and the dark storage links
from the link listener's, the relay's dials to next hops from the onion listener's; the
kernel picks when the listener is on a wildcard (``0.0.0.0``/``::``).  So peers keying
anything on the source address (per-IP limits, logs) see the node where it listens.

Dark addresses (docs/dark.md §8): the node's links also carry the dark storage
protocol.  A link message that is a bencoded dictionary (first byte ``d``; application
messages start with ``0x00``) goes to the node's ``DescriptorServer`` (``dark_get``/
``dark_put``, anything else to KRPC) and its reply goes back on the link; the link
listener uses ``DARK_LINK_CONFIG`` so a descriptor fits one frame.  With
``settings.dark_directory`` the node adds its link certificate to that shared
``CertificateDirectory`` file and gets a ``DarkClient`` (:attr:`Node.dark`) to publish
its own addresses (``qudag_io.dark.AddressKeeper`` drives it from the database).  With
``settings.relay`` the relay also serves ``qudag_io.dark.DARK_SERVICE``, so resolvers can
query the descriptors this node stores through circuits ending here; with
``dark_circuit_hops=N`` (N >= 2; 0, the default, keeps direct links) and a relay, the
node's own ``DarkClient`` sends its queries through N-hop circuits ending at each storage
node (``DarkClient(onion=...)``, no fallback to direct links).

Persistence is not this module's: ``save_hooks`` are called with :meth:`Node.snapshot`
at shutdown (the persistence layer passes one to :meth:`Node.start`), and
``restore_contacts`` are DHT contacts it loaded back, bootstrapped from with the
configured nodes; with ``database`` (a ``NodeDatabase``) the dark descriptors the node
stores for others are loaded from it and written through to it.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any, Awaitable, Callable, Iterable, Optional

from qudag_core.crypto import blake3_hash
from qudag_core.dark import DescriptorStore
from qudag_core.identity import Identity, NodeCertificate, NodeId
from qudag_io.config import NodeSettings
from qudag_io.dark import (DARK_LINK_CONFIG, CertificateDirectory, DarkClient, DescriptorServer, node_dht_id,
                           register_dark_service)
from qudag_io.dht import DhtError, DhtNode
from qudag_io.http import HttpServer, start_http_server
from qudag_io.link import Connection, ConnectionClosed, Listener, connect, listen, source_address
from qudag_io.onion import DirectoryEntry, OnionClient, OnionNode, OnionStream, RelayDirectory, StreamClosed
from qudag_io.metrics import (CellDropReason, CircuitRole, DhtOp, DhtOutcome, Direction, HandshakeFailure, Limiter,
                              NodeMetrics, Transport)

__all__ = ["FileDirectory", "MSG_ACK", "MSG_DATA", "Node", "classify_handshake_failure", "send_message",
           "send_over_stream", "write_directory"]

log = logging.getLogger("qudag.node")

MSG_DATA = b"\x00"
"""Prefix of an application message on a node link."""
MSG_ACK = b"\x01"
"""Prefix of the acknowledgement: ``MSG_ACK + blake3(data, 32)``."""

MAX_APP_MESSAGE = 1 << 20
"""Largest message the ``"msg"`` onion service accepts (its u32 length prefix is checked
against it before anything is buffered).  On a link the channel's frame limit (64 KiB)
is the tighter bound."""

_HS_REASONS = {
    0x02: HandshakeFailure.BAD_MESSAGE, 0x03: HandshakeFailure.BAD_MESSAGE, 0x04: HandshakeFailure.BAD_MESSAGE,
    0x05: HandshakeFailure.VERSION, 0x06: HandshakeFailure.AUTH_FAILED, 0x07: HandshakeFailure.AUTH_FAILED,
    0x09: HandshakeFailure.COOKIE, 0x0A: HandshakeFailure.TIMEOUT,
}


def _is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def classify_handshake_failure(exc: BaseException) -> HandshakeFailure:
    """The ``reason`` label for a failed handshake (a dial, or an inbound one)."""
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return HandshakeFailure.TIMEOUT
    if isinstance(exc, ConnectionClosed):
        if exc.error_code == 0 and exc.by_peer:
            # the transport ended (EOF or reset) before the handshake did, which the link
            # core reports with code 0 (a peer's ALERT with code 0, "no error", is the
            # peer hanging up too)
            return HandshakeFailure.CLOSED
        return _HS_REASONS.get(exc.error_code, HandshakeFailure.OTHER)
    return HandshakeFailure.OTHER


async def send_message(conn: Connection, data: bytes, *, timeout: float = 10.0) -> None:
    """Send one application message over a node link and wait for its acknowledgement."""
    await conn.send(MSG_DATA + data)
    want = MSG_ACK + blake3_hash(data, 32)

    async def ack() -> None:
        for _ in range(64):
            reply = await conn.recv()
            if reply[:1] == MSG_ACK:
                if reply != want:
                    raise ConnectionClosed(0, "acknowledgement digest mismatch", True)
                return
        raise ConnectionClosed(0, "no acknowledgement", True)

    await asyncio.wait_for(ack(), timeout)


#: Indices (blinded dark addresses x period) the node stores descriptors for, and the
#: bytes they may hold in all (8 slots of at most MAX_DESCRIPTOR_SIZE each would otherwise
#: allow ~290 MB; ordinary descriptors are ~17 KB, so 32 MiB is ~1,900 of them).
DARK_STORE_INDICES = 512
DARK_STORE_BYTES = 32 * 1024 * 1024

#: Bytes the "echo" onion service returns at most per stream (bounded work per stream).
ECHO_LIMIT = 1 << 20


def write_directory(path: str, certificates: list[NodeCertificate]) -> None:
    """Write a relay directory file (JSON list of hex certificates), atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump([c.to_bytes().hex() for c in certificates], f)
    os.replace(tmp, path)


class FileDirectory(RelayDirectory):
    """A ``RelayDirectory`` read from a file of certificates, re-read if it changed (size
    or mtime) when a relay is not found in it, and at most once per ``min_interval``
    seconds when a path is selected.  Certificates that do not verify are skipped.

    This is the static stand-in for a directory distributed through the DHT."""

    def __init__(self, path: str, *, min_interval: float = 0.5) -> None:
        super().__init__()
        self.path = path
        self.min_interval = min_interval
        self._checked = float("-inf")
        self._mtime: Optional[tuple[int, int]] = None
        self.reload()

    def reload(self) -> None:
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
            if (st.st_mtime_ns, st.st_size) == self._mtime or st.st_size > (1 << 22):
                return
            with open(self.path) as f:
                items = json.load(f)
            self._mtime = (st.st_mtime_ns, st.st_size)
        except (OSError, ValueError):
            return
        now = time.time()
        for item in items if isinstance(items, list) else ():
            try:
                cert = NodeCertificate.from_bytes(bytes.fromhex(item))
                cert.verify(now)
            except Exception as exc:  # a bad entry is skipped, not fatal
                log.warning("directory %s: skipping an entry: %s", self.path, type(exc).__name__)
                continue
            self.add(DirectoryEntry(cert))

    def _maybe_reload(self) -> None:
        if time.monotonic() - self._checked >= self.min_interval:
            self.reload()

    def get(self, node_id: bytes) -> Optional[DirectoryEntry]:
        e = super().get(node_id)
        if e is None:
            self.reload()  # one stat(); the file is only read again if it changed
            e = super().get(node_id)
        return e

    def relay_infos(self) -> list:
        self._maybe_reload()
        return super().relay_infos()


async def echo_service(stream: OnionStream) -> None:
    """The "echo" onion service: returns what it receives (at most ``ECHO_LIMIT`` bytes)."""
    total = 0
    try:
        while total < ECHO_LIMIT:
            data = await stream.recv()
            if not data:
                break
            total += len(data)
            await stream.send(data)
    except StreamClosed:
        return
    finally:
        await stream.close()


async def send_over_stream(stream: OnionStream, data: bytes, *, timeout: float = 10.0) -> None:
    """Send one application message to a node's ``"msg"`` onion service and wait for its
    acknowledgement.  On a stream a message is ``u32 length || data``; the ack is the same
    as on a link: ``MSG_ACK + blake3(data, 32)``."""
    if len(data) > MAX_APP_MESSAGE:
        raise ValueError(f"message larger than {MAX_APP_MESSAGE} bytes")
    await stream.send(len(data).to_bytes(4, "big") + data)
    ack = await asyncio.wait_for(stream.readexactly(33), timeout)
    if ack != MSG_ACK + blake3_hash(data, 32):
        raise StreamClosed("acknowledgement digest mismatch", unacked_bytes=0, unacked_messages=0, cause=None)


class Node:
    """A running qudag node (see the module docstring)."""

    def __init__(self, identity: Identity, settings: NodeSettings, *, metrics: Optional[NodeMetrics] = None,
                 on_message: Optional[Callable[[Optional[NodeId], bytes], Any]] = None,
                 save_hooks: Iterable[Callable[[dict], Any]] = (),
                 restore_contacts: Iterable[tuple[str, int]] = (), database: Any = None,
                 dark_circuit_hops: Optional[int] = None) -> None:
        if dark_circuit_hops is None:
            dark_circuit_hops = settings.dark_circuit_hops  # [dark] circuit_hops
        if dark_circuit_hops and (dark_circuit_hops < 2 or not settings.relay):
            raise ValueError("dark_circuit_hops needs at least 2 hops and an onion relay (settings.relay): "
                             "the node builds the circuits with its relay")
        self.identity = identity
        self.settings = settings
        self.metrics = metrics or NodeMetrics()
        self.on_message = on_message
        self.save_hooks: list[Callable[[dict], Any]] = list(save_hooks)
        """Called with :meth:`snapshot` at shutdown; the persistence layer adds one."""
        self.restore_contacts: list[tuple[str, int]] = [tuple(a) for a in restore_contacts]  # type: ignore[misc]
        """DHT contacts loaded by the persistence layer (``Node.start(..., restore_contacts=)``);
        bootstrapped from together with the configured nodes."""
        self.database = database
        self.dark_circuit_hops = dark_circuit_hops
        """0: the node's ``DarkClient`` talks to storage nodes over direct links; N >= 2:
        through N-hop onion circuits ending at each storage node (needs ``settings.relay``).
        Not yet a configuration file setting."""
        """A ``qudag_io.persist.NodeDatabase`` that keeps the dark descriptors this node
        stores for others (loaded and written through from start); None: memory only."""
        self.listener: Optional[Listener] = None
        self.dht: Optional[DhtNode] = None
        self.http: Optional[HttpServer] = None
        self.onion: Optional[OnionNode] = None
        self.certificate: Optional[NodeCertificate] = None
        self.dark_server: Optional[DescriptorServer] = None
        """Stores other nodes' dark descriptors; answers ``dark_get``/``dark_put`` on links."""
        self.dark: Optional[DarkClient] = None
        """Publishes this node's dark addresses (needs ``settings.dark_directory``)."""
        self.peers: dict[Connection, Direction] = {}
        self._t0 = time.monotonic()
        self._dht_drops_seen = 0
        self._counted: dict[str, int] = {}  # source -> the total already turned into increments
        self._dialed: set[Connection] = set()  # outbound links handed to callers, until closed
        self._gone_link_bytes = (0, 0)  # wire bytes (in, out) of this node's links already closed
        self._sync_sources: list[Callable[[], None]] = [self._sync_drops, self._sync_dht_table,
                                                               self._sync_link_bytes]
        self._onion_metered = False
        self.metrics.add_collect_hook(self.sync_metrics)
        self._stopped = False
        self._addresses: Optional[dict[str, Any]] = None

    # -- lifecycle --------------------------------------------------------------------
    @classmethod
    async def start(cls, identity: Identity, settings: NodeSettings, **kw: Any) -> "Node":
        self = cls(identity, settings, **kw)
        try:
            await self._start()
        except BaseException:
            await self.stop(save=False)
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        # DARK_LINK_CONFIG: a dark descriptor (up to MAX_DESCRIPTOR_SIZE) must fit one frame.
        self.listener = await listen(*s.link_listen, identity=self.identity, handler=self._on_link,
                                     on_handshake_failed=self._inbound_handshake_failed, config=DARK_LINK_CONFIG)
        self.certificate = self.listener.certificate
        boot = list(dict.fromkeys([*s.bootstrap, *self.restore_contacts]))
        # The DHT id is derived from the identity so the node keeps its place in the keyspace.
        dht_id = node_dht_id(bytes(self.identity.node_id))
        self.dht = await DhtNode.start(*s.dht_listen, node_id=dht_id, bootstrap=boot, wait_bootstrap=False)
        self._meter_udp(self.dht)
        self.dark_server = DescriptorServer(self.dht, DescriptorStore(slots_per_index=8, max_bytes=DARK_STORE_BYTES,
                                                                      max_indices=DARK_STORE_INDICES))
        if self.database is not None:  # no await since the store was made: no put goes unsaved
            n = self.database.attach_descriptors(self.dark_server.store, self.dark_server.clock())
            log.info("restored %d dark descriptors stored for other nodes", n)
        dark_directory = None
        if s.dark_directory:
            dark_directory = CertificateDirectory(s.dark_directory)
            dark_directory.register(self.certificate)
        if boot:
            t = time.monotonic()
            try:
                size = await asyncio.wait_for(asyncio.shield(self.dht._bootstrapped), s.bootstrap_timeout)
            except asyncio.TimeoutError:
                self.metrics.dht_op(DhtOp.FIND_NODE, DhtOutcome.TIMEOUT, time.monotonic() - t)
                log.warning("DHT bootstrap did not finish within %.0fs; running anyway", s.bootstrap_timeout)
            else:
                self.metrics.dht_op(DhtOp.FIND_NODE, DhtOutcome.OK, time.monotonic() - t)
                log.info("DHT bootstrapped: %d nodes in the routing table", size)
        if s.relay:
            directory = FileDirectory(s.onion_directory) if s.onion_directory else RelayDirectory()
            self.onion = await OnionNode.start(self.identity, directory, host=s.onion_listen[0],
                                               port=s.onion_listen[1])
            self.onion.register_service("echo", echo_service)
            self.onion.register_service("msg", self._message_service)
            register_dark_service(self.onion, self.dark_server)
            self.meter_onion(self.onion)
        if dark_directory is not None:
            onion = OnionClient(self.onion) if self.dark_circuit_hops and self.onion is not None else None
            self.dark = DarkClient(self.dht, self.identity, dark_directory, local=self.dark_server,
                                   local_hosts=self.link_hosts, onion=onion,
                                   hops=self.dark_circuit_hops if onion is not None else 3)
            self.meter_resolver(self.dark.resolver)
        if s.http_enabled:
            if not _is_loopback(s.http_listen[0]):
                log.warning("the status/metrics server listens on %s, not loopback: /status lists this "
                            "node's peers to anyone who can reach it", s.http_listen[0])
            self.http = await start_http_server(*s.http_listen, metrics=self.metrics, status_provider=self.status)
        self._addresses = self._bound_addresses()

    def _meter_udp(self, dht: DhtNode) -> None:
        """Count the DHT socket's datagrams by wrapping its transport and protocol."""
        transport = dht._transport
        assert transport is not None
        metrics = self.metrics
        protocol = transport.get_protocol()
        inner_received = protocol.datagram_received

        def datagram_received(data: bytes, addr: Any) -> None:
            metrics.bytes_received(len(data), Transport.UDP)
            inner_received(data, addr)
            self._sync_drops()  # the core's per-IP limiter decides on receipt

        protocol.datagram_received = datagram_received  # type: ignore[method-assign]

        class _CountingTransport:
            def __init__(self, inner: Any) -> None:
                self._inner = inner

            def sendto(self, data: bytes, addr: Any = None) -> None:
                metrics.bytes_sent(len(data), Transport.UDP)
                self._inner.sendto(data, addr)

            def __getattr__(self, name: str) -> Any:
                return getattr(self._inner, name)

        dht._transport = _CountingTransport(transport)  # type: ignore[assignment]

    def meter_onion(self, onion: OnionNode) -> None:
        """Read the onion node's own counters on every scrape: cells relayed and relay
        circuits from its relay core, client circuits, cells dropped, links (connections,
        handshakes) and their wire bytes from the adapter (with the bytes of inbound
        connections whose handshake failed, from its listener).  Nothing runs per cell
        here.  Failed onion link handshakes are counted as they happen, by reason.

        The node calls it for its own relay (``settings.relay``); a node without one may
        meter one ``OnionNode`` started separately (e.g. with its own ``MixerConfig``).
        A node's metrics cover at most one onion node (its circuit gauges are set from
        it): a second call raises ``RuntimeError``."""
        if self._onion_metered:
            raise RuntimeError("this node's metrics already cover an onion node")
        self._onion_metered = True
        metrics = self.metrics
        onion.on_handshake_failed = lambda exc: metrics.handshake_failed(classify_handshake_failure(exc))
        self._sync_sources.append(lambda: self._sync_onion(onion))

    def meter_resolver(self, resolver: Any) -> None:
        """Count the cache hits and misses of a dark-address resolver this node drives
        (a ``qudag_core.dark.Resolver``, e.g. ``DarkClient.resolver``), read from the
        resolver's own ``cache_hits`` / ``cache_misses`` at scrape time."""
        def sync() -> None:
            key = id(resolver)
            self.metrics.resolver_cache_hit(self._advance(f"resolver_hits_{key}", resolver.cache_hits))
            self.metrics.resolver_cache_miss(self._advance(f"resolver_misses_{key}", resolver.cache_misses))

        self._sync_sources.append(sync)

    def sync_metrics(self) -> None:
        """Turn the counts other objects keep (DHT rate limiter, link byte counters, the
        onion relay) into metric increments.  Runs before every scrape."""
        for sync in self._sync_sources:
            sync()

    def _advance(self, source: str, total: int) -> int:
        """How much ``total`` (a monotonic count kept elsewhere) grew since last asked."""
        seen = self._counted.get(source, 0)
        if total <= seen:
            return 0
        self._counted[source] = total
        return total - seen

    def _retire_link(self, conn: Connection) -> None:
        """A node link ended: keep its final byte counts (call once per link)."""
        gin, gout = self._gone_link_bytes
        self._gone_link_bytes = (gin + conn.bytes_received, gout + conn.bytes_sent)

    def _sync_link_bytes(self) -> None:
        for conn in [c for c in self._dialed if c.is_closed]:
            self._dialed.discard(conn)
            self._retire_link(conn)
            self.metrics.connection_closed(Direction.OUTBOUND)
        live = [*self.peers, *self._dialed]
        gin, gout = self._gone_link_bytes
        if self.listener is not None:  # inbound connections that failed their handshake
            gin += self.listener.failed_bytes_received
            gout += self.listener.failed_bytes_sent
        m = self.metrics
        m.bytes_received(self._advance("link_in", gin + sum(c.bytes_received for c in live)), Transport.TCP)
        m.bytes_sent(self._advance("link_out", gout + sum(c.bytes_sent for c in live)), Transport.TCP)

    def _sync_onion(self, onion: OnionNode) -> None:
        m, relay = self.metrics, onion.relay
        for i, d in enumerate((Direction.INBOUND, Direction.OUTBOUND)):
            for _ in range(self._advance(f"onion_opened_{d}", onion.links_opened[i])):
                m.handshake_ok()  # a link only exists once its handshake completed
                m.connection_opened(d)
            for _ in range(self._advance(f"onion_lost_{d}", onion.links_lost[i])):
                m.connection_closed(d)
        m.cells_relayed(self._advance("cells_relayed", relay.cells_relayed))
        for role, built, failed in ((CircuitRole.RELAY, relay.circuits_opened, relay.circuits_failed),
                                    (CircuitRole.CLIENT, onion.circuits_built, onion.circuits_failed)):
            n = self._advance(f"{role}_built", built)
            if n:
                m.circuit_built(role, n)
            n = self._advance(f"{role}_failed", failed)
            if n:
                m.circuit_failed(role, n)
        m.set_circuits_active(relay.circuit_count, CircuitRole.RELAY)
        m.set_circuits_active(sum(1 for c in list(onion._client_circs.values()) if c.is_open), CircuitRole.CLIENT)
        m.ratelimit_drop(Limiter.CIRCUITS, self._advance("circuits_refused", relay.circuits_refused))
        m.cells_dropped(CellDropReason.MIXER_FULL, self._advance("cells_dropped_mixer",
                                                                  onion.cells_dropped_mixer_full))
        m.cells_dropped(CellDropReason.LINK_CLOSED, self._advance("cells_dropped_link",
                                                                   onion.cells_dropped_link_closed))
        # the relay core's discards; a non-relay node's cells for no circuit of its own are
        # unknown_circuit too (the relay core never sees them)
        for reason, count in relay.cells_discarded.items():
            if reason == CellDropReason.UNKNOWN_CIRCUIT:
                count += onion.cells_dropped_not_relay
            m.cells_dropped(reason, self._advance(f"cells_discarded_{reason}", count))
        bytes_in, bytes_out = onion.link_bytes()
        if onion.listener is not None:  # inbound onion links that failed their handshake
            bytes_in += onion.listener.failed_bytes_received
            bytes_out += onion.listener.failed_bytes_sent
        m.bytes_received(self._advance("onion_in", bytes_in), Transport.TCP)
        m.bytes_sent(self._advance("onion_out", bytes_out), Transport.TCP)

    def _sync_dht_table(self) -> None:
        if self.dht is not None:
            self.metrics.set_dht_routing_table_nodes(len(self.dht.core.table))

    def _sync_drops(self) -> None:
        if self.dht is None:
            return
        dropped = getattr(getattr(self.dht.core, "ratelimit", None), "drops", None)
        if isinstance(dropped, int) and dropped > self._dht_drops_seen:
            self.metrics.ratelimit_drop(Limiter.DHT_QUERIES, dropped - self._dht_drops_seen)
            self._dht_drops_seen = dropped

    async def stop(self, *, save: bool = True) -> list[str]:
        """Tell peers (link CLOSE), save state through the hooks, close everything.
        Returns one line per save hook saying what it did (empty when none is set)."""
        if self._stopped:
            return []
        self._stopped = True
        results: list[str] = []
        # Peers first, with a reason (an authenticated link CLOSE), all at once and bounded;
        # then the listener, which also ends links still mid-handshake.
        if self.peers:
            await asyncio.gather(*(c.close(0, "node shutting down", timeout=2.0) for c in list(self.peers)),
                                 return_exceptions=True)
        if self.listener is not None:
            await self.listener.close()
        if save:
            snap = self.snapshot()
            for hook in self.save_hooks:
                try:
                    r = hook(snap)
                    if asyncio.iscoroutine(r):
                        r = await r
                    results.append(str(r) if r is not None else "saved")
                except Exception as exc:  # a failed save must not prevent the rest of the shutdown
                    log.error("saving state failed: %s", exc)
                    results.append(f"failed: {exc}")
        if self.dark is not None:
            await self.dark.close()
        if self.onion is not None:
            await self.onion.close()
        if self.dht is not None:
            await self.dht.close()
        if self.http is not None:
            await self.http.close()
        return results

    # -- links ---------------------------------------------------------------------------
    async def _on_link(self, conn: Connection) -> None:
        await self._serve_peer(conn, Direction.INBOUND)

    async def _serve_peer(self, conn: Connection, direction: Direction) -> None:
        self.metrics.handshake_ok()
        self.metrics.connection_opened(direction)
        self.peers[conn] = direction
        log.info("%s link with %s", direction.value, conn.peer_node_id)
        try:
            async for msg in conn:
                if msg[:1] == b"d" and self.dark_server is not None and self.dht is not None:
                    # A bencoded dark_get/dark_put (or KRPC) query: the storing side of dark addresses.
                    reply = self.dark_server.handle(msg, tuple(conn.remote_address[:2]))
                    self.dht._process()  # KRPC handling may have queued datagrams or events
                    if reply is not None:
                        await conn.send(reply)
                    continue
                if msg[:1] != MSG_DATA or len(msg) > MAX_APP_MESSAGE:
                    continue  # not ours (or too large): ignore, the link stays usable
                data = msg[1:]
                reply = MSG_ACK + blake3_hash(data, 32)
                await conn.send(reply)
                if self.on_message is not None:
                    r = self.on_message(conn.peer_node_id, data)
                    if asyncio.iscoroutine(r):
                        await r
        finally:
            if self.peers.pop(conn, None) is not None:
                self._retire_link(conn)
            self.metrics.connection_closed(direction)

    async def _message_service(self, stream: OnionStream) -> None:
        """The ``"msg"`` onion service: messages arriving over a circuit (the sender is
        anonymous, so ``on_message`` gets ``None`` as the peer)."""
        try:
            while True:
                try:
                    n = int.from_bytes(await stream.readexactly(4), "big")
                except StreamClosed:
                    return  # the sender ended the stream
                if n > MAX_APP_MESSAGE:
                    return
                data = await stream.readexactly(n)
                await stream.send(MSG_ACK + blake3_hash(data, 32))
                if self.on_message is not None:
                    r = self.on_message(None, data)
                    if asyncio.iscoroutine(r):
                        await r
        except StreamClosed:
            return
        finally:
            await stream.close()

    def _inbound_handshake_failed(self, exc: ConnectionClosed) -> None:
        self.metrics.handshake_failed(classify_handshake_failure(exc))

    @property
    def link_hosts(self) -> tuple[str, ...]:
        """The addresses the link listener is bound to; the node's links leave from them."""
        return tuple(h for h, _ in self.listener.addresses) if self.listener is not None else ()

    async def dial(self, host: str, port: int, *, peer_id: Optional[bytes] = None,
                   peer_certificate: Optional[NodeCertificate] = None, timeout: float = 10.0) -> Connection:
        """Open an authenticated link; handshake outcomes are counted.  It leaves from
        the link listener's address of the peer's family (``link.source_address``), so a
        node run with ``--listen 127.5.0.1:PORT`` is seen by its peers as 127.5.0.1."""
        try:
            conn = await connect(host, port, identity=self.identity, expected_peer_id=peer_id,
                                 peer_certificate=peer_certificate, timeout=timeout,
                                 local_addr=source_address(host, self.link_hosts))
        except (ConnectionClosed, asyncio.TimeoutError) as exc:
            self.metrics.handshake_failed(classify_handshake_failure(exc))
            raise
        self.metrics.handshake_ok()
        self.metrics.connection_opened(Direction.OUTBOUND)
        self._dialed.add(conn)
        self._sync_link_bytes()  # also retires the dialed links that have closed since
        return conn

    # -- DHT -----------------------------------------------------------------------------
    async def _timed(self, op: DhtOp, aw: Awaitable[Any]) -> Any:
        t = time.monotonic()
        try:
            result = await aw
        except DhtError as exc:
            outcome = DhtOutcome.TIMEOUT if "timeout" in str(exc).lower() else DhtOutcome.ERROR
            self.metrics.dht_op(op, outcome, time.monotonic() - t)
            raise
        self.metrics.dht_op(op, DhtOutcome.OK, time.monotonic() - t)
        return result

    async def dht_put(self, bencoded_value: bytes) -> bytes:
        assert self.dht is not None
        return await self._timed(DhtOp.PUT, self.dht.put(bencoded_value))

    async def dht_get(self, target: bytes) -> Optional[bytes]:
        assert self.dht is not None
        return (await self._timed(DhtOp.GET, self.dht.get(target))).value

    async def dht_find_node(self, target: bytes) -> Any:
        assert self.dht is not None
        return await self._timed(DhtOp.FIND_NODE, self.dht.find_node(target))

    async def dht_ping(self, addr: tuple) -> Any:
        assert self.dht is not None
        return await self._timed(DhtOp.PING, self.dht.ping(addr))

    # -- status and state ----------------------------------------------------------------
    def addresses(self) -> dict[str, Any]:
        """Bound addresses (recorded at start, so still answerable after :meth:`stop`)."""
        if self._addresses is None:
            self._addresses = self._bound_addresses()
        return self._addresses

    def _bound_addresses(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.listener is not None:
            out["link"] = [list(a) for a in self.listener.addresses]
        if self.dht is not None:
            out["dht"] = list(self.dht.address)
        if self.onion is not None:
            out["onion"] = list(self.onion.address)
        if self.http is not None:
            out["http"] = [self.http.host, self.http.port]
        return out

    def status(self) -> dict:
        """The ``/status`` document."""
        self._sync_drops()
        return {
            "node_id": self.identity.node_id.hex(),
            "dht_node_id": self.dht.node_id.hex() if self.dht else None,
            "uptime_seconds": round(time.monotonic() - self._t0, 3),
            "addresses": self.addresses(),
            "peers": [{"node_id": c.peer_node_id.hex(), "direction": d.value, "address": list(c.remote_address[:2])}
                      for c, d in self.peers.items()],
            "running": not self._stopped,
            "routing_table_size": len(self.dht.core.table) if self.dht else 0,
            "stored_records": len(self.dht.core.store) if self.dht and hasattr(self.dht.core.store, "__len__") else None,
            "dark": {"stored_descriptors": len(self.dark_server.store) if self.dark_server else 0,
                     "can_publish": self.dark is not None},
            "circuits": ({"relay": True, "relayed_circuits": self.onion.relay.circuit_count,
                          "cells_relayed": self.onion.relay.cells_relayed,
                          "directory_size": len(self.onion.directory)} if self.onion is not None
                         else {"relay": False, "relayed_circuits": 0, "cells_relayed": 0}),
        }

    def snapshot(self) -> dict:
        """What a persistence layer would keep: identity-free, secret-free node state."""
        contacts: list[tuple[bytes, tuple]] = []
        if self.dht is not None:
            for n in self.dht.core.table.closest(self.dht.node_id, 64):
                contacts.append((bytes(n.node_id), tuple(n.addr)))
        return {"node_id": self.identity.node_id.hex(), "dht_contacts": contacts, "saved_at": time.time()}

