"""Dark addresses over the real DHT: publish, resolve and connect by ``.dark`` name
(docs/dark.md §8), on uvloop or asyncio.

Publishing finds the ``k`` DHT nodes closest to a descriptor's blinded index with a UDP
``find_node`` lookup (``qudag_io.dht.DhtNode``), opens authenticated links to them
(``qudag_io.link``) and stores the descriptor with ``dark_put``.  Resolving drives the
sans-IO ``qudag_core.dark.Resolver``: every ``FetchDescriptors(index)`` it yields is
answered by the same lookup plus ``dark_get`` over links to the ``k`` closest nodes, and
the union of what they return is fed back.  ``connect_dark`` then dials the endpoint with
``peer_certificate`` and ``expected_peer_id`` from the verified descriptor, so the
handshake proves the peer is the identity the address commits to.

Storing side: ``DescriptorServer`` runs on a DHT node's link listener.  It answers
``dark_get``/``dark_put`` from a ``qudag_core.dark.DescriptorStore`` (several descriptors
per index, revision/rollback rules, forgeries never evict a stored descriptor) and hands
every other message to ``DhtNode.core.receive_link_message`` (``qd_get``/``qd_put`` and
ordinary KRPC keep working on the same link).

Wire format (KRPC-shaped, one bencoded message per link message, links only -- never UDP)::

    {"t": tid, "y": "q", "q": "dark_put", "a": {"d": descriptor}}
        -> {"t": tid, "y": "r", "r": {"s": PutStatus value}}
    {"t": tid, "y": "q", "q": "dark_get", "a": {"x": index(20), "i": slot}}
        -> {"t": tid, "y": "r", "r": {"n": descriptors at index, "d": descriptor #slot}}  ("d" only if slot < n)
    errors: {"t": tid, "y": "e", "e": [203, "message"]}

Through onion circuits (``DarkClient(onion=OnionClient(...))``): every query goes over
a circuit whose exit is the storage node itself, to its ``DARK_SERVICE`` stream
(``register_dark_service``; ``DescriptorServer.serve_stream`` answers length-prefixed
messages of the same format, dark queries only), and storage nodes are picked from the
directory without a lookup; a storage node that is not a relay fails, never falls back
to a direct link.

Decision a reader asks about: how a node id found by ``find_node`` becomes a link
endpoint.  UDP contacts carry no certificate, so the adapter takes a ``directory``
mapping DHT node id -> the ``NodeCertificate`` of that node's link listener (in the
loopback network below it is filled when the nodes start; in a deployment it would be
filled from ``RecordType.NODE_CERTIFICATE`` qd records or the node's bootstrap list).
Nodes missing from the directory are skipped.  No write token is needed for
``dark_put``: the link already authenticates the writer, and the store's own rules
(and the ML-DSA signature it checks) decide what is kept.  A ``dark_get`` returns one
descriptor per message (``i``), because a descriptor may be ~70 KB and eight of them
would not fit one frame.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence, Union

from qudag_core.dark import (DarkAddress, DarkEndpoint, DescriptorStore, FetchDescriptors, Publisher,
                             PutStatus, Resolved, ResolveError, ResolveFailed, Resolver, parse_name)
from qudag_core.dark.descriptor import MAX_DESCRIPTOR_SIZE
from qudag_core.identity import Identity, NodeCertificate
from qudag_core.krpc import bencode
from qudag_core.krpc.errors import BencodeError
from qudag_core.krpc.ratelimit import RateLimiter
from qudag_core.link import LinkConfig
from qudag_io.dht import DhtError, DhtNode
from qudag_io.link import Connection, ConnectionClosed, Listener, connect, listen, source_address
from qudag_io.loopback import testnet_host
from qudag_io.onion import CircuitError, OnionCircuit, OnionClient, OnionNode, OnionStream, StreamClosed

__all__ = ["AddressKeeper", "AddressState", "CertificateDirectory", "DarkError", "DescriptorServer", "DarkClient",
           "DarkNetwork", "DARK_SERVICE", "circuit_key", "connect_dark", "register_dark_service", "DARK_LINK_CONFIG",
           "KIND_DERIVED", "derived_service", "node_dht_id", "start_loopback_network"]

DARK_GET = b"dark_get"
DARK_PUT = b"dark_put"
#: Largest link message this protocol sends or accepts: one descriptor plus framing.
MAX_MESSAGE = MAX_DESCRIPTOR_SIZE + 256
#: Link limits for dark storage links: the default 64 KiB frame is below MAX_DESCRIPTOR_SIZE.
DARK_LINK_CONFIG = LinkConfig(channel=dataclasses.replace(LinkConfig().channel, max_frame_size=96 * 1024))
#: Slots read per ``fetch`` from one node (a store holds at most 8 per index).
MAX_SLOTS = 16


class DarkError(Exception):
    """A dark operation failed for a reason other than resolution (no storage node
    reachable, a descriptor too large to send, an unsupported option)."""


def _error(tid: bytes, code: int, msg: str) -> bytes:
    return bencode.encode({b"t": tid, b"y": b"e", b"e": [code, msg.encode()]})


class DescriptorServer:
    """The storing side: dark descriptors on top of a DHT node's link handler."""

    def __init__(self, dht: DhtNode, store: Optional[DescriptorStore] = None,
                 clock: Callable[[], float] = time.time, *,
                 put_rate: float = 16.0, put_burst: float = 64.0) -> None:
        self.dht = dht
        self.store = store if store is not None else DescriptorStore()
        self.clock = clock
        # Every put that passes the cheap checks costs an ML-DSA verification, so puts are
        # limited per link (peer address and port: a new link costs the sender a whole
        # post-quantum handshake).  Refused puts get error 202 and cost no verification.
        self.put_limiter = RateLimiter(put_rate, put_burst, max_tracked=4096)
        self.puts: dict = {}  # PutStatus -> count, for tests and metrics

    def descriptors_at(self, index: bytes, now: float) -> list:
        """What ``dark_get`` serves for ``index`` (tests override this to play a
        malicious storage node)."""
        return self.store.get(index, now)

    def handle(self, data: bytes, peer_addr: tuple, *, via_circuit: bool = False) -> Optional[bytes]:
        """One link message in, the reply (or None) out.  Anything that is not a dark
        query goes to the KRPC node unchanged -- except on a circuit
        (``via_circuit=True``, ``peer_addr`` a circuit key, see ``serve_stream``), where
        it is refused with error 204: the exit has no peer address to give KRPC, and
        the dark service is not a way into the DHT."""
        try:
            msg = bencode.decode(data, MAX_MESSAGE)
        except BencodeError:
            msg = None
        if not (isinstance(msg, dict) and msg.get(b"y") == b"q" and msg.get(b"q") in (DARK_GET, DARK_PUT)):
            if via_circuit:
                tid = msg.get(b"t") if isinstance(msg, dict) else None
                ok_tid = isinstance(tid, bytes) and 1 <= len(tid) <= 16
                return _error(tid if ok_tid else b"", 204, "only dark_get and dark_put are served over circuits")
            return self.dht.core.receive_link_message(data, peer_addr, self.dht._loop.time())
        tid = msg.get(b"t")
        if not isinstance(tid, bytes) or not 1 <= len(tid) <= 16:
            return _error(b"", 203, "bad t") if via_circuit else None
        a = msg.get(b"a")
        if not isinstance(a, dict):
            return _error(tid, 203, "missing a")
        now = self.clock()
        if msg[b"q"] == DARK_PUT:
            d = a.get(b"d")
            if not isinstance(d, bytes):
                return _error(tid, 203, "missing d")
            if not self.put_limiter.allow(f"{peer_addr[0]}:{peer_addr[1]}", now):
                where = "circuit" if via_circuit else "link"
                return _error(tid, 202, f"rate limited: too many dark_put on this {where}, retry later")
            status = self.store.put(d, now)
            self.puts[status] = self.puts.get(status, 0) + 1
            return bencode.encode({b"t": tid, b"y": b"r", b"r": {b"s": status.value.encode()}})
        index, slot = a.get(b"x"), a.get(b"i", 0)
        if not isinstance(index, bytes) or len(index) != 20 or not isinstance(slot, int) or not 0 <= slot < MAX_SLOTS:
            return _error(tid, 203, "bad x or i")
        held = self.descriptors_at(index, now)
        r: dict = {b"n": len(held)}
        if slot < len(held):
            r[b"d"] = held[slot]
        return bencode.encode({b"t": tid, b"y": b"r", b"r": r})

    async def serve_link(self, conn: Connection, peer_addr: Optional[tuple] = None) -> None:
        """Answer messages on ``conn`` until it closes (use as, or inside, a listener handler)."""
        addr = peer_addr or conn.remote_address[:2]
        try:
            while True:
                data = await conn.recv()
                reply = self.handle(data, addr)
                self.dht._process()  # KRPC handling may have queued datagrams or events
                if reply is not None:
                    await conn.send(reply)
        except ConnectionClosed:
            return

    async def serve_stream(self, stream: OnionStream, circuit_key: str) -> None:
        """Answer dark queries on an onion stream (the ``DARK_SERVICE`` exit service,
        see ``register_dark_service``) until it ends.

        Framing: every query and every reply is a 4-byte big-endian length and that many
        bytes of the bencoded message above; exactly one reply per query, in order.  A
        length of 0 or above ``MAX_MESSAGE`` ends the stream (the exit goes on serving
        other streams); a frame that is not a ``dark_get``/``dark_put`` gets an error
        reply (204, or 203 for a bad ``t``).

        The exit knows no address of whoever asks, so the "peer address" ``handle`` gets
        (the key of ``put_limiter``) is ``("circuit", circuit_key)``: puts are limited
        per circuit, as they are per link otherwise.  A new circuit costs the sender a
        post-quantum handshake with every hop, as a new link costs one handshake, so the
        limit is as meaningful; it cannot tell two circuits of one sender apart, as the
        link limit cannot tell two links of one sender apart."""
        peer = ("circuit", circuit_key)
        try:
            while True:
                try:
                    head = await stream.readexactly(4)
                except StreamClosed:
                    return  # the client ended the stream (between frames or mid-frame)
                size = int.from_bytes(head, "big")
                if not 0 < size <= MAX_MESSAGE:
                    return  # bad framing: end this stream, not the exit
                data = await stream.readexactly(size)
                reply = self.handle(data, peer, via_circuit=True)
                if reply is None:  # not produced on circuits; kept for subclasses
                    reply = _error(b"", 203, "no reply")
                await stream.send(len(reply).to_bytes(4, "big") + reply)
        except StreamClosed:
            return


