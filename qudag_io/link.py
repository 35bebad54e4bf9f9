"""TCP adapter for the qudag link core (handshake + secure channel), on uvloop or asyncio.

Cores are driven with Unix time (``time.time()``): certificates carry calendar validity,
so the link needs the calendar; timers are re-armed relative to it.

The adapter is deliberately thin (STYLE.md §11, after aioquic ``asyncio/protocol.py``):
bytes from the socket go to ``Link.receive_data``, the events that come back are
dispatched, and ``_transmit`` writes everything the core has pending and re-arms one
``call_at`` timer from ``Link.get_timer()``.  All protocol decisions (handshake timeout,
keepalive, idle close, rekeying) live in the core, which makes them testable without
sockets.

Backpressure both ways: ``Connection.send`` waits while the transport's write buffer is
above its high-water mark; when the application falls behind on ``recv`` the queue of
received messages is bounded and the socket stops being read until it drains.

Public API::

    async with await qudag_io.connect(host, port, identity=me, peer_certificate=cert) as conn:
        await conn.send(b"hello")
        reply = await conn.recv()

    server = await qudag_io.listen(host, port, identity=me, handler=serve)

A node dials from the address it listens on (``connect(..., local_addr=source_address(
host, bound_hosts))``), so a peer that keys anything on the TCP source address (per-IP
limits, logs) sees one node as one address; see :func:`source_address` for when the
kernel is left to choose.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from typing import Any, Awaitable, Callable, Iterable, Optional

from qudag_core.identity import Identity, NodeCertificate, NodeId
from qudag_core.link import Established, Link, LinkConfig, MessageReceived, ResponderContext, Terminated
from qudag_core.link.core import LinkNotEstablished

__all__ = ["Connection", "ConnectionClosed", "Listener", "connect", "listen", "source_address"]

log = logging.getLogger("qudag.link")

#: Messages buffered for a slow reader before the socket is paused.
RECV_QUEUE_HIGH = 256
RECV_QUEUE_LOW = 64


class ConnectionClosed(Exception):
    """The link ended; ``error_code``/``reason`` say why, ``by_peer`` who ended it."""

    def __init__(self, error_code: int, reason: str, by_peer: bool) -> None:
        super().__init__(f"link closed ({'peer' if by_peer else 'local'}): code {error_code}: {reason}")
        self.error_code = error_code
        self.reason = reason
        self.by_peer = by_peer


class LinkProtocol(asyncio.Protocol):
    """Runs one ``Link`` core on an asyncio transport.

    Public for adapters that bring their own byte pipe (a relayed circuit, a punched
    socket): give it ``make_core(peer, now) -> Link``, hand it to the transport, and await
    ``established``; then wrap it in ``Connection(protocol, established)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, make_core: Callable[[Any, float], Link]) -> None:
        self._loop = loop
        self._make_core = make_core
        self.core: Optional[Link] = None
        self.transport: Optional[asyncio.Transport] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._frozen = False
        self._timer_at: Optional[float] = None
        self.established: asyncio.Future[Established] = loop.create_future()
        self.messages: deque[bytes] = deque()
        self._recv_waiter: Optional[asyncio.Future[None]] = None
        self._drain_waiter: Optional[asyncio.Future[None]] = None
        self._write_paused = False
        self._read_paused = False
        self.closed: Optional[ConnectionClosed] = None
        self.closed_event = asyncio.Event()
        #: Bytes read from / written to the socket (handshake and framing included).
        self.bytes_received = 0
        self.bytes_sent = 0

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        self.core = self._make_core(transport.get_extra_info("peername"), time.time())
        self._transmit()

    def data_received(self, data: bytes) -> None:
        assert self.core is not None
        self.bytes_received += len(data)
        self._process(self.core.receive_data(data, time.time()))
        self._transmit()

    def eof_received(self) -> Optional[bool]:
        return False

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.core is not None:
            self._process(self.core.connection_lost(time.time()))
        self._finish(ConnectionClosed(0, f"transport lost: {exc!r}" if exc else "transport closed", True))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake_drain()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    # -- core driving ----------------------------------------------------------
    def _process(self, events: list) -> None:
        for ev in events:
            if isinstance(ev, MessageReceived):
                self.messages.append(ev.data)
                if len(self.messages) >= RECV_QUEUE_HIGH and not self._read_paused and self.transport:
                    self.transport.pause_reading()
                    self._read_paused = True
                if self._recv_waiter is not None and not self._recv_waiter.done():
                    self._recv_waiter.set_result(None)
            elif isinstance(ev, Established):
                if not self.established.done():
                    self.established.set_result(ev)
            elif isinstance(ev, Terminated):
                self._finish(ConnectionClosed(ev.error_code, ev.reason, ev.by_peer))

    def _finish(self, closed: ConnectionClosed) -> None:
        if self.closed is None:
            self.closed = closed
            log.debug("link closed: %s", closed)
        if not self.established.done():
            self.established.set_exception(closed)
            self.established.exception()  # a failed handshake nobody awaits is not an error
        if self._recv_waiter is not None and not self._recv_waiter.done():
            self._recv_waiter.set_result(None)
        self.closed_event.set()

    def _transmit(self) -> None:
        core, transport = self.core, self.transport
        if core is None or transport is None or self._frozen:
            return
        data = core.data_to_send()
        if data and not transport.is_closing():
            transport.write(data)
            self.bytes_sent += len(data)
        if core.is_closed:
            if not transport.is_closing():
                transport.close()
            return
        when = core.get_timer()
        if when != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = (
                self._loop.call_later(max(0.0, when - time.time()), self._on_timer) if when is not None else None
            )
            self._timer_at = when

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.core is None:
            return
        self._process(self.core.handle_timer(time.time()))
        self._transmit()

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # -- used by Connection ----------------------------------------------------
    async def wait_message(self) -> bytes:
        while not self.messages:
            if self.closed is not None:
                raise self.closed
            self._recv_waiter = self._loop.create_future()
            try:
                await self._recv_waiter
            finally:
                self._recv_waiter = None
        msg = self.messages.popleft()
        if self._read_paused and len(self.messages) <= RECV_QUEUE_LOW and self.transport:
            self._read_paused = False
            self.transport.resume_reading()
        return msg

    async def drain(self) -> None:
        while self._write_paused and self.closed is None:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    def send(self, data: bytes) -> None:
        if self.closed is not None:
            raise self.closed
        assert self.core is not None
        try:
            self.core.send_message(data, time.time())
        except LinkNotEstablished:
            # Ended (our close() or the peer's), but the transport has not reported
            # connection_lost yet: to a caller that is the same closed link.
            raise ConnectionClosed(0, "link closing", False) from None
        self._transmit()

    def freeze(self) -> None:
        """Stop reading, writing and timing without closing anything: the peer sees a
        hung node and finds out only through its own keepalive / idle timeout."""
        if self.transport is not None:
            self.transport.pause_reading()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._frozen = True  # the core stays, but nothing it queues leaves

    def close(self, code: int, reason: str) -> None:
        if self.core is not None and self.closed is None:
            self.core.close(code, reason, time.time())
            self._transmit()
        elif self.transport is not None and not self.transport.is_closing():
            self.transport.close()


