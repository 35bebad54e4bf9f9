"""UDP adapter for the KRPC node core (``qudag_core.krpc.node``), on uvloop or asyncio.

Thin by design (STYLE.md §11): ``datagram_received`` hands the bytes to
``KrpcNode.receive_datagram``, events resolve one future per operation id, and
``_transmit`` sends everything pending and keeps a single ``call_at`` timer no later
than ``KrpcNode.get_timer()``.  The core runs on ``loop.time()`` (monotonic) and
``os.urandom``.

Public API::

    dht = await DhtNode.start("127.0.0.1", 0, node_id=..., bootstrap=[("127.0.0.1", 6881)])
    target = await dht.put(b"5:hello")                  # BEP 44 immutable, bencoded value
    value = (await dht.get(target)).value
    nodes = await dht.find_node(target)
    peers = await dht.get_peers(info_hash); await dht.announce(info_hash, port)
    await dht.ping(("127.0.0.1", 6881)); await dht.close()

KRPC over a qudag link: ``await dht.serve_link(connection, peer_addr)`` answers KRPC
queries (including ``qd_get``/``qd_put``) arriving on an authenticated
``qudag_io.link.Connection``, one KRPC message per link message, through the same
handler as UDP (``KrpcNode.receive_link_message``, no 1,400-byte budget there);
``await dht.qd_put(conn, record)`` / ``await dht.qd_get(conn, target, rt)`` are the
client side.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, Iterable, Optional

from qudag_core.krpc import messages as M
from qudag_core.krpc.errors import KrpcError
from qudag_core.krpc.node import KrpcNode, NodeConfig
from qudag_core.krpc.node_events import (BootstrapDone, FindNodeResult, GetPeersResult, GetResult,
                                         OperationDone, PingResult, PutResult)

__all__ = ["DhtNode", "DhtError"]


class DhtError(Exception):
    """An operation failed (timeout, no node answered, nobody stored it)."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "DhtNode") -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.owner._transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        o = self.owner
        now = o._time()
        o.core.receive_datagram(data, addr, now)
        o._process(now)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable etc.: queries time out
        pass

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self.owner._closed = True