#: Onion service name under which a storage node answers dark queries over circuits.
DARK_SERVICE = "qudag-dark"


def circuit_key(stream: OnionStream) -> str:
    """A key naming the circuit ``stream`` arrived on at this exit
    (``OnionStream.circuit_key``: node-local link id and circuit id)."""
    return stream.circuit_key


def register_dark_service(onion: OnionNode, server: DescriptorServer) -> None:
    """Serve ``server``'s ``dark_get``/``dark_put`` as the ``DARK_SERVICE`` exit service of
    the relay ``onion`` (a node that runs both; clients reach it with
    ``DarkClient(onion=...)``).  The relay must be listed in the clients' onion
    directory under the same identity as its storage link certificate."""

    async def handler(stream: OnionStream) -> None:
        await server.serve_stream(stream, circuit_key(stream))

    onion.register_service(DARK_SERVICE, handler)


class _Link:
    __slots__ = ("conn", "lock")

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = asyncio.Lock()


class _Circ:
    """A circuit whose exit is one storage node, with one stream to its dark service."""

    __slots__ = ("circuit", "stream", "lock", "broken")

    def __init__(self, circuit: OnionCircuit, stream: OnionStream) -> None:
        self.circuit = circuit
        self.stream = stream
        self.lock = asyncio.Lock()
        self.broken = False

    @property
    def usable(self) -> bool:
        return not self.broken and self.circuit.is_open and not self.circuit.rotation_due

    async def close(self) -> None:
        self.broken = True
        try:
            await self.stream.close()
        finally:
            await self.circuit.close()