class Connection:
    """An established, authenticated link to one peer."""

    def __init__(self, protocol: LinkProtocol, established: Established) -> None:
        self._p = protocol
        self.peer_node_id: NodeId = established.peer_node_id
        self.peer_certificate: NodeCertificate = established.peer_certificate
        self.session_id: bytes = established.session_id
        assert protocol.transport is not None
        self.remote_address = protocol.transport.get_extra_info("peername")
        self.local_address = protocol.transport.get_extra_info("sockname")

    async def send(self, data: bytes) -> None:
        """Queue one message; waits while the socket's write buffer is full."""
        self._p.send(data)
        await self._p.drain()

    def send_nowait(self, data: bytes) -> None:
        """Queue one message without waiting for the write buffer to drain.  For callers
        that bound their own buffering (relays, forwarders); ``ConnectionClosed`` if ended."""
        self._p.send(data)

    def freeze(self) -> None:
        """Tests and fault injection: behave like a hung peer (stop reading, writing and
        keepalives; close nothing)."""
        self._p.freeze()

    def abort(self) -> None:
        """Drop the transport at once, without an authenticated close."""
        if self._p.transport is not None:
            self._p.transport.abort()

    async def wait_closed(self) -> None:
        """Return once the link has ended, however it ended (no close is sent)."""
        await self._p.closed_event.wait()

    @property
    def is_closed(self) -> bool:
        """Whether the link has ended."""
        return self._p.closed_event.is_set()

    async def recv(self) -> bytes:
        """The next message, in order; ``ConnectionClosed`` once the link has ended."""
        return await self._p.wait_message()

    async def close(self, code: int = 0, reason: str = "", *, timeout: float = 5.0) -> None:
        """Send an authenticated close and wait (bounded) for the transport to end."""
        self._p.close(code, reason)
        try:
            await asyncio.wait_for(self._p.closed_event.wait(), timeout)
        except asyncio.TimeoutError:
            if self._p.transport is not None:
                self._p.transport.abort()

    @property
    def is_closed(self) -> bool:
        return self._p.closed is not None

    @property
    def bytes_received(self) -> int:
        """Bytes read from the socket so far, handshake and framing included."""
        return self._p.bytes_received

    @property
    def bytes_sent(self) -> int:
        """Bytes written to the socket so far, handshake and framing included."""
        return self._p.bytes_sent

    def __aiter__(self) -> "Connection":
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.recv()
        except ConnectionClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> "Connection":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def connect(
    host: str,
    port: int,
    *,
    identity: Identity,
    peer_certificate: Optional[NodeCertificate] = None,
    expected_peer_id: Optional[NodeId] = None,
    certificate: Optional[NodeCertificate] = None,
    config: Optional[LinkConfig] = None,
    timeout: float = 10.0,
    rng: Callable[[int], bytes] = os.urandom,
    local_addr: Optional[tuple[str, int]] = None,
) -> Connection:
    """Dial ``host:port``, run the post-quantum handshake and return the link.

    ``peer_certificate`` (when known) lets the handshake start at once and hides our
    identity; ``expected_peer_id`` makes the handshake fail unless the peer proves it.
    ``local_addr=(host, port)`` binds the socket before connecting (as
    ``loop.create_connection`` does), so the peer sees the connection come from that
    address; port 0 lets the kernel pick the port.  None (the default): the kernel picks
    the source address too.  A node passes ``source_address(host, its bound hosts)``.
    An address of the other family than ``host``, or one this machine does not have,
    fails the dial with ``OSError``.
    """
    loop = asyncio.get_running_loop()
    cfg = config or LinkConfig()

    def make_core(peer: Any, now: float) -> Link:
        return Link.initiator(
            identity=identity,
            peer_certificate=peer_certificate,
            expected_peer_id=expected_peer_id,
            certificate=certificate,
            config=cfg,
            rng=rng,
            now=now,
        )

    transport, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: LinkProtocol(loop, make_core), host, port, local_addr=local_addr), timeout
    )
    try:
        established = await asyncio.wait_for(asyncio.shield(protocol.established), timeout)
    except BaseException:
        transport.abort()
        raise
    return Connection(protocol, established)


