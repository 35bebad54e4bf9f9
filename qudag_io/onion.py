"""Onion routing over real links: relay, client and exit service nodes (docs/onion-network.md).

Drives the sans-IO onion cores (``qudag_core.onion``: ``OnionRelay``, ``ClientCircuit``,
``StreamMux``, ``Mixer``, ``select_path``) with the authenticated post-quantum TCP links of
``qudag_io.link``.  One link per neighbouring node; every link message carries one or a
batch of whole 1024-byte cells (a message whose length is not a multiple of the cell size
is a protocol violation and ends the link).  The link is AEAD-protected and authenticated,
so each side knows which ``NodeId`` is on it; relays open links to the next hop by NodeId
through a static ``RelayDirectory``.

The decision a reader asks about: **where a stream ends.**  The last hop of the circuit is
the destination: ``open_stream(dest, service)`` requires ``dest`` to be the circuit's last
hop, and that node hands the stream to the service registered under ``service`` with
``node.register_service(name, handler)``.  A destination that is not a relay is reached by
building the circuit with ``exit=dest``.  This keeps the exit's plaintext local (no extra
unprotected hop) and needs no new relay command.

Every relay's outgoing cells pass through a ``Mixer`` (per-circuit FIFO, so relay crypto
chaining is never broken); the default ``mean_delay=0`` is a pass-through so tests and
interactive use stay fast.  Core timers (circuit lifetime and handshake deadlines, relay
reassembly deadlines, mixer release times) run through ``get_timer``/``handle_timer`` with
one ``call_at`` per node; link keepalive and idle close run in the link cores
(``LinkConfig.channel.keepalive_interval`` / ``idle_timeout``).  Cores see
``time.monotonic()``; only the link adapter needs the calendar (certificates).

A relay dials its next hops from the address its listener is bound to
(``qudag_io.link.source_address``; the kernel picks when that is a wildcard), so the next
hop sees it at the address the directory lists for it.

Public API::

    node = await OnionNode.start(identity, directory, host="127.0.0.1")
    node.register_service("echo", handler)           # handler(stream) -> awaitable
    client = OnionClient(node)                         # per_subnet=None: relays share a /16
    circuit = await client.build_circuit(hops=3)
    stream = await circuit.open_stream(circuit.exit_node_id, "echo")
    await stream.send(b"data"); data = await stream.recv(); await stream.close()
    await circuit.close()                              # sends DESTROY
    await node.close()
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from qudag_core.identity import Identity, NodeCertificate
from qudag_core.link import LinkConfig
from qudag_core.errors import LocalProtocolError
from qudag_core.onion.cells import CELL_SIZE, RELAY_DATA_MAX, CellError, DestroyReason, RelayCommand
from qudag_core.onion.circuit import ClientCircuit, HopSpec
from qudag_core.onion.events import (
    CircuitBuilt,
    CircuitClosed,
    CircuitRotationDue,
    ExitDataReceived,
    ExitMessageReceived,
    LinkNeeded,
    RelayCircuitClosed,
    RelayMessageReceived,
)
from qudag_core.onion.mixer import Mixer
from qudag_core.onion.path import RelayInfo, select_path
from qudag_core.onion.relay import OnionRelay
from qudag_core.onion.streams import (
    STREAM_INCREMENT,
    StreamData,
    StreamEnded,
    StreamMux,
    StreamOpened,
    StreamRequested,
)
from qudag_io.link import Connection, ConnectionClosed, Listener, connect, listen, source_address


def link_frame_size(config: LinkConfig) -> int:
    """The largest message the link carries in one frame (``channel.max_frame_size``)."""
    return int(config.channel.max_frame_size)

__all__ = [
    "DirectoryEntry",
    "RelayDirectory",
    "MixerConfig",
    "OnionNode",
    "OnionClient",
    "OnionCircuit",
    "OnionStream",
    "CircuitError",
    "StreamClosed",
]

log = logging.getLogger("qudag.onion")

#: Cells per link message at most: one AEAD frame per message, so fuller messages mean
#: fewer frames; the link's ``max_frame_size`` caps it further (64 KiB holds 64 cells).
MAX_BATCH = 64
#: Pending cells per link above which the readers feeding it pause (backpressure); they
#: resume once its writer has brought it down to ``LINK_HIGH // 2``.
LINK_HIGH = 512
#: Seconds one link message may wait for the peer to take it (the socket's write buffer
#: to drain) before the link is declared stalled and aborted.  Readers paused for a link
#: wait for nothing but its drain, so this is what bounds their pause when the peer hangs
#: (links have no idle timeout by default) and breaks any cycle of relays waiting on each
#: other; a peer that takes nothing of a 64 KiB write for this long carries no circuit.
LINK_STALL_TIMEOUT = 60.0
#: Relay output cells one received cell can cause at most: a relayed cell is one cell; a
#: refused one is a DESTROY toward each side of its circuit (two).  An admitted link
#: message of n cells therefore hands the mixer at most ``OUT_PER_CELL * n`` cells.
OUT_PER_CELL = 2
#: Cells that may wait for room in a full mixer (``OnionNode._mix_backlog``) before the
#: last-resort drop.  Relayed traffic cannot get there (see ``OnionNode._flush``).
MIX_BACKLOG_MAX = 1 << 16
#: END reason sent when the service is unknown.
END_NO_SERVICE = 2


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """A relay as listed in the static directory."""

    certificate: NodeCertificate
    bandwidth: float = 1.0
    reputation: float = 1.0

    @property
    def node_id(self) -> bytes:
        return bytes(self.certificate.node_id)


class RelayDirectory:
    """Static list of relays: (NodeId, certificate) plus weights for path selection."""

    def __init__(self, entries: list[DirectoryEntry] = ()) -> None:  # type: ignore[assignment]
        self._by_id: dict[bytes, DirectoryEntry] = {}
        for e in entries:
            self.add(e)

    def add(self, entry: DirectoryEntry) -> None:
        self._by_id[entry.node_id] = entry

    def get(self, node_id: bytes) -> Optional[DirectoryEntry]:
        return self._by_id.get(bytes(node_id))

    def __len__(self) -> int:
        return len(self._by_id)

    def relay_infos(self) -> list[RelayInfo]:
        out = []
        for e in self._by_id.values():
            cert = e.certificate
            addr = cert.addresses[0][0] if cert.addresses else "0.0.0.0"
            out.append(RelayInfo(e.node_id, addr, e.bandwidth, e.reputation, cert.xwing_public_key))
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class MixerConfig:
    """Settings of each relay's outgoing-cell mixer (see ``qudag_core.onion.mixer``)."""

    mean_delay: float = 0.0
    """Mean extra delay per cell; 0 is a pass-through (low latency, tests stay fast)."""
    max_queue: int = 1 << 16
    """Cells the mixer holds at most.  Readers stop reading above ``max_queue - 2 x cells
    per link message`` (docs/onion.md §4.1), so nothing relayed is dropped; below 128
    (default frames) they admit a message only into an empty mixer."""
    batch_interval: Optional[float] = None