def _distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


class DarkClient:
    """Publish and resolve dark descriptors through a running ``DhtNode``.

    ``directory`` maps DHT node ids to link certificates (see the module docstring);
    ``local`` is this node's own ``DescriptorServer``, consulted when this node is itself
    among the ``k`` closest.  Links to storage nodes are pooled (``max_links``, LRU) and
    closed by ``close()``.  ``local_hosts`` are the addresses the node's own listeners
    are bound to: links to storage nodes (and ``connect``) leave from the one of the
    peer's family (``qudag_io.link.source_address``), so a storage node sees the node at
    the address it is known by; empty (a client with no listener): the kernel picks.

    ``onion`` (an ``OnionClient``): every query to a storage node goes through an onion
    circuit of ``hops`` relays whose exit is that storage node, on a stream to its
    ``DARK_SERVICE`` (``register_dark_service``), so the storage node never sees this
    node's address.  The exit is the relay with the node id of the storage node's link
    certificate (``directory``); a storage node that is not such a relay in the onion
    client's directory, or whose circuit or service fails, fails that node's query with
    ``DarkError`` -- there is **no fallback to a direct link**, which would tell the
    storage node who asks.  The storage nodes are then also chosen without a DHT lookup,
    as the ``k`` ids of ``directory`` closest to the index: a ``find_node`` for the
    index, sent from this node's address, would tell the nodes near it what is looked up
    and by whom (the directory must list the network's nodes, as ``CertificateDirectory``
    and ``DarkNetwork.directory`` do).  ``hops`` counts the exit (at least 2: with one
    hop the storage node would be the first hop and see the address).  Circuits (one
    stream each, one query at a time, like ``_Link.lock``) are pooled per storage node
    (``max_links``, LRU), rebuilt when lost or due for rotation, and closed by
    ``close()``.  Without ``onion``, ``Resolver(via_circuit=True)`` is refused."""

    def __init__(self, dht: DhtNode, identity: Identity, directory: Mapping[bytes, NodeCertificate], *,
                 k: int = 3, resolver: Optional[Resolver] = None, local: Optional[DescriptorServer] = None,
                 link_timeout: float = 5.0, max_links: int = 32, clock: Callable[[], float] = time.time,
                 local_hosts: Sequence[str] = (), onion: Optional[OnionClient] = None, hops: int = 3) -> None:
        if k < 1 or max_links < 1 or hops < 1:
            raise ValueError("k, max_links and hops must be positive")
        if onion is not None and hops < 2:
            raise ValueError("hops must be at least 2: on a one-hop circuit the storage node is the first hop "
                             "and sees this node's address")
        self.dht = dht
        self.identity = identity
        self.directory = directory
        self.k = k
        self.resolver = resolver if resolver is not None else Resolver(os.urandom)
        self.onion = onion
        self.hops = hops
        if self.resolver.via_circuit and onion is None:
            raise DarkError("via_circuit fetches need an onion circuit adapter; this one talks to the DHT directly")
        self.local = local
        self.link_timeout = link_timeout
        self.max_links = max_links
        self.clock = clock
        self.local_hosts = tuple(local_hosts)
        self._links: OrderedDict = OrderedDict()  # node id -> _Link
        self._connecting: dict = {}  # node id -> Future[_Link] while dialing
        self._inflight: dict = {}  # DarkAddress -> Future[Resolved | ResolveFailed]
        self._circs: OrderedDict = OrderedDict()  # node id -> _Circ (with onion)
        self._building: dict = {}  # node id -> Future[_Circ] while building
        self._closing: set = set()  # tasks closing evicted or broken circuits

    # ------------------------------------------------------------------ storage nodes
    async def storage_nodes(self, index: bytes) -> list:
        """The ``k`` nodes closest to ``index`` that we can reach by link (and this node
        itself when it is one of them): ``[node_id, ...]``, closest first.  With
        ``onion``, from the directory alone (see the class docstring)."""
        if self.onion is not None:
            ids = list(self.directory)
        else:
            try:
                found = await self.dht.find_node(index)
                ids = [nid for nid, _ in found.nodes]
            except DhtError:
                ids = []
        if self.local is not None:
            ids.append(self.dht.node_id)
        ids = [nid for nid in dict.fromkeys(ids) if nid == self.dht.node_id and self.local is not None
               or nid in self.directory]
        ids.sort(key=lambda nid: _distance(nid, index))
        return ids[:self.k]

    async def _once(self, inflight: dict, node_id: bytes, make: Callable[[], Awaitable[Any]], what: str) -> Any:
        """``await make()`` once per ``node_id`` at a time: concurrent callers share that
        attempt's result or its error (a ``DarkError``; anything else ``make`` raises is
        wrapped as ``DarkError(what: ...)``)."""
        pending = inflight.get(node_id)
        if pending is not None:  # another request is dialing/building for this node: share it
            return await asyncio.shield(pending)
        pending = inflight[node_id] = asyncio.get_running_loop().create_future()
        try:
            value = await make()
        except BaseException as exc:
            err = exc if isinstance(exc, DarkError) else DarkError(f"{what}: {exc!r}")
            pending.set_exception(err)
            pending.exception()  # retrieved; sharers re-raise it
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise err from None
        finally:
            del inflight[node_id]
        pending.set_result(value)
        return value

    async def _link(self, node_id: bytes) -> _Link:
        lk = self._links.get(node_id)
        if lk is not None and not lk.conn.is_closed:
            self._links.move_to_end(node_id)
            return lk

        async def dial() -> _Link:
            cert = self.directory[node_id]
            host, port = cert.addresses[0]
            conn = await connect(host, port, identity=self.identity, peer_certificate=cert,
                                 expected_peer_id=cert.node_id, config=DARK_LINK_CONFIG, timeout=self.link_timeout,
                                 local_addr=source_address(str(host), self.local_hosts))
            new = self._links[node_id] = _Link(conn)
            while len(self._links) > self.max_links:
                _, old = self._links.popitem(last=False)
                old.conn.abort()
            return new

        return await self._once(self._connecting, node_id, dial, "cannot link to storage node")

    def _discard(self, node_id: bytes, ch: "_Circ") -> None:
        """Take ``ch`` out of the pool and close it once the request on it (if any) is done."""
        if self._circs.get(node_id) is ch:
            del self._circs[node_id]

        async def close_when_idle() -> None:
            async with ch.lock:
                await ch.close()

        t = asyncio.get_running_loop().create_task(close_when_idle())
        self._closing.add(t)
        t.add_done_callback(self._closing.discard)

    async def _circ(self, node_id: bytes) -> _Circ:
        """The pooled circuit + dark stream to storage node ``node_id``, built if needed."""
        ch = self._circs.get(node_id)
        if ch is not None:
            if ch.usable:
                self._circs.move_to_end(node_id)
                return ch
            self._discard(node_id, ch)

        async def build() -> _Circ:
            onion = self.onion
            assert onion is not None
            exit_id = bytes(self.directory[node_id].node_id)
            if onion.node.directory.get(exit_id) is None:
                raise DarkError("storage node is not an onion relay in the directory; not asking it directly")
            circ = await onion.build_circuit(self.hops, exit=exit_id, timeout=self.link_timeout)
            try:
                stream = await circ.open_stream(exit_id, DARK_SERVICE, timeout=self.link_timeout)
            except BaseException:
                await circ.close()
                raise
            new = self._circs[node_id] = _Circ(circ, stream)
            while len(self._circs) > self.max_links:
                old_id, old = next(iter(self._circs.items()))
                self._discard(old_id, old)
            return new

        return await self._once(self._building, node_id, build, "no circuit to storage node")

    async def _circuit_request(self, node_id: bytes, data: bytes) -> bytes:
        ch = await self._circ(node_id)
        async with ch.lock:  # one request at a time per stream: replies come in order
            if ch.broken:
                raise DarkError("storage circuit failed")

            async def exchange() -> bytes:
                await ch.stream.send(len(data).to_bytes(4, "big") + data)
                size = int.from_bytes(await ch.stream.readexactly(4), "big")
                if not 0 < size <= MAX_MESSAGE:
                    raise DarkError("bad reply length on the storage circuit")
                return await ch.stream.readexactly(size)

            try:
                return await asyncio.wait_for(exchange(), self.link_timeout)
            except (StreamClosed, CircuitError, DarkError, asyncio.TimeoutError) as exc:
                self._discard(node_id, ch)  # the stream's framing is lost: never reuse it
                raise DarkError(f"storage circuit failed: {exc!r}") from None

    async def _call(self, node_id: bytes, q: bytes, args: dict) -> Any:
        """One dark query to ``node_id`` (locally when it is us); returns the ``r`` dict."""
        tid = os.urandom(4)
        data = bencode.encode({b"t": tid, b"y": b"q", b"q": q, b"a": args})
        if node_id == self.dht.node_id and self.local is not None:
            reply = self.local.handle(data, ("127.0.0.1", 0))
        elif self.onion is not None:
            reply = await self._circuit_request(node_id, data)
        else:
            lk = await self._link(node_id)
            async with lk.lock:  # one request at a time per link: replies come in order
                try:
                    await lk.conn.send(data)
                    reply = await asyncio.wait_for(lk.conn.recv(), self.link_timeout)
                except (ConnectionClosed, asyncio.TimeoutError) as exc:
                    lk.conn.abort()
                    raise DarkError(f"storage link failed: {exc}") from None
        try:
            msg = bencode.decode(reply or b"", MAX_MESSAGE)
        except BencodeError as exc:
            raise DarkError(f"bad reply: {exc}") from None
        if not isinstance(msg, dict) or msg.get(b"t") != tid:
            raise DarkError("reply does not match the query")
        if msg.get(b"y") == b"e":
            raise DarkError(f"remote error {msg.get(b'e')!r}")
        r = msg.get(b"r")
        if msg.get(b"y") != b"r" or not isinstance(r, dict):
            raise DarkError("malformed reply")
        return r

    async def put_descriptor(self, index: bytes, data: bytes) -> list:
        """Store ``data`` on the storage nodes of ``index``; ``[(node_id, PutStatus | DarkError)]``."""
        if len(data) > MAX_DESCRIPTOR_SIZE:
            raise DarkError("descriptor larger than MAX_DESCRIPTOR_SIZE")
        nodes = await self.storage_nodes(index)
        if not nodes:
            raise DarkError("no storage node reachable for this index")

        async def one(nid: bytes):
            try:
                r = await self._call(nid, DARK_PUT, {b"d": data})
                s = r.get(b"s")
                return nid, PutStatus(s.decode()) if isinstance(s, bytes) else DarkError("no status")
            except (DarkError, ValueError, OSError, asyncio.TimeoutError) as exc:
                return nid, exc if isinstance(exc, DarkError) else DarkError(str(exc))

        return list(await asyncio.gather(*(one(n) for n in nodes)))

    async def publish(self, publisher: Publisher) -> list:
        """Put whatever ``publisher.due(now)`` returns; ``[(index, [(node_id, status)])]``."""
        out = []
        for index, data in publisher.due(self.clock()):
            out.append((index, await self.put_descriptor(index, data)))
        return out

    async def fetch(self, index: bytes) -> Optional[list]:
        """Every descriptor the storage nodes of ``index`` hold (deduplicated), or None
        when no storage node answered."""
        nodes = await self.storage_nodes(index)

        async def one(nid: bytes) -> Optional[list]:
            got = []
            try:
                slot, n = 0, 1
                while slot < min(n, MAX_SLOTS):
                    r = await self._call(nid, DARK_GET, {b"x": index, b"i": slot})
                    n = r.get(b"n")
                    if not isinstance(n, int):
                        return None
                    d = r.get(b"d")
                    if isinstance(d, bytes):
                        got.append(d)
                    slot += 1
            except (DarkError, OSError, asyncio.TimeoutError):
                return got or None
            return got

        answers = await asyncio.gather(*(one(n) for n in nodes))
        if all(a is None for a in answers):
            return None
        return list(dict.fromkeys(d for a in answers if a for d in a))

    # ------------------------------------------------------------------ resolving
    async def resolve(self, name: Union[str, DarkAddress]) -> DarkEndpoint:
        """Resolve ``<address>.dark`` to a verified endpoint; raises ``ResolveError``."""
        address = name if isinstance(name, DarkAddress) else parse_name(name)
        if not isinstance(address, DarkAddress):
            raise DarkError("aliases must be resolved to an address first (AliasStore)")
        fut = self._inflight.get(address)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._inflight[address] = fut
            try:
                fut.set_result(await self._drive(address))
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters re-raise it themselves
            finally:
                del self._inflight[address]
        ev = await asyncio.shield(fut)
        if isinstance(ev, ResolveFailed):
            raise ev.error
        return ev.endpoint

    async def _drive(self, address: DarkAddress) -> Union[Resolved, ResolveFailed]:
        r = self.resolver
        events = r.resolve(address, self.clock())
        for _ in range(64):  # bounded: a lookup is at most 2 periods of fetches
            for ev in events:
                if isinstance(ev, (Resolved, ResolveFailed)) and ev.address == address:
                    return ev
            fetches = [ev for ev in events if isinstance(ev, FetchDescriptors)]
            if not fetches:
                t = r.get_timer()  # a random start delay (max_delay)
                if t is None:
                    raise DarkError("resolver stalled")
                await asyncio.sleep(max(0.0, t - self.clock()))
                events = r.handle_timer(self.clock())
                continue

            async def one(ev: FetchDescriptors):
                try:
                    return ev, await asyncio.wait_for(self.fetch(ev.index), r.fetch_timeout)
                except asyncio.TimeoutError:
                    return ev, None

            events = []
            for ev, values in await asyncio.gather(*(one(ev) for ev in fetches)):
                now = self.clock()
                events += (r.on_fetch_failed(ev.query_id, now) if values is None
                           else r.on_fetch_result(ev.query_id, values, now))
        raise DarkError("resolver did not finish")

    async def connect(self, name: Union[str, DarkAddress], *, identity: Optional[Identity] = None,
                      timeout: float = 10.0, **kw: Any) -> Connection:
        return await connect_dark(name, self, identity=identity, timeout=timeout, **kw)

    async def close(self) -> None:
        links, self._links = list(self._links.values()), OrderedDict()
        circs, self._circs = list(self._circs.values()), OrderedDict()
        await asyncio.gather(*(lk.conn.close(timeout=2.0) for lk in links), *(ch.close() for ch in circs),
                             *list(self._closing), return_exceptions=True)