def source_address(peer_host: str, bound_hosts: Iterable[str]) -> Optional[tuple[str, int]]:
    """The ``local_addr`` a node whose listeners are bound to ``bound_hosts`` dials
    ``peer_host`` from: ``(h, 0)`` for the first bound IP address ``h`` of the peer's
    family, so the peer sees the connection come from the address the node is known by.

    None (the kernel chooses, as before) when:

    * ``peer_host`` is a host name: its family and reach are known only once resolved;
    * the first bound address of the peer's family is a wildcard (``0.0.0.0``, ``::``):
      the node answers on every address, and the kernel's routed choice is the right one;
    * no bound address has the peer's family (or none is an IP address);
    * that address is loopback and the peer is not: a loopback source cannot reach
      another machine.

    Binding fixes the source, not the route: on a multi-homed host whose route to a peer
    leaves through another interface (strict reverse-path filtering may drop it), listen
    on the wildcard and the kernel picks per route.
    """
    import ipaddress

    try:
        peer = ipaddress.ip_address(peer_host.split("%", 1)[0])
    except ValueError:
        return None
    for h in bound_hosts:
        try:
            ip = ipaddress.ip_address(str(h).split("%", 1)[0])
        except ValueError:
            continue
        if ip.version != peer.version:
            continue
        if ip.is_unspecified or (ip.is_loopback and not peer.is_loopback):
            return None
        return (str(h), 0)
    return None