class DhtNode:
    """A running DHT node bound to one UDP socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, core: KrpcNode) -> None:
        self._loop = loop
        self.core = core
        self._transport: Optional[asyncio.DatagramTransport] = None
        self._futures: dict[int, asyncio.Future] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at: Optional[float] = None
        self._closed = False
        self._bootstrapped = loop.create_future()
        # bound once: every datagram goes through these
        self._time = loop.time
        self._pop_events = core.pop_events
        self._to_send = core.datagrams_to_send
        self._get_timer = core.get_timer

    @classmethod
    async def start(cls, host: str, port: int, *, node_id: Optional[bytes] = None,
                    bootstrap: Iterable[tuple] = (), config: Optional[NodeConfig] = None,
                    wait_bootstrap: bool = True) -> "DhtNode":
        loop = asyncio.get_running_loop()
        core = KrpcNode(node_id if node_id is not None else os.urandom(20), rng=os.urandom,
                        now=loop.time(), config=config, bootstrap=tuple(bootstrap))
        self = cls(loop, core)
        await loop.create_datagram_endpoint(lambda: _Protocol(self), local_addr=(host, port))
        core.bootstrap(loop.time())
        self._process()
        if wait_bootstrap:
            await self._bootstrapped
        return self

    @property
    def node_id(self) -> bytes:
        return self.core.node_id

    @property
    def address(self) -> tuple:
        assert self._transport is not None
        return self._transport.get_extra_info("sockname")[:2]

    # ---- operations --------------------------------------------------------------
    async def _wait(self, op_id: int) -> Any:
        fut = self._loop.create_future()
        self._futures[op_id] = fut
        self._process()
        try:
            ev: OperationDone = await fut
        finally:
            self._futures.pop(op_id, None)
        if not ev.ok:
            raise DhtError(ev.error or "operation failed")
        return ev.result

    async def ping(self, addr: tuple) -> PingResult:
        return await self._wait(self.core.ping(addr, self._loop.time()))

    async def find_node(self, target: bytes) -> FindNodeResult:
        return await self._wait(self.core.find_node(target, self._loop.time()))

    async def get_peers(self, info_hash: bytes) -> GetPeersResult:
        return await self._wait(self.core.get_peers(info_hash, self._loop.time()))

    async def announce(self, info_hash: bytes, port: int = 0, *, implied_port: bool = False) -> PutResult:
        return await self._wait(self.core.announce(info_hash, port, self._loop.time(),
                                                   implied_port=implied_port or port == 0))

    async def get(self, target: bytes, *, salt: bytes = b"", seq: Optional[int] = None,
                  quorum: int = 1) -> GetResult:
        return await self._wait(self.core.get(target, self._loop.time(), salt=salt, seq=seq, quorum=quorum))

    async def put(self, value: bytes) -> bytes:
        """BEP 44 immutable put of a *bencoded* value; returns the target."""
        op, target = self.core.put_immutable(value, self._loop.time())
        await self._wait(op)
        return target

    async def put_mutable(self, value: bytes, *, key: bytes, signature: bytes, seq: int,
                          salt: bytes = b"", cas: Optional[int] = None) -> bytes:
        op, target = self.core.put_mutable(value, key=key, signature=signature, seq=seq, salt=salt,
                                           cas=cas, now=self._loop.time())
        await self._wait(op)
        return target

    async def serve_link(self, conn: Any, peer_addr: tuple) -> None:
        """Answer KRPC messages arriving on ``conn`` (a ``qudag_io.link.Connection``)
        until it closes.  ``peer_addr`` keys the write tokens of that peer."""
        from qudag_io.link import ConnectionClosed

        try:
            while True:
                data = await conn.recv()
                reply = self.core.receive_link_message(data, peer_addr, self._loop.time())
                self._process()
                if reply is not None:
                    await conn.send(reply)
        except ConnectionClosed:
            return

    async def qd_put(self, conn: Any, record: M.QdRecord, *, salt: bytes = b"", timeout: float = 10.0) -> None:
        """Store an ML-DSA-signed qudag record on the node at the other end of ``conn``
        (a ``qudag_io.link.Connection``): ``qd_get`` for a write token, then ``qd_put``."""
        target = record.target(salt)
        r = await self._link_call(conn, M.QdGet(transaction_id=b"-", node_id=self.node_id, target=target,
                                                record_type=record.record_type), timeout)
        if r.token is None:
            raise DhtError("no write token in the qd_get reply")
        await self._link_call(conn, M.QdPut(transaction_id=b"-", node_id=self.node_id, token=r.token,
                                            record=record, salt=salt), timeout)

    async def qd_get(self, conn: Any, target: bytes, record_type: int, *, salt: bytes = b"",
                     timeout: float = 10.0) -> Optional[M.QdRecord]:
        """Fetch a qudag record over ``conn``; returned only if its ML-DSA signature
        verifies and it matches ``target`` (the key and salt it was asked under)."""
        r = await self._link_call(conn, M.QdGet(transaction_id=b"-", node_id=self.node_id, target=target,
                                                record_type=record_type), timeout)
        rec = r.record
        if rec is None:
            return None
        if rec.target(salt) != target or rec.record_type != record_type:
            raise DhtError("qd record does not match the target asked for")
        try:
            rec.verify(salt)
        except KrpcError as exc:
            raise DhtError(str(exc)) from None
        return rec

    async def _link_call(self, conn: Any, query: M.Query, timeout: float) -> M.Response:
        """One KRPC query per link message; the reply is matched by transaction id."""
        tid = os.urandom(4)
        q = dataclasses.replace(query, transaction_id=tid, client_version=self.core.config.client_version,
                                read_only=self.core.config.read_only)
        await conn.send(q.encode())

        async def reply() -> M.Response:
            for _ in range(64):  # bounded: unrelated messages on the link are skipped
                try:
                    msg = M.parse_message(await conn.recv())
                except KrpcError:
                    continue
                if msg.transaction_id != tid:
                    continue
                if isinstance(msg, M.Error):
                    raise DhtError(f"remote error {msg.code}: {msg.message.decode('utf-8', 'replace')}")
                if isinstance(msg, M.Response):
                    return msg
            raise DhtError("no reply on the link")

        return await asyncio.wait_for(reply(), timeout)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._futures.values():
            if not fut.done():
                fut.set_exception(DhtError("node closed"))
        if self._transport is not None:
            self._transport.close()
        self._closed = True
        await asyncio.sleep(0)

    # ---- plumbing --------------------------------------------------------------
    def _process(self, now: Optional[float] = None) -> None:
        events = self._pop_events()
        if events:
            self._dispatch(events)
        self._transmit(now)

    def _dispatch(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, OperationDone):
                fut = self._futures.get(ev.op_id)
                if fut is not None and not fut.done():
                    fut.set_result(ev)
            elif isinstance(ev, BootstrapDone):
                if not self._bootstrapped.done():
                    self._bootstrapped.set_result(ev.table_size)

    def _transmit(self, now: Optional[float] = None) -> None:
        if self._closed or self._transport is None:
            return
        out = self._to_send(self._time() if now is None else now)
        if out:
            sendto = self._transport.sendto
            for data, addr in out:
                sendto(data, addr)
        t = self._get_timer()
        # Re-arm only when the core wants waking *earlier* than the armed timer: every
        # query moves the core's next deadline, and a cancel + call_at per datagram was a
        # measurable share of a lookup.  A timer that fires early just finds nothing due
        # and re-arms for the real deadline.
        if t is not None and (self._timer_at is None or t < self._timer_at):
            self._arm(t)

    def _arm(self, t: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = t
        self._timer = self._loop.call_at(t, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        self.core.handle_timer(self._loop.time())
        self._process()