async def connect_dark(name: Union[str, DarkAddress], client: DarkClient, *, identity: Optional[Identity] = None,
                       timeout: float = 10.0, **kw: Any) -> Connection:
    """Resolve ``name`` with ``client`` and dial the endpoint; the handshake must prove
    ``endpoint.expected_peer_id``.  ``ConnectionClosed`` if it cannot.  The link leaves
    from ``client.local_hosts`` (as its storage links do) unless ``local_addr`` is given."""
    ep = await client.resolve(name)
    if ep.certificate is None:
        raise DarkError("the service publishes only intro relays; dialing through them is not implemented")
    host, port = ep.certificate.addresses[0]
    kw.setdefault("local_addr", source_address(str(host), client.local_hosts))
    return await connect(host, port, identity=identity or client.identity, peer_certificate=ep.certificate,
                         expected_peer_id=ep.expected_peer_id, timeout=timeout, **kw)


# ---------------------------------------------------------------------- loopback network
@dataclasses.dataclass
class DarkNetwork:
    """A loopback network for tests, demos and benchmarks: node ``i`` on
    ``qudag_io.loopback.testnet_host(i)`` (``127.(i+1).0.1``, the ``qudag testnet`` plan:
    its own /24 and /16), a DHT node and a link listener serving its
    ``DescriptorServer``; ``directory`` maps DHT node id to listener certificate.
    ``client(i)`` dials from node ``i``'s address."""

    dhts: list
    servers: list
    listeners: list
    identities: list
    directory: dict

    def client(self, i: int, **kw: Any) -> DarkClient:
        kw.setdefault("local_hosts", [h for h, _ in self.listeners[i].addresses])
        return DarkClient(self.dhts[i], self.identities[i], self.directory, local=self.servers[i], **kw)

    async def close(self) -> None:
        await asyncio.gather(*(lst.close() for lst in self.listeners), return_exceptions=True)
        await asyncio.gather(*(d.close() for d in self.dhts), return_exceptions=True)