class CircuitError(Exception):
    """The circuit is gone.  ``reason`` is a ``DestroyReason``; ``remote`` says whether a
    DESTROY arrived (True) or this node closed it (False)."""

    def __init__(self, reason: int, remote: bool, detail: str = "") -> None:
        try:
            name = DestroyReason(reason).name
        except ValueError:
            name = str(reason)
        super().__init__(f"circuit destroyed ({'remote' if remote else 'local'}): {name} {detail}".rstrip())
        self.reason = reason
        self.remote = remote


class StreamClosed(Exception):
    """The stream ended before everything sent was acknowledged.

    ``unacked_bytes`` / ``unacked_messages``: what this side passed to ``send`` and the
    destination never acknowledged (SENDMEs acknowledge delivery at the exit, in units of
    50 cells); ``cause`` is the ``CircuitError`` if the circuit died."""

    def __init__(self, msg: str, *, unacked_bytes: int, unacked_messages: int, cause: Optional[BaseException]) -> None:
        super().__init__(f"{msg}: {unacked_bytes} bytes in {unacked_messages} messages not acknowledged")
        self.unacked_bytes = unacked_bytes
        self.unacked_messages = unacked_messages
        self.cause = cause


# ---------------------------------------------------------------------------------------
# links


class _NodeLink:
    """One authenticated link to a neighbour: a reader task feeding cells to the node and
    a writer task sending batched cells."""

    def __init__(self, node: "OnionNode", link_id: int, conn: Connection) -> None:
        self.node = node
        self.id = link_id
        self.conn = conn
        self.peer = bytes(conn.peer_node_id)
        #: Queued output: items of n x 1024 bytes (whole cells), in order.
        self.pending: deque[bytes] = deque()
        #: Cells in ``pending`` (the backpressure measure).
        self.pending_cells = 0
        #: Client circuits of this node that start on this link (none: every cell
        #: arriving here is for the relay core).
        self.client_circuits = 0
        frame = link_frame_size(node.link_config)
        self._batch_bytes = max(1, min(MAX_BATCH, frame // CELL_SIZE)) * CELL_SIZE
        self._wake: Optional[asyncio.Future[None]] = None
        self._drained = asyncio.Event()
        self._drained.set()
        self.closed = False
        self.outbound = False  #: we dialled it
        loop = asyncio.get_running_loop()
        self.writer = loop.create_task(self._write_loop())

    def queue(self, cell: bytes) -> None:
        if self.closed:
            self.node.cells_dropped_link_closed += len(cell) // CELL_SIZE
            return
        self.pending.append(cell)
        self.pending_cells += len(cell) // CELL_SIZE
        self._queued()

    def queue_many(self, cells: list) -> None:
        """Queue items of whole cells (single cells or n x 1024-byte batches)."""
        if self.closed or not cells:
            if self.closed:
                self.node.cells_dropped_link_closed += sum(len(c) for c in cells) // CELL_SIZE
            return
        self.pending.extend(cells)
        self.pending_cells += sum(len(c) for c in cells) // CELL_SIZE
        self._queued()

    def _queued(self) -> None:
        if self.pending_cells > LINK_HIGH:
            self._drained.clear()
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def wait_writable(self) -> None:
        await self._drained.wait()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not self.pending:
                    self._wake = loop.create_future()
                    await self._wake
                    self._wake = None
                # coalesce whatever is queued into one message of up to _batch_bytes
                pending = self.pending
                limit = self._batch_bytes
                parts = []
                size = 0
                while pending and size < limit:
                    item = pending[0]
                    room = limit - size
                    if len(item) <= room:
                        parts.append(pending.popleft())
                        size += len(item)
                    else:
                        mv = memoryview(item)
                        parts.append(mv[:room])
                        pending[0] = mv[room:]
                        size += room
                self.pending_cells -= size // CELL_SIZE
                batch = parts[0] if len(parts) == 1 and type(parts[0]) is bytes else b"".join(parts)
                if self.pending_cells <= LINK_HIGH // 2:
                    self._drained.set()
                hook = self.node.link_send_hook
                if hook is not None:
                    hook(self.peer, batch)
                stall = loop.call_later(LINK_STALL_TIMEOUT, self._stalled)  # one timer per message
                try:
                    await self.conn.send(batch)
                except ConnectionClosed:
                    # raised before anything was written: the batch never left
                    self.node.cells_dropped_link_closed += len(batch) // CELL_SIZE
                    raise
                finally:
                    stall.cancel()
        except (ConnectionClosed, asyncio.CancelledError):
            pass
        finally:
            self._drained.set()

    def _stalled(self) -> None:
        """The peer took nothing for ``LINK_STALL_TIMEOUT`` s: drop the link (an
        authenticated close would wait behind the same full buffer).  Its reader then ends,
        the relay destroys its circuits, and readers paused for it resume."""
        log.warning("link to %s stalled for %.0f s: aborting it", self.peer.hex()[:8], LINK_STALL_TIMEOUT)
        self.conn.abort()

    async def _until(self, ready: asyncio.Event) -> None:
        """Wait for ``ready`` or for this link to close, whichever comes first (node
        shutdown closes or aborts every link, so it ends the wait too)."""
        conn = self.conn
        if ready.is_set() or conn.is_closed:
            return
        waits = [asyncio.ensure_future(ready.wait()), asyncio.ensure_future(conn.wait_closed())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def read_loop(self) -> None:
        """Read link messages and hand them to the node, with backpressure (docs/onion.md
        §4.1): before handing a message on, hold it while a link the previous message's
        output went to is above ``LINK_HIGH`` (until it is back at half that) and while
        the relay's mixer is above its high watermark (until it is back at the low one).
        Meanwhile nothing more is read: the link's receive queue is bounded, so TCP pushes
        back on the peer instead of the relay dropping cells.  The mixer is checked last,
        with no await between that check and ``_cells_in``, so two readers can never both
        be admitted against the same room.

        No deadlock: the mixer drains by the clock alone (its releases go onto link queues,
        which never block), and a reader never waits for its own link's queue: a cell
        read here whose output goes back out on the same link (an exit's SENDMEs, a circuit
        that visits the peer again) would otherwise wait for a peer that may be waiting for
        us.  So two relays pushing to each other cannot stall: each waits only on its links
        to third nodes, and a client never waits at all (its circuits answer on the link
        they read).  A cycle of three or more relays whose links are all congested by
        circuits turning the same way round it can still stall, every writer on it blocked
        on a full socket, until ``LINK_STALL_TIMEOUT`` aborts one of those links (losing its
        circuits): avoiding that needs per-circuit queues, out of scope here, as is
        per-circuit fairness (a slow next hop pauses the whole inbound link feeding it)."""
        node = self.node
        conn = self.conn
        fed: Any = ()  # links the previous message's output went to
        try:
            while True:
                msg = await self.conn.recv()
                hook = node.link_recv_hook
                if hook is not None:
                    hook(self.peer, msg)
                if not msg or len(msg) % CELL_SIZE:
                    log.debug("link from %s sent a %d-byte message: closing", self.peer.hex()[:8], len(msg))
                    await self.conn.close(1, "onion: not whole cells")
                    break
                # Hold this message (the link's bounded receive queue then fills and TCP
                # pushes back on the peer) until there is room for what it will cause.
                for link in fed:
                    while link is not self and link.pending_cells > LINK_HIGH and not conn.is_closed:
                        await self._until(link._drained)  # set at LINK_HIGH // 2 or when it ends
                if node._mix_gated:  # one length check per message, never per cell
                    mixer = node.mixer
                    while (len(mixer) > node._mix_high or node._mix_backlog) and not (
                        node._closed or conn.is_closed
                    ):
                        node._mix_room.clear()
                        await self._until(node._mix_room)
                # no await from the last check to here: another reader cannot slip in
                node._cells_in(self, msg)
                fed = node._fed_links
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.writer.cancel()
            # cells still queued never reach the peer (the writer is only ever suspended
            # with its batch already handed to the transport, or with nothing queued)
            node.cells_dropped_link_closed += self.pending_cells
            self.pending.clear()
            self.pending_cells = 0
            node._link_lost(self)

    def abort(self) -> None:
        """Drop the TCP connection without an authenticated close (tests: relay failure)."""
        self.conn.abort()

    def freeze(self) -> None:
        """Stop reading and writing without closing anything (tests: a hung relay).  The
        peer only finds out through its link's keepalive / idle timeout."""
        self.conn.freeze()
        self.writer.cancel()


# ---------------------------------------------------------------------------------------
# node


class OnionNode:
    """A node with one listener, links to neighbours, a relay core and exit services.

    Construct with ``await OnionNode.start(...)``.  ``relay=False`` makes a client-only
    node that refuses to carry circuits for others.  ``cell_filter(peer_node_id, cell) ->
    bytes`` (tests) sees every cell this relay forwards just before it is queued on a link.
    """

    def __init__(
        self,
        identity: Identity,
        directory: RelayDirectory,
        *,
        relay: bool = True,
        link_config: Optional[LinkConfig] = None,
        mixer: MixerConfig = MixerConfig(),
        circuit_lifetime: float = 600.0,
        handshake_timeout: float = 30.0,
        rng: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.identity = identity
        self.node_id = bytes(identity.node_id)
        self.directory = directory
        self.is_relay = relay
        self.link_config = link_config or LinkConfig()
        self.circuit_lifetime = circuit_lifetime
        self.handshake_timeout = handshake_timeout
        self.rng = rng
        self._loop = asyncio.get_running_loop()
        self.relay = OnionRelay(self.node_id, identity.kem_key, rng=rng, handshake_timeout=handshake_timeout)
        self.mixer = Mixer(
            rng=rng,
            mean_delay=mixer.mean_delay,
            max_queue=mixer.max_queue,
            batch_interval=mixer.batch_interval,
            now=time.monotonic(),
        )
        # A zero-delay mixer without batching releases every cell at once, in order: skip
        # its heap (same output, less per-cell work on the hot path).
        self._mix_passthrough = mixer.mean_delay == 0 and mixer.batch_interval is None
        # Backpressure (docs/onion.md §4.1): readers pause while the mixer holds more than
        # _mix_high cells and resume at _mix_low.  _mix_high leaves room for the output of
        # one maximal link message (a link message is at most max_frame_size bytes), so a
        # message admitted at or below it always fits; with a mixer too small for that
        # (max_queue < 2 x cells per message) readers wait for an empty mixer and what
        # does not fit waits, in order, in _mix_backlog.  The pass-through has no gate.
        self._mix_gated = not self._mix_passthrough
        msg_cells = max(MAX_BATCH, link_frame_size(self.link_config) // CELL_SIZE)
        self._mix_high = max(0, mixer.max_queue - OUT_PER_CELL * msg_cells)
        self._mix_low = self._mix_high // 2
        self._mix_room = asyncio.Event()
        self._mix_room.set()
        #: ((link_id, circ_id bytes), cell) that found the mixer full, oldest first.
        self._mix_backlog: deque[tuple[Any, Any]] = deque()
        self._mix_backlog_max = MIX_BACKLOG_MAX
        #: Links the last ``_flush`` queued (or meant to queue) cells for: the reader that
        #: caused that flush waits on them before handing on its next message.
        self._fed_links: Any = ()
        self.listener: Optional[Listener] = None
        self.certificate: Optional[NodeCertificate] = None
        self._links_by_id: dict[int, _NodeLink] = {}
        self._links_by_peer: dict[bytes, _NodeLink] = {}
        self._next_link_id = 1
        self._dialing: dict[bytes, asyncio.Task[Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client_circs: dict[tuple[int, int], "OnionCircuit"] = {}
        self._exits: dict[tuple[int, int], "_ExitCircuit"] = {}
        self._services: dict[bytes, Callable[["OnionStream"], Awaitable[None]]] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at: Optional[float] = None
        self._closed = False
        self._frozen = False
        #: Test hooks: ``cell_filter(peer, cell) -> cell`` on forwarded cells;
        #: ``link_send_hook(peer, message)`` / ``link_recv_hook(peer, message)`` see every
        #: link message (a batch of whole cells) just before send / just after receipt.
        self.cell_filter: Optional[Callable[[bytes, bytes], bytes]] = None
        self.link_send_hook: Optional[Callable[[bytes, bytes], None]] = None
        self.link_recv_hook: Optional[Callable[[bytes, bytes], None]] = None
        #: Counters for metrics: client circuits built / failed before they were built;
        #: links opened and lost by direction ([inbound, outbound]).
        self.circuits_built = self.circuits_failed = 0
        self.links_opened, self.links_lost = [0, 0], [0, 0]
        self._gone_link_bytes = (0, 0)  # wire bytes (in, out) of links already lost
        #: Cells dropped on their way out (relayed cells or this node's own): the mixer
        #: was full; the link they were for had closed (or closed with them still queued).
        self.cells_dropped_mixer_full = self.cells_dropped_link_closed = 0
        #: Cells received for no client circuit of this node while it is not a relay (a
        #: relay hands them to its core, which counts its own discards).
        self.cells_dropped_not_relay = 0
        #: ``on_handshake_failed(exc)`` is told of every failed link handshake (metrics).
        self.on_handshake_failed: Optional[Callable[[BaseException], None]] = None
        #: The addresses this node's listener is bound to (set by ``start``).  Links it
        #: dials leave from the one of the next hop's family (``link.source_address``), so
        #: a relay is seen by the next hop at the address the directory lists for it; none
        #: (the kernel picks) when that is a wildcard or loopback facing a public peer.
        self.bound_hosts: tuple[str, ...] = ()

    @classmethod
    async def start(
        cls, identity: Identity, directory: RelayDirectory, *, host: str = "127.0.0.1", port: int = 0, **kw: Any
    ) -> "OnionNode":
        node = cls(identity, directory, **kw)
        node.listener = await listen(
            host, port, identity=identity, handler=node._accept, config=node.link_config, rng=node.rng,
            on_handshake_failed=node._handshake_failed,
        )
        node.certificate = node.listener.certificate
        node.bound_hosts = tuple(h for h, _ in node.listener.addresses)
        return node

    @property
    def address(self) -> tuple[str, int]:
        assert self.listener is not None
        return self.listener.addresses[0]

    def directory_entry(self, bandwidth: float = 1.0, reputation: float = 1.0) -> DirectoryEntry:
        assert self.certificate is not None
        return DirectoryEntry(self.certificate, bandwidth, reputation)

    def register_service(self, name: str | bytes, handler: Callable[["OnionStream"], Awaitable[None]]) -> None:
        """Streams opened to this node for ``name`` run ``handler(stream)``."""
        self._services[name.encode() if isinstance(name, str) else bytes(name)] = handler

    # -- links ---------------------------------------------------------------------------

    async def _accept(self, conn: Connection) -> None:
        link = self._add_link(conn)
        await link.read_loop()

    def _handshake_failed(self, exc: BaseException) -> None:
        if self.on_handshake_failed is not None:
            self.on_handshake_failed(exc)

    def _add_link(self, conn: Connection, outbound: bool = False) -> _NodeLink:
        link = _NodeLink(self, self._next_link_id, conn)
        link.outbound = outbound
        self.links_opened[outbound] += 1
        self._next_link_id += 1
        self._links_by_id[link.id] = link
        self._links_by_peer[link.peer] = link
        return link

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        t = self._loop.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
        return t

    async def link_to(self, node_id: bytes, timeout: float = 10.0) -> _NodeLink:
        """The link to ``node_id``, dialled through the directory if there is none."""
        node_id = bytes(node_id)
        link = self._links_by_peer.get(node_id)
        if link is not None and not link.closed:
            return link
        task = self._dialing.get(node_id)
        if task is None:
            task = self._spawn(self._dial(node_id, timeout))
            self._dialing[node_id] = task
        return await asyncio.shield(task)

    async def _dial(self, node_id: bytes, timeout: float) -> _NodeLink:
        try:
            entry = self.directory.get(node_id)
            if entry is None or not entry.certificate.addresses:
                raise LookupError(f"relay {node_id.hex()[:16]} not in the directory")
            host, port = entry.certificate.addresses[0]
            try:
                conn = await connect(
                    str(host),
                    int(port),
                    identity=self.identity,
                    peer_certificate=entry.certificate,
                    config=self.link_config,
                    timeout=timeout,
                    rng=self.rng,
                    local_addr=source_address(str(host), self.bound_hosts),
                )
            except (ConnectionClosed, asyncio.TimeoutError) as exc:
                self._handshake_failed(exc)
                raise
            link = self._add_link(conn, outbound=True)
            self._spawn(link.read_loop())
            return link
        finally:
            self._dialing.pop(node_id, None)

    def link_bytes(self) -> tuple[int, int]:
        """Wire bytes (received, sent) on every link this node has had, handshakes included."""
        live = [link.conn for link in self._links_by_id.values()]
        gin, gout = self._gone_link_bytes
        return gin + sum(c.bytes_received for c in live), gout + sum(c.bytes_sent for c in live)

    def _link_lost(self, link: _NodeLink) -> None:
        if self._links_by_id.pop(link.id, None) is not None:
            gin, gout = self._gone_link_bytes
            self._gone_link_bytes = (gin + link.conn.bytes_received, gout + link.conn.bytes_sent)
            self.links_lost[link.outbound] += 1
        if self._links_by_peer.get(link.peer) is link:
            del self._links_by_peer[link.peer]
        if self._closed:
            return
        self._relay_events(self.relay.link_closed(link.id))
        for key, circ in list(self._client_circs.items()):
            if key[0] == link.id:
                circ._fail(CircuitError(DestroyReason.CONNECT_FAILED, True, "link to the first hop lost"))
        self._flush()

    # -- cells in ------------------------------------------------------------------------

    def _cells_in(self, link: _NodeLink, msg: bytes) -> None:
        """One link message (n whole cells): runs of cells for one of our client circuits
        go to it, everything else to the relay core, each as one batch call."""
        now = time.monotonic()
        lid = link.id
        if not link.client_circuits:
            if self.is_relay:
                events = self.relay.receive_cells(lid, msg, now)
                if events:
                    self._relay_events(events)
            else:
                self.cells_dropped_not_relay += len(msg) // CELL_SIZE
            self._flush()
            return
        mv = memoryview(msg)
        n = len(msg) // CELL_SIZE
        clients = self._client_circs
        i = 0
        while i < n:
            circ_id = int.from_bytes(mv[i * CELL_SIZE : i * CELL_SIZE + 4], "big")
            client = clients.get((lid, circ_id))
            j = i + 1
            if client is not None:
                while j < n and int.from_bytes(mv[j * CELL_SIZE : j * CELL_SIZE + 4], "big") == circ_id:
                    j += 1
                client._receive(mv[i * CELL_SIZE : j * CELL_SIZE], now)
            else:
                while j < n and (lid, int.from_bytes(mv[j * CELL_SIZE : j * CELL_SIZE + 4], "big")) not in clients:
                    j += 1
                if self.is_relay:
                    events = self.relay.receive_cells(lid, mv[i * CELL_SIZE : j * CELL_SIZE], now)
                    if events:
                        self._relay_events(events)
                else:
                    self.cells_dropped_not_relay += j - i
            i = j
        self._flush()

    def _relay_events(self, events: list) -> None:
        run: list = []  # consecutive exit messages of one circuit: handled as one batch
        for ev in events:
            if type(ev) is ExitDataReceived or type(ev) is ExitMessageReceived:
                if run and (run[0].link_id != ev.link_id or run[0].circ_id != ev.circ_id):
                    self._exit_messages(run)
                    run = []
                run.append(ev)
                continue
            if run:
                self._exit_messages(run)
                run = []
            if isinstance(ev, ExitMessageReceived):
                self._exit_message(ev)
            elif isinstance(ev, LinkNeeded):
                self._spawn(self._open_next(bytes(ev.node_id)))
            elif isinstance(ev, RelayCircuitClosed):
                ex = self._exits.pop((ev.link_id, ev.circ_id), None)
                if ex is not None:
                    ex.closed(CircuitError(ev.reason, True))
        if run:
            self._exit_messages(run)

    async def _open_next(self, node_id: bytes) -> None:
        try:
            link = await self.link_to(node_id, timeout=self.handshake_timeout)
        except Exception as exc:  # noqa: BLE001 - any failure to dial means CONNECT_FAILED
            log.debug("extend to %s failed: %r", node_id.hex()[:16], exc)
            self._relay_events(self.relay.link_failed(node_id, time.monotonic()))
        else:
            self._relay_events(self.relay.link_ready(node_id, link.id, time.monotonic()))
        self._flush()

    def _exit_messages(self, evs: list) -> None:
        key = (evs[0].link_id, evs[0].circ_id)
        ex = self._exits.get(key)
        if ex is None:
            ex = self._exits[key] = _ExitCircuit(self, key[0], key[1])
        ex.receive_many(evs)

    def _exit_message(self, ev: ExitMessageReceived) -> None:
        key = (ev.link_id, ev.circ_id)
        ex = self._exits.get(key)
        if ex is None:
            ex = self._exits[key] = _ExitCircuit(self, ev.link_id, ev.circ_id)
        ex.receive(ev.command, ev.stream_id, ev.data)

    # -- cells out -----------------------------------------------------------------------

    def _flush(self) -> None:
        """Relay core -> (filter) -> mixer -> links; then re-arm the node's one timer."""
        links = self._links_by_id
        filt = self.cell_filter
        if filt is not None or not self._mix_passthrough:
            out = self.relay.cells_to_send()  # per-cell: the filter and the mixer see cells
        else:
            out = self.relay.batches_to_send()
        if filt is not None:
            out = [(lid, filt(links[lid].peer if lid in links else b"", cell)) for lid, cell in out]
        if self._mix_passthrough:
            touched = set()
            for link_id, cells in out:
                link = links.get(link_id)
                if link is not None and not link.closed:
                    link.pending.append(cells)
                    link.pending_cells += len(cells) // CELL_SIZE
                    touched.add(link)
                else:
                    self.cells_dropped_link_closed += len(cells) // CELL_SIZE
            for link in touched:
                link._queued()
            self._fed_links = touched
        else:
            now = time.monotonic()
            mixer = self.mixer
            backlog = self._mix_backlog
            if backlog:
                self._mix_refill(now)  # older cells first: a circuit's cells keep their order
            fed = set()
            last = None
            for link_id, cell in out:
                if link_id != last:
                    last = link_id
                    link = links.get(link_id)
                    if link is not None:
                        fed.add(link)
                key = (link_id, bytes(cell[:4]))
                if backlog or not mixer.push(key, cell, now):
                    backlog.append((key, cell))
            self._fed_links = fed
            for (link_id, _), cell in mixer.cells_to_send(now):
                link = links.get(link_id)
                if link is not None:
                    link.queue(cell)  # counts it if the link has closed
                else:
                    self.cells_dropped_link_closed += 1
            if backlog:
                self._mix_refill(now)
                # Last resort, unreachable for relayed cells: a reader admits no message
                # while the backlog holds anything, and one admitted message adds at most
                # OUT_PER_CELL x its cells.  Only cells this node makes itself outside a
                # read can pile up here (its exit services' replies, bounded per circuit
                # by the SENDME window; DESTROYs when a link with many circuits is lost;
                # CREATEs when a dialled link comes up); this bound keeps even that finite.
                full = len(backlog) - self._mix_backlog_max
                if full > 0:
                    for _ in range(full):
                        backlog.pop()
                    self.cells_dropped_mixer_full += full
                    log.warning("mixer backlog full: %d cell(s) dropped (their circuits will fail the integrity check)", full)
            if not backlog and len(mixer) <= self._mix_low:
                self._mix_room.set()
        self._rearm()

    def _mix_refill(self, now: float) -> None:
        """Move cells from the backlog into the mixer while it has room, oldest first."""
        backlog = self._mix_backlog
        push = self.mixer.push
        while backlog:
            key, cell = backlog[0]
            if not push(key, cell, now):
                break
            backlog.popleft()

    def _rearm(self) -> None:
        if self._closed:
            return
        ts = [t for t in (self.relay.get_timer(), self.mixer.get_timer()) if t is not None]
        ts += [t for c in self._client_circs.values() if (t := c._core.get_timer()) is not None]
        when = min(ts) if ts else None
        if when == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = None if when is None else self._loop.call_later(max(0.0, when - time.monotonic()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = time.monotonic()
        self.mixer.handle_timer(now)
        self._relay_events(self.relay.handle_timer(now))
        for circ in list(self._client_circs.values()):
            circ._timer(now)
        self._flush()

    # -- shutdown ------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the listener and every link (authenticated close) and task."""
        await self._shutdown(abrupt=False)

    async def kill(self) -> None:
        """Tests: die abruptly (listener closed, TCP connections aborted, no DESTROY)."""
        await self._shutdown(abrupt=True)

    def freeze(self) -> None:
        """Tests: hang (every link stops reading and writing; nothing is closed)."""
        self.is_relay = False
        self._frozen = True
        for link in self._links_by_id.values():
            link.freeze()

    async def _shutdown(self, abrupt: bool) -> None:
        if self._closed:
            return
        self._closed = True
        self._mix_room.set()  # ends every wait for mixer room (readers, exit services)
        abrupt = abrupt or self._frozen
        if self._timer is not None:
            self._timer.cancel()
        for circ in list(self._client_circs.values()):
            circ._fail(CircuitError(DestroyReason.FINISHED, False, "node closed"))
        for ex in list(self._exits.values()):
            ex.closed(CircuitError(DestroyReason.FINISHED, False, "node closed"))
        links = list(self._links_by_id.values())
        for link in links:
            if abrupt:
                link.abort()
        if self.listener is not None:
            await self.listener.close()
        if not abrupt:
            await asyncio.gather(*(link.conn.close(timeout=2.0) for link in links), return_exceptions=True)
        for link in links:
            link.writer.cancel()
        tasks = list(self._tasks) + [link.writer for link in links]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


# ---------------------------------------------------------------------------------------
# streams


class OnionStream:
    """One stream over a circuit (client end or service end).

    ``send`` waits while the SENDME windows are closed; ``recv`` returns the next bytes
    as they arrived (one DATA cell's, or at a service a run of DATA cells from one link
    message, up to ~64 KB) and ``b""`` once the peer ended the stream; both raise
    ``StreamClosed`` if the circuit died, carrying what was not acknowledged, and once
    this end called ``close()`` (there is no half-close: bytes already received are
    still returned first, nothing arrives after)."""

    def __init__(self, owner: "_StreamOwner", stream_id: int) -> None:
        self._owner = owner
        self.stream_id = stream_id
        self._rx: deque[bytes] = deque()
        self._rx_buf = b""
        self._rx_wait: Optional[asyncio.Future[None]] = None
        self._tx_wait: Optional[asyncio.Future[None]] = None
        self._eof = False
        self._closed_local = False
        self._error: Optional[BaseException] = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # acknowledgement accounting (SENDMEs for this stream acknowledge 50 cells each)
        self._offered = 0
        self._msg_ends: deque[int] = deque()  # cumulative end offsets of send() calls
        # (cells, bytes) of each piece the mux took, not yet wholly acknowledged: the mux
        # cuts each piece into full cells and a last short one (StreamMux.send), so the
        # bytes of its first k cells are min(bytes, k * RELAY_DATA_MAX): O(1) per
        # acknowledgement and nothing per cell
        self._pieces: deque[tuple[int, int]] = deque()
        self._head_acked = 0  # cells of _pieces[0] already acknowledged
        self.acked_bytes = 0

    @property
    def circuit_key(self) -> str:
        """A node-local name of the circuit this stream runs on (at an exit: the link id
        and circuit id it arrived on; at a client: its first link and circuit id).
        Stable for the circuit's life, never reused while it lives; it names no peer."""
        owner = self._owner
        link_id = getattr(owner, "link_id", None)
        if link_id is None:  # a client circuit: its first link
            link = getattr(owner, "link", None)
            link_id = link.id if link is not None else "?"
        return f"{link_id}:{owner.circ_id}"

    # -- accounting --------------------------------------------------------------------
    @property
    def unacked_bytes(self) -> int:
        return self._offered - self.acked_bytes

    @property
    def unacked_messages(self) -> int:
        return sum(1 for end in self._msg_ends if end > self.acked_bytes)

    def _taken(self, nbytes: int) -> None:
        if nbytes > 0:
            self._pieces.append((-(-nbytes // RELAY_DATA_MAX), nbytes))

    def _acked(self, cells: int) -> None:
        pieces = self._pieces
        done = self._head_acked
        while cells > 0 and pieces:
            n, size = pieces[0]
            before = min(size, done * RELAY_DATA_MAX)
            if cells >= n - done:
                self.acked_bytes += size - before
                cells -= n - done
                done = 0
                pieces.popleft()
            else:
                done += cells
                self.acked_bytes += min(size, done * RELAY_DATA_MAX) - before
                cells = 0
        self._head_acked = done
        while self._msg_ends and self._msg_ends[0] <= self.acked_bytes:
            self._msg_ends.popleft()

    # -- events from the owner -------------------------------------------------------------
    def _data(self, data: bytes) -> None:
        self._rx.append(data)
        self._wake_rx()

    def _ended(self) -> None:
        self._eof = True
        self._wake_rx()
        self._wake_tx()

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if not self.opened.done():
            self.opened.set_exception(self._closed_error())
            self.opened.exception()
        self._wake_rx()
        self._wake_tx()

    def _wake_rx(self) -> None:
        if self._rx_wait is not None and not self._rx_wait.done():
            self._rx_wait.set_result(None)

    def _wake_tx(self) -> None:
        if self._tx_wait is not None and not self._tx_wait.done():
            self._tx_wait.set_result(None)

    def _closed_error(self) -> StreamClosed:
        return StreamClosed(
            "stream lost" if self._error else "stream ended",
            unacked_bytes=self.unacked_bytes,
            unacked_messages=self.unacked_messages,
            cause=self._error,
        )

    # -- application API -------------------------------------------------------------------
    async def send(self, data: bytes) -> None:
        if self._closed_local:
            raise StreamClosed("stream closed locally", unacked_bytes=0, unacked_messages=0, cause=None)
        if self._error is not None or self._eof:
            raise self._closed_error()
        self._offered += len(data)
        self._msg_ends.append(self._offered)
        whole = bytes(data)
        view = memoryview(whole)
        loop = asyncio.get_running_loop()
        while view:
            # the bytes object itself while nothing was taken yet: the mux slices it
            # into cells without another copy
            taken = self._owner.stream_send(self.stream_id, whole if len(view) == len(whole) else view)
            self._taken(taken)
            view = view[taken:]
            await self._owner.wait_link_writable()
            if self._error is not None:
                raise self._closed_error()
            if view:
                self._tx_wait = loop.create_future()
                try:
                    await self._tx_wait
                finally:
                    self._tx_wait = None
                if self._error is not None:
                    raise self._closed_error()
                if self._eof:
                    raise self._closed_error()

    async def recv(self) -> bytes:
        loop = asyncio.get_running_loop()
        while not self._rx:
            if self._error is not None:
                raise self._closed_error()
            if self._eof:
                return b""
            if self._closed_local:
                raise StreamClosed("stream closed locally", unacked_bytes=0, unacked_messages=0, cause=None)
            self._rx_wait = loop.create_future()
            try:
                await self._rx_wait
            finally:
                self._rx_wait = None
        return self._rx.popleft()

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; ``StreamClosed`` if the stream ends first."""
        buf = bytearray(self._rx_buf)
        while len(buf) < n:
            chunk = await self.recv()
            if not chunk:
                raise StreamClosed("stream ended early", unacked_bytes=0, unacked_messages=0, cause=None)
            buf += chunk
        self._rx_buf = bytes(buf[n:])
        return bytes(buf[:n])

    async def close(self) -> None:
        """END the stream once buffered data has gone."""
        if self._closed_local or self._error is not None:
            return
        self._closed_local = True
        self._owner.stream_close(self.stream_id)
        self._wake_rx()  # a pending recv ends: nothing more is delivered to this end


class _StreamOwner:
    """Shared glue between a ``StreamMux`` and the way its messages leave."""

    is_client = False

    def __init__(self, node: OnionNode, mux: StreamMux) -> None:
        self.node = node
        self.mux = mux
        self.streams: dict[int, OnionStream] = {}
        self.error: Optional[BaseException] = None

    def _emit(self, cmd: int, sid: int, data: bytes) -> None:
        """Abstract: every concrete subclass overrides this."""
        raise NotImplementedError

    def _emit_many(self, msgs: list) -> None:
        for cmd, sid, data in msgs:
            self._emit(cmd, sid, data)

    def _first_link(self) -> Optional[_NodeLink]:
        """Abstract: every concrete subclass overrides this."""
        raise NotImplementedError

    def pump(self, flush: bool = True) -> None:
        msgs = self.mux.messages_to_send()
        if msgs:
            END = RelayCommand.END
            for sid in [m[1] for m in msgs if m[0] == END]:
                self.streams.pop(sid, None)  # our END: the mux has forgotten the stream
            self._emit_many(msgs)
        self._emitted()
        if flush and not self.is_client:
            self.node._flush()  # exit replies went into the relay core

    def _emitted(self) -> None:
        pass

    def stream_send(self, sid: int, data: memoryview) -> int:
        if self.error is not None or sid not in self.streams:
            return 0
        taken = self.mux.send(sid, data)
        self.pump()
        return taken

    def stream_close(self, sid: int) -> None:
        if self.error is None and sid in self.streams:
            try:
                self.mux.close(sid)
            except Exception:  # noqa: BLE001 - already gone in the core: nothing to end
                pass
            self.pump()

    async def wait_link_writable(self) -> None:
        link = self._first_link()
        if link is not None and link.pending_cells > LINK_HIGH:
            await asyncio.wait_for(link.wait_writable(), 30.0)

    def handle(self, command: Any, sid: int, data: bytes) -> list:
        """Feed one relay message to the mux and dispatch its events; ``CellError`` means
        the peer broke the stream rules."""
        events = self.mux.receive_message(command, sid, data)
        if command == RelayCommand.SENDME and sid:  # accepted by the mux: within the window
            st = self.streams.get(sid)
            if st is not None:
                st._acked(STREAM_INCREMENT)
        for ev in events:
            st = self.streams.get(ev.stream_id)
            if isinstance(ev, StreamData):
                if st is not None:
                    st._data(ev.data)
            elif isinstance(ev, StreamOpened):
                if st is not None and not st.opened.done():
                    st.opened.set_result(None)
            elif isinstance(ev, StreamEnded):
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    st._ended()
                    if not st.opened.done():
                        st.opened.set_exception(ConnectionRefusedError(f"stream refused (reason {ev.reason})"))
                        st.opened.exception()
        if command == RelayCommand.SENDME:
            for st in self.streams.values():
                st._wake_tx()  # a circuit-level SENDME can unblock every stream
        return events

    def fail_all(self, exc: BaseException) -> None:
        self.error = exc
        for st in list(self.streams.values()):
            st._fail(exc)


class _ExitCircuit(_StreamOwner):
    """Service side of one circuit at its last hop."""

    def __init__(self, node: OnionNode, link_id: int, circ_id: int) -> None:
        super().__init__(node, StreamMux(is_client=False))
        self.link_id = link_id
        self.circ_id = circ_id

    def _emit(self, cmd: int, sid: int, data: bytes) -> None:
        try:
            self.node.relay.send_backward(self.link_id, self.circ_id, cmd, sid, data)
        except LocalProtocolError:
            self._gone()

    def _emit_many(self, msgs: list) -> None:
        try:
            self.node.relay.send_backward_batch(self.link_id, self.circ_id, msgs)
        except LocalProtocolError:
            self._gone()

    def _gone(self) -> None:
        """The relay core no longer has this circuit (destroyed before its close reached
        this exit): what a service sends now cannot be delivered, so its streams fail like
        those of any closed circuit instead of the core's error escaping into a service
        handler or a link reader."""
        if self.node._exits.get((self.link_id, self.circ_id)) is self:
            del self.node._exits[(self.link_id, self.circ_id)]
        if self.error is None:
            self.closed(CircuitError(DestroyReason.NONE, False, "circuit already destroyed"))

    def _first_link(self) -> Optional[_NodeLink]:
        return self.node._links_by_id.get(self.link_id)

    async def wait_link_writable(self) -> None:
        """A service's replies enter the mixer like relayed cells do: after each send
        wait, like a reader, for the mixer to come back to its low watermark (it drains
        by the clock alone, so this cannot deadlock; shutdown ends it)."""
        node = self.node
        if node._mix_gated:
            while (len(node.mixer) > node._mix_high or node._mix_backlog) and not node._closed:
                node._mix_room.clear()
                await node._mix_room.wait()
        await super().wait_link_writable()

    def receive(self, command: Any, sid: int, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            events = self.handle(command, sid, data)
        except CellError as e:
            self.node._relay_events(self.node.relay.destroy(self.link_id, self.circ_id, e.error_code or 1))
            return
        self._requests(events)
        self.pump(flush=False)  # called from _cells_in, which flushes once per batch

    def receive_many(self, evs: list) -> None:
        """``receive`` for a run of ``ExitMessageReceived`` / ``ExitDataReceived``: DATA
        takes a short path (same mux checks, one wake-up per stream), the replies go out
        in one pump."""
        mux = self.mux
        streams = self.streams
        woken = set()
        DATA = RelayCommand.DATA
        i = 0
        n = len(evs)
        while i < n:
            if self.error is not None:
                return
            ev = evs[i]
            try:
                if type(ev) is ExitDataReceived:  # a run of DATA cells, already joined
                    i += 1
                    sid = ev.stream_id
                    sizes = ev.sizes
                    got, err = mux.receive_data_cells(sid, len(sizes))
                    st = streams.get(sid)
                    if got and st is not None:
                        st._rx.append(ev.data if got == len(sizes) else ev.data[: sum(sizes[:got])])
                        woken.add(st)
                    if err is not None:
                        raise err
                    continue
                cmd = ev.command
                if cmd is DATA:  # a run of DATA for one stream: one mux call
                    sid = ev.stream_id
                    j = i + 1
                    while j < n and type(evs[j]) is ExitMessageReceived and evs[j].command is DATA:
                        if evs[j].stream_id != sid:
                            break
                        j += 1
                    got, err = mux.receive_data_run(sid, [e.data for e in evs[i:j]])
                    st = streams.get(sid)
                    if got and st is not None:
                        st._rx.extend(got)
                        woken.add(st)
                    if err is not None:
                        raise err
                    i = j
                    continue
                i += 1
                events = self.handle(cmd, ev.stream_id, ev.data)
            except CellError as e:
                for st in woken:
                    st._wake_rx()
                self.node._relay_events(self.node.relay.destroy(self.link_id, self.circ_id, e.error_code or 1))
                return
            self._requests(events)
        for st in woken:
            st._wake_rx()
        self.pump(flush=False)

    def _requests(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, StreamRequested):
                handler = self.node._services.get(ev.target)
                if handler is None:
                    self.mux.refuse(ev.stream_id, END_NO_SERVICE)
                    continue
                st = OnionStream(self, ev.stream_id)
                st.opened.set_result(None)
                self.streams[ev.stream_id] = st
                self.mux.accept(ev.stream_id)
                self.node._spawn(self._serve(handler, st))

    async def _serve(self, handler: Callable[[OnionStream], Awaitable[None]], st: OnionStream) -> None:
        try:
            await handler(st)
        except StreamClosed:
            pass
        except Exception:
            log.exception("onion service handler failed")
        finally:
            await st.close()

    def closed(self, exc: BaseException) -> None:
        self.fail_all(exc)


class OnionCircuit(_StreamOwner):
    """A client circuit: build it with ``OnionClient.build_circuit``."""

    is_client = True

    def __init__(self, node: OnionNode, link: _NodeLink, circ_id: int, path: list[RelayInfo]) -> None:
        super().__init__(node, StreamMux(is_client=True))
        self.link = link
        self.circ_id = circ_id
        self.path = path
        self._core = ClientCircuit(
            circ_id,
            rng=node.rng,
            now=time.monotonic(),
            lifetime=node.circuit_lifetime,
            handshake_timeout=node.handshake_timeout,
        )
        self.rotation_due = False
        """Set when the circuit reached ``rotate_after`` (0.8 x lifetime)."""
        self.built: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[CircuitError] = asyncio.get_running_loop().create_future()

    @property
    def node_ids(self) -> list[bytes]:
        return [r.node_id for r in self.path]

    @property
    def exit_node_id(self) -> bytes:
        return self.path[-1].node_id

    @property
    def is_open(self) -> bool:
        return self.error is None and self.built.done() and not self.built.exception()

    def _first_link(self) -> Optional[_NodeLink]:
        return self.link

    def _start(self) -> None:
        self._core.build([HopSpec(r.node_id, r.xwing_public_key) for r in self.path], time.monotonic())
        self._send_cells()

    def _send_cells(self) -> None:
        self.link.queue_many(self._core.batches_to_send())

    def _emit(self, cmd: int, sid: int, data: bytes) -> None:
        self._core.send_relay(self._core.hops - 1, cmd, sid, data)

    def _emit_many(self, msgs: list) -> None:
        self._core.send_relay_batch(self._core.hops - 1, msgs)  # one layer call per hop

    def _emitted(self) -> None:
        self._send_cells()  # once per pump: one extend of the link queue

    def send_drop(self, data: bytes = b"", hop: Optional[int] = None) -> None:
        """Long-range padding: a DROP relay cell with ``data`` to ``hop`` (default: last)."""
        if self.error is not None:
            raise self.error
        self._core.send_relay(self._core.hops - 1 if hop is None else hop, RelayCommand.DROP, 0, bytes(data))
        self._send_cells()

    def _receive(self, cells: Any, now: float) -> None:
        """``cells``: one or more whole cells of this circuit (part of a link message)."""
        handled = False
        for ev in self._core.receive_cells(cells, now):
            if isinstance(ev, RelayMessageReceived):
                if ev.hop != self._core.hops - 1:
                    continue  # only the last hop carries our streams
                try:
                    self.handle(ev.command, ev.stream_id, ev.data)
                except CellError as e:
                    if handled:
                        self.pump()  # what the earlier messages released leaves first
                    handled = False
                    for ev2 in self._core.destroy(e.error_code or DestroyReason.PROTOCOL):
                        self._closed_event(ev2)
                    break
                handled = True  # one pump for the whole batch (e.g. a run of SENDMEs)
            elif isinstance(ev, CircuitBuilt):
                if not self.built.done():
                    self.built.set_result(None)
                    self.node.circuits_built += 1
            elif isinstance(ev, CircuitClosed):
                if handled and self.error is None:
                    self.pump()  # as above: released cells go before the DESTROY
                handled = False
                self._closed_event(ev)
        if handled and self.error is None:
            self.pump()
        self._send_cells()

    def _closed_event(self, ev: CircuitClosed) -> None:
        self._fail(CircuitError(ev.reason, ev.remote))

    def _timer(self, now: float) -> None:
        for ev in self._core.handle_timer(now):
            if isinstance(ev, CircuitClosed):
                self._closed_event(ev)
            elif isinstance(ev, CircuitRotationDue):
                self.rotation_due = True  # owners should build a replacement for new streams
        self._send_cells()

    def _fail(self, exc: CircuitError) -> None:
        if self._core.state != "CLOSED":
            self._core.destroy(exc.reason)
            self._send_cells()
        if self.node._client_circs.pop((self.link.id, self.circ_id), None) is not None:
            self.link.client_circuits -= 1
        if not self.built.done():
            self.node.circuits_failed += 1
            self.built.set_exception(exc)
            self.built.exception()
        if not self.closed.done():
            self.closed.set_result(exc)
        self.fail_all(exc)

    async def open_stream(self, dest: bytes, service: str | bytes, *, timeout: float = 30.0) -> OnionStream:
        """Open a stream to ``service`` on ``dest``, which must be this circuit's last hop."""
        if self.error is not None:
            raise self.error
        if bytes(dest) != self.exit_node_id:
            raise ValueError("the destination must be the circuit's last hop (build_circuit(exit=dest))")
        target = service.encode() if isinstance(service, str) else bytes(service)
        sid = self.mux.open_stream(target)
        st = OnionStream(self, sid)
        self.streams[sid] = st
        self.pump()
        await asyncio.wait_for(asyncio.shield(st.opened), timeout)
        return st

    async def close(self) -> None:
        """Send DESTROY along the path and fail any stream still open."""
        if self.error is None:
            self._fail(CircuitError(DestroyReason.REQUESTED, False, "closed by owner"))
            self.node._flush()
            await self.wait_link_writable()


class OnionClient:
    """Builds circuits from ``node``'s directory (``per_subnet=None`` where the relays share a
    /16, e.g. all on 127.0.0.1; relays on their own loopback /16s keep the rule)."""

    def __init__(self, node: OnionNode, *, per_subnet: Optional[int] = 1) -> None:
        self.node = node
        self.per_subnet = per_subnet

    async def build_circuit(
        self, hops: int = 3, *, exit: Optional[bytes] = None, path: Optional[list[bytes]] = None, timeout: float = 30.0
    ) -> OnionCircuit:
        """Select a path (weighted by bandwidth x reputation, no relay twice, one per /16
        unless ``per_subnet`` says otherwise), open the link to the first hop, build."""
        node = self.node
        infos = {r.node_id: r for r in node.directory.relay_infos()}
        if path is not None:
            chosen = [infos[bytes(n)] for n in path]
        else:
            reserved: tuple = ()
            if exit is not None:
                if bytes(exit) not in infos:
                    raise LookupError("exit not in the directory")
                reserved = (infos[bytes(exit)],)  # its /16 counts toward the path rule
            k = hops - len(reserved)
            chosen = select_path(list(infos.values()), k, node.rng, exclude=frozenset({node.node_id}),
                                 per_subnet=self.per_subnet, reserved=reserved)
            chosen.extend(reserved)
        link = await node.link_to(chosen[0].node_id, timeout=timeout)
        while True:
            circ_id = int.from_bytes(node.rng(4), "big")
            if circ_id and (link.id, circ_id) not in node._client_circs:
                break
        circ = OnionCircuit(node, link, circ_id, chosen)
        node._client_circs[(link.id, circ_id)] = circ
        link.client_circuits += 1
        circ._start()
        node._rearm()
        try:
            await asyncio.wait_for(asyncio.shield(circ.built), timeout)
        except BaseException:
            await circ.close()
            raise
        return circ