class Listener:
    """A listening socket whose accepted links are handed to ``handler``."""

    certificate: NodeCertificate
    """The certificate dialers need (``connect(..., peer_certificate=...)``)."""

    def __init__(self, server: asyncio.AbstractServer, tasks: set[asyncio.Task[Any]],
                 failed_bytes: Optional[list[int]] = None) -> None:
        self._server = server
        self._tasks = tasks
        self._failed_bytes = failed_bytes if failed_bytes is not None else [0, 0]

    @property
    def failed_bytes_received(self) -> int:
        """Wire bytes read from accepted connections whose handshake failed (they never
        become a ``Connection``, so nobody else can count them), added when it fails."""
        return self._failed_bytes[0]

    @property
    def failed_bytes_sent(self) -> int:
        """Wire bytes written to accepted connections whose handshake failed (an alert)."""
        return self._failed_bytes[1]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for s in self._server.sockets]

    async def close(self) -> None:
        """Stop accepting, then end every link: each handler is cancelled and its link
        gets an authenticated close, sent after whatever the handler already queued (so
        a last reply still reaches the peer)."""
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        # After the links: from Python 3.12 wait_closed() also waits for every accepted
        # connection, which would otherwise hang until the peers hang up.
        await self._server.wait_closed()

    async def __aenter__(self) -> "Listener":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def listen(
    host: str,
    port: int,
    *,
    identity: Identity,
    handler: Callable[[Connection], Awaitable[None]],
    certificate: Optional[NodeCertificate] = None,
    certificate_lifetime: int = 7 * 86400,
    config: Optional[LinkConfig] = None,
    rng: Callable[[int], bytes] = os.urandom,
    on_handshake_failed: Optional[Callable[[ConnectionClosed], None]] = None,
) -> Listener:
    """Accept links on ``host:port``; each established link runs ``handler(conn)``.

    Handshakes that fail or time out never reach the handler.  One ``ResponderContext``
    (static keys, certificate cache, cookie secret, replay filter) is shared by every
    accepted link; when more than ``config.cookie_threshold`` handshakes are in progress
    the listener switches to cookie mode, so floods cost it no KEM work.
    Without ``certificate``, one is issued for the bound address(es).
    ``on_handshake_failed(exc)`` is told about each failed inbound handshake (metrics);
    the wire bytes of those connections are added to ``Listener.failed_bytes_received`` /
    ``failed_bytes_sent`` before it is called.
    """
    loop = asyncio.get_running_loop()
    cfg = config or LinkConfig()
    tasks: set[asyncio.Task[Any]] = set()
    state: dict[str, Any] = {"ctx": None, "pending": 0}
    failed_bytes = [0, 0]  # wire bytes (in, out) of connections whose handshake failed

    def _update_load() -> None:
        state["ctx"].under_load = state["pending"] > cfg.cookie_threshold

    async def run(protocol: LinkProtocol) -> None:
        state["pending"] += 1
        _update_load()
        try:
            established = await protocol.established
        except ConnectionClosed as exc:
            log.debug("inbound handshake failed: %s", exc)
            # Final counts: a failed handshake has ended the core, so the transport is
            # closed (or gone) and reads and writes nothing more.  One addition per failed
            # connection; an established link's bytes stay on its Connection.
            failed_bytes[0] += protocol.bytes_received
            failed_bytes[1] += protocol.bytes_sent
            if on_handshake_failed is not None:
                on_handshake_failed(exc)
            return
        finally:
            state["pending"] -= 1
            _update_load()
        conn = Connection(protocol, established)
        try:
            await handler(conn)
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("link handler failed")
        finally:
            if not conn.is_closed:
                await conn.close()

    def factory() -> LinkProtocol:
        ctx = state["ctx"]

        def make_core(peer: Any, now: float) -> Link:
            return Link.responder(context=ctx, peer_address=peer, config=cfg, now=now)

        p = LinkProtocol(loop, make_core)
        t = loop.create_task(run(p))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        return p

    server = await loop.create_server(factory, host, port, start_serving=False)
    if certificate is None:
        addrs = [s.getsockname()[:2] for s in server.sockets]
        certificate = identity.issue_certificate(addrs, now=time.time(), lifetime=certificate_lifetime)
    state["ctx"] = ResponderContext(identity, certificate, rng=rng)
    await server.start_serving()
    listener = Listener(server, tasks, failed_bytes)
    listener.certificate = certificate
    return listener