async def start_loopback_network(n: int = 20, *, config: Any = None,
                                 server_factory: Callable[..., DescriptorServer] = DescriptorServer) -> DarkNetwork:
    import random

    from qudag_core.krpc.node import NodeConfig

    cfg = config or NodeConfig(query_timeout=1.5)
    net = DarkNetwork([], [], [], [], {})
    try:
        rnd = random.Random(1)
        for i in range(n):
            host = testnet_host(i)
            boot = [] if i == 0 else [net.dhts[0].address, rnd.choice(net.dhts).address]
            dht = await DhtNode.start(host, 0, config=cfg, bootstrap=boot, wait_bootstrap=i > 0)
            ident = Identity.generate(os.urandom)
            srv = server_factory(dht)
            lst = await listen(host, 0, identity=ident, handler=srv.serve_link, config=DARK_LINK_CONFIG)
            net.dhts.append(dht)
            net.servers.append(srv)
            net.listeners.append(lst)
            net.identities.append(ident)
            net.directory[dht.node_id] = lst.certificate
        await asyncio.gather(*(d.find_node(d.node_id) for d in net.dhts))
    except BaseException:
        await net.close()
        raise
    return net


# ---------------------------------------------------------------------- the node's side
def node_dht_id(node_id: bytes) -> bytes:
    """The DHT node id a qudag node runs under: ``blake3(node_id, 20)``, so a link
    certificate (which names the node id) says which DHT contact it belongs to."""
    from qudag_core.crypto import blake3_hash

    return blake3_hash(bytes(node_id), 20)


class CertificateDirectory(Mapping):
    """DHT node id -> link ``NodeCertificate``, read from a file shared by the nodes of a
    network (a JSON list of hex certificates, the format of the onion relay directory).

    Each node adds its own link certificate at start (``register``: the file is locked
    with ``flock`` on ``FILE.lock`` and replaced atomically, an older certificate of the
    same node id is dropped).  Readers never lock: they re-read the file when it changed
    (size or mtime) and a node id is missing, at most once per ``min_interval``.
    Certificates that do not verify (expired, bad signature) are skipped.  This is the
    static stand-in for ``NODE_CERTIFICATE`` records in the DHT (docs/dark.md §8)."""

    MAX_FILE = 1 << 22

    def __init__(self, path: str, *, min_interval: float = 0.5, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.min_interval = min_interval
        self.clock = clock
        self._certs: dict = {}
        self._stamp: Optional[tuple] = None
        self._checked = float("-inf")
        self.reload()

    def _read(self) -> list:
        try:
            st = os.stat(self.path)
            if st.st_size > self.MAX_FILE:
                return []
            with open(self.path) as f:
                items = json.load(f)
        except (OSError, ValueError):
            return []
        return items if isinstance(items, list) else []

    def reload(self) -> None:
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
        except OSError:
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        certs: dict = {}
        now = self.clock()
        for item in self._read():
            try:
                cert = NodeCertificate.from_bytes(bytes.fromhex(item))
                cert.verify(now)
            except Exception:  # a bad entry is skipped, not fatal
                continue
            if cert.addresses:
                certs[node_dht_id(bytes(cert.node_id))] = cert
        self._certs = certs
        self._stamp = stamp

    def register(self, certificate: NodeCertificate) -> None:
        """Add (or replace) this node's certificate in the file."""
        import fcntl

        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        lock = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            items = []
            for item in self._read():
                try:
                    if NodeCertificate.from_bytes(bytes.fromhex(item)).node_id == certificate.node_id:
                        continue
                except Exception:
                    continue  # unreadable entries are dropped on rewrite
                items.append(item)
            items.append(certificate.to_bytes().hex())
            tmp = f"{self.path}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(items, f)
            os.replace(tmp, self.path)
        finally:
            os.close(lock)  # releases the flock
        self.reload()

    def _fresh(self, node_id: bytes) -> None:
        if node_id not in self._certs and time.monotonic() - self._checked >= self.min_interval:
            self.reload()

    def __contains__(self, node_id: object) -> bool:
        if not isinstance(node_id, (bytes, bytearray)):
            return False
        self._fresh(bytes(node_id))
        return bytes(node_id) in self._certs

    def __getitem__(self, node_id: bytes) -> NodeCertificate:
        self._fresh(bytes(node_id))
        return self._certs[bytes(node_id)]

    def __iter__(self):
        # DarkClient(onion=...) picks storage nodes from the whole directory: see nodes
        # added since the last read (at most one stat() per min_interval)
        if time.monotonic() - self._checked >= self.min_interval:
            self.reload()
        return iter(list(self._certs))

    def __len__(self) -> int:
        return len(self._certs)


#: ``PublishedAddress.kind`` of an address derived from the node's identity seed.
KIND_DERIVED = "derived"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AddressState:
    """What the address table's opaque ``blob`` holds for one of our dark addresses:
    no key material, only the derivation index and the publish bookkeeping."""

    index: int
    """``ephemeral_signing_key(identity seed, index)`` is the address's signing key."""
    publish: bool = False
    """Keep it published (set by ``qudag address publish``)."""
    requested: float = 0.0
    """Wall time of the last publish request from the command line."""
    done: float = 0.0
    """The ``requested`` value the node last acted on."""
    result: str = ""
    """One line: what the last publish attempt did."""

    def to_blob(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode()

    @classmethod
    def from_blob(cls, blob: bytes) -> "AddressState":
        try:
            d = json.loads(blob)
            st = cls(index=d["index"], publish=d.get("publish", False), requested=d.get("requested", 0.0),
                     done=d.get("done", 0.0), result=d.get("result", ""))
        except (ValueError, KeyError, TypeError):
            raise DarkError("unreadable address state in the node database") from None
        if not (isinstance(st.index, int) and not isinstance(st.index, bool) and 0 <= st.index < 1 << 32
                and isinstance(st.publish, bool)
                and isinstance(st.requested, (int, float)) and isinstance(st.done, (int, float))
                and isinstance(st.result, str)):
            raise DarkError("unreadable address state in the node database")
        return st


def derived_service(identity: Identity, index: int, certificate: Optional[NodeCertificate] = None):
    """The ``DarkService`` of the node's ``index``-th derived dark address (its key is
    ``ephemeral_signing_key(identity seed, index)``; the descriptor carries the node's
    link ``certificate``)."""
    from qudag_core.dark import DarkService, ephemeral_signing_key

    key = ephemeral_signing_key(identity.signing_key.seed, index)
    return DarkService(key.seed, certificate=certificate)


def describe_results(results: list) -> str:
    """One line for ``DarkClient.publish``'s result."""
    ok = total = 0
    errors = []
    for _index, puts in results:
        for _nid, status in puts:
            total += 1
            if getattr(status, "accepted", False):
                ok += 1
            else:
                errors.append(status.value if isinstance(status, PutStatus) else str(status))
    line = f"{ok} of {total} descriptor puts accepted ({len(results)} periods)"
    if errors:
        line += "; refused: " + ", ".join(sorted(set(errors)))[:200]
    return line


class AddressKeeper:
    """Keeps the node's own dark addresses published, from the address table of its
    database (``NodeDatabase``/``AddressBook``).

    At start every address marked ``publish`` is published (a restarted node republishes
    what it had published, with a revision above the saved one); afterwards ``tick``
    (called every ``poll`` seconds) picks up rows the command line changed (noticed
    through ``data_version``) and republishes when a ``Publisher`` is due (hourly, and
    when a new period enters the publish set).  Results go back into the row
    (``last_published``, ``revision``, ``AddressState.result``)."""

    def __init__(self, db: Any, identity: Identity, client: Optional[DarkClient],
                 certificate: Optional[NodeCertificate], *, poll: float = 0.25, retry: float = 30.0,
                 wall: Callable[[], float] = time.time, log: Any = None) -> None:
        import logging

        self.db = db
        self.identity = identity
        self.client = client
        self.certificate = certificate
        self.poll = poll
        self.retry = retry
        """Seconds before a failed publish of a kept address is tried again."""
        self.wall = wall
        self.log = log or logging.getLogger("qudag.dark")
        self._publishers: dict = {}  # address text -> Publisher
        self._retry_at: dict = {}  # address text -> wall time of the next attempt after a failure
        self._version: Optional[int] = None
        self.published = 0

    async def start(self) -> int:
        """Publish every address marked ``publish``; returns how many were published."""
        self._version = self.db.data_version()
        n = 0
        for row in self.db.addresses():
            st = self._state(row)
            if st is not None and st.publish:
                n += await self._publish(row, st, force=True)
        return n

    def _state(self, row: Any) -> Optional[AddressState]:
        if row.kind != KIND_DERIVED:
            return None
        try:
            return AddressState.from_blob(row.blob)
        except DarkError as exc:
            self.log.warning("dark address %s: %s; skipped", row.address, exc)
            return None

    async def tick(self) -> None:
        flush = getattr(self.db, "flush", None)
        if flush is not None:
            flush()  # pending record deletions hold the write lock the command line needs
        v = self.db.data_version()
        changed = v != self._version
        self._version = v
        now = self.wall()
        for row in self.db.addresses() if changed or self._due(now) else ():
            st = self._state(row)
            if st is None:
                continue
            if st.requested > st.done:
                await self._publish(row, st, force=True)
            elif st.publish:
                await self._publish(row, st, force=False)
        self._version = self.db.data_version()

    def _due(self, now: float) -> bool:
        timers = [p.get_timer() for p in self._publishers.values()] + list(self._retry_at.values())
        return any(t is not None and t <= now for t in timers)

    async def _publish(self, row: Any, st: AddressState, *, force: bool) -> int:
        from qudag_core.dark import Publisher

        now = self.wall()
        retry_at = self._retry_at.get(row.address)
        if not force and retry_at is not None and now < retry_at:
            return 0
        pub = self._publishers.get(row.address)
        if force or pub is None:
            svc = derived_service(self.identity, st.index, self.certificate)
            if str(svc.address) != row.address:
                self._record(row.address, st, "failed: the address was not derived from this node's identity")
                return 0
            pub = self._publishers[row.address] = Publisher(svc, os.urandom, revision=row.revision)
        if self.client is None:  # not retried: only a restart with a directory changes this
            self._record(row.address, st, "failed: this node has no [dark] directory, so it cannot reach "
                                          "storage nodes; run it with --dark-directory FILE")
            return 0
        try:
            due = pub.due(now)
            if not due:
                return 0
            puts = await asyncio.gather(*(self.client.put_descriptor(index, data) for index, data in due))
            results = [(index, r) for (index, _), r in zip(due, puts)]
        except (DarkError, OSError, asyncio.TimeoutError) as exc:
            self._failed(row.address, now)
            self._record(row.address, st, f"failed: {exc}; retrying every {self.retry:g} s")
            return 0
        line = describe_results(results)
        ok = any(getattr(s, "accepted", False) for _, puts in results for _, s in puts)
        if ok:
            self._retry_at.pop(row.address, None)
        else:
            self._failed(row.address, now)
        self._record(row.address, st, line if ok else f"failed: {line}", published=now if ok else None,
                     revision=pub.revision)
        self.log.info("dark address %s published: %s", row.address, line)
        self.published += ok
        return int(ok)

    def _failed(self, address: str, now: float) -> None:
        # The publisher now thinks it is published until its next republish (an hour):
        # drop it, so the retry builds the descriptors again.
        self._publishers.pop(address, None)
        self._retry_at[address] = now + self.retry

    def _record(self, address: str, st: AddressState, result: str, *, published: Optional[float] = None,
                revision: Optional[int] = None) -> None:
        if result.startswith("failed"):
            self.log.warning("dark address %s: %s", address, result)

        def change(row: Any) -> Any:
            cur = self._state(row)
            if cur is None:
                return None
            new = dataclasses.replace(cur, done=max(cur.done, st.requested), result=result)
            return dataclasses.replace(
                row, blob=new.to_blob(),
                last_published=published if published is not None else row.last_published,
                revision=max(row.revision, revision) if revision is not None else row.revision)

        try:
            self.db.update_address(address, change)
        except Exception as exc:  # a database error must not stop the node
            self.log.error("dark address %s: cannot save the publish result: %s", address, exc)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            try:
                await self.tick()
            except Exception as exc:  # keep the loop alive; the error is logged
                self.log.error("dark address upkeep failed: %s", exc)
