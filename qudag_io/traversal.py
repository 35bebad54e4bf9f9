"""NAT traversal on asyncio: relay node, relay client, relayed links, TCP hole punching, ``establish``.

Drives the sans-IO cores ``qudag_core.nat.relay`` and ``qudag_core.nat.punch`` (see
docs/nat.md §Relays, §Hole punching, §Establish order).

* ``RelayNode`` serves relay reservations on a normal qudag link listener
  (``listen(..., handler=node.handle)``): the peer's NodeId is the one its handshake proved.
* ``RelayClientLink`` is a peer's authenticated link to a relay (bound to a fixed local
  port, so that the address the relay observes is this peer's TCP hole-punch candidate).
* A relayed end-to-end link runs the unchanged ``Link`` core over a circuit: the
  ``_CircuitTransport`` below plays the socket for ``qudag_io.link.LinkProtocol``, so the
  two peers' post-quantum handshake and AEAD frames pass through the relay as opaque
  bytes.
* ``establish`` tries, in QuDAG's order, a direct dial, then (the peer having mapped a
  port with STUN/UPnP and advertised it, that is again a direct dial of the advertised
  address), then a relayed link upgraded by DCUtR hole punching (TCP simultaneous open
  from the port the relay observed), and finally keeps the relayed link.

Design decision: the relayed link carries a short setup phase before application data
(``P``+punch message, then the initiator's verdict ``U`` = upgraded / ``F`` = fall back to
the relay), so both sides agree on which path the application gets.  UDP hole punching is
not done here: the link core is a stream core, and a reliable byte-stream-over-datagram
layer is not in the tree yet (docs/nat.md says so).
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Awaitable, Callable, Optional

from qudag_core.identity import Identity, NodeCertificate, NodeId
from qudag_core.link import Link, LinkConfig, ResponderContext
from qudag_core.nat.punch import PunchInitiator, PunchResponder
from qudag_core.nat.relay import RelayClient, RelayLimits, RelayServer
from qudag_core.nat.traversal_events import (
    CircuitClosed, CircuitConnected, CircuitData, ConnectRefused, DialNow, IncomingCircuit,
    PunchFailed, PunchSendMessage, ReservationRefused, Reserved,
)
from qudag_io.link import Connection, ConnectionClosed, LinkProtocol

__all__ = ["RelayNode", "RelayClientLink", "RelayError", "establish", "accept_relayed", "open_udp_path",
           "connect_from_port", "EstablishResult"]

log = logging.getLogger("qudag.traversal")

_SETUP_PUNCH, _SETUP_UPGRADED, _SETUP_FALLBACK = b"P", b"U", b"F"


class RelayError(Exception):
    """The relay refused a reservation or a circuit (``code`` is a ``RelayRefusal``)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- relay node
class RelayNode:
    """Relay service; pass ``node.handle`` as the ``handler`` of ``qudag_io.link.listen``.

    Sends on the peers' links without awaiting drain: what the relay buffers per peer is
    bounded by that peer's reservation byte quota (``RelayLimits.reservation_bytes``).
    """

    def __init__(self, limits: Optional[RelayLimits] = None) -> None:
        self.core = RelayServer(limits)
        self._conns: dict[bytes, Connection] = {}
        self._timer: Optional[asyncio.TimerHandle] = None
        self.events: list = []  # kept for tests/metrics; bounded below
        self._max_events = 1024

    async def handle(self, conn: Connection) -> None:
        nid = bytes(conn.peer_node_id)
        old = self._conns.get(nid)
        if old is not None and old is not conn:
            self._record(self.core.peer_disconnected(nid, time.time()))
        self._conns[nid] = conn
        self.core.peer_connected(nid, tuple(conn.remote_address[:2]))
        try:
            async for msg in conn:
                self._record(self.core.receive_message(nid, msg, time.time()))
                self._flush()
        finally:
            if self._conns.get(nid) is conn:
                del self._conns[nid]
                self._record(self.core.peer_disconnected(nid, time.time()))
                self._flush()

    def _record(self, events: list) -> None:
        self.events.extend(events)
        del self.events[:-self._max_events]

    def _flush(self) -> None:
        for nid, data in self.core.messages_to_send():
            conn = self._conns.get(nid)
            if conn is None or conn.is_closed:
                continue
            try:
                conn.send_nowait(data)
            except ConnectionClosed:
                pass
        self._arm()

    def _arm(self) -> None:
        when = self.core.get_timer()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, when - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._record(self.core.handle_timer(time.time()))
        self._flush()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


# --------------------------------------------------------------------------- sockets
def _reuse_socket(local_port: int, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", local_port))
    sock.setblocking(False)
    return sock


async def _link_over(transport_factory, make_core, timeout: float) -> Connection:
    loop = asyncio.get_running_loop()
    protocol = LinkProtocol(loop, make_core)
    transport = await transport_factory(protocol)
    try:
        established = await asyncio.wait_for(asyncio.shield(protocol.established), timeout)
    except BaseException:
        transport.abort()
        raise
    return Connection(protocol, established)


async def _link_on_socket(sock: socket.socket, make_core, timeout: float) -> Connection:
    loop = asyncio.get_running_loop()

    async def factory(protocol):
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        return transport

    return await _link_over(factory, make_core, timeout)


async def connect_from_port(
    host: str, port: int, *, local_port: int, identity: Identity,
    peer_certificate: Optional[NodeCertificate] = None, expected_peer_id: Optional[bytes] = None,
    config: Optional[LinkConfig] = None, timeout: float = 10.0, rng: Callable[[int], bytes] = os.urandom,
) -> Connection:
    """Like ``qudag_io.link.connect`` but from a fixed, shareable (SO_REUSEPORT) local port."""
    loop = asyncio.get_running_loop()
    sock = _reuse_socket(local_port)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), timeout)
    except BaseException:
        sock.close()
        raise

    def make_core(peer: Any, now: float) -> Link:
        return Link.initiator(identity=identity, peer_certificate=peer_certificate,
                              expected_peer_id=expected_peer_id, config=config, rng=rng, now=now)

    return await _link_on_socket(sock, make_core, timeout)


# --------------------------------------------------------------------------- relay client
class _CircuitTransport(asyncio.Transport):
    """The byte pipe of one relay circuit, shaped as a transport for ``LinkProtocol``."""

    def __init__(self, client: "RelayClientLink", circuit: int, protocol: LinkProtocol, peer: Any) -> None:
        super().__init__()
        self._client = client
        self._circuit = circuit
        self._protocol = protocol
        self._peer = peer
        self._closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peer
        if name == "sockname":
            return ("relay-circuit", self._circuit)
        return default

    def write(self, data: bytes) -> None:
        if self._closing or not data:
            return
        try:
            self._client._core.send_data(self._circuit, data)
            self._client._flush()
        except Exception:  # circuit already gone: the link notices via connection_lost
            pass

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._client._core.close_circuit(self._circuit)
        self._client._flush()
        self._client._drop(self._circuit)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def pause_reading(self) -> None:  # the relay link itself applies backpressure
        pass

    def resume_reading(self) -> None:
        pass

    def _lost(self) -> None:
        if not self._closing:
            self._closing = True
            self._protocol.connection_lost(None)


class RelayClientLink:
    """A peer's authenticated link to a relay, with its reservation and circuits."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._core = RelayClient()
        self._reserved: Optional[asyncio.Future] = None
        self._connects: dict[bytes, asyncio.Future] = {}
        self._incoming: asyncio.Queue = asyncio.Queue(maxsize=64)
        self._circuits: dict[int, _CircuitTransport] = {}
        self._early: dict[int, list] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, host: str, port: int, *, identity: Identity, relay_certificate: NodeCertificate,
                   local_port: int = 0, timeout: float = 10.0) -> "RelayClientLink":
        conn = await connect_from_port(host, port, local_port=local_port, identity=identity,
                                       peer_certificate=relay_certificate, timeout=timeout)
        return cls(conn)

    @property
    def relay_id(self) -> NodeId:
        return self.conn.peer_node_id

    @property
    def local_port(self) -> int:
        return self.conn.local_address[1]

    async def reserve(self, timeout: float = 5.0) -> Reserved:
        self._reserved = asyncio.get_running_loop().create_future()
        self._core.reserve()
        self._flush()
        return await asyncio.wait_for(self._reserved, timeout)

    @property
    def reservation(self) -> Optional[Reserved]:
        return self._core.reservation

    async def open_circuit(self, target: bytes, timeout: float = 5.0) -> int:
        fut = asyncio.get_running_loop().create_future()
        self._connects[bytes(target)] = fut
        self._core.connect(target)
        self._flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._connects.pop(bytes(target), None)

    async def next_incoming(self) -> IncomingCircuit:
        return await self._incoming.get()

    def _flush(self) -> None:
        for data in self._core.messages_to_send():
            try:
                self.conn.send_nowait(data)
            except ConnectionClosed:
                return

    def _drop(self, circuit: int) -> None:
        self._circuits.pop(circuit, None)
        self._early.pop(circuit, None)

    async def _read(self) -> None:
        try:
            async for msg in self.conn:
                for ev in self._core.receive_message(msg):
                    self._on_event(ev)
                self._flush()
        finally:
            for t in list(self._circuits.values()):
                t._lost()
            self._circuits.clear()
            for fut in list(self._connects.values()) + [self._reserved]:
                if fut is not None and not fut.done():
                    fut.set_exception(RelayError("relay link closed"))

    def _on_event(self, ev: object) -> None:
        if isinstance(ev, Reserved):
            if self._reserved is not None and not self._reserved.done():
                self._reserved.set_result(ev)
        elif isinstance(ev, ReservationRefused):
            if self._reserved is not None and not self._reserved.done():
                self._reserved.set_exception(RelayError("reservation refused", ev.code))
        elif isinstance(ev, CircuitConnected):
            fut = self._connects.get(bytes(ev.target))
            if fut is not None and not fut.done():
                fut.set_result(ev.circuit)
            else:
                self._core.close_circuit(ev.circuit)
        elif isinstance(ev, ConnectRefused):
            fut = self._connects.get(bytes(ev.target))
            if fut is not None and not fut.done():
                fut.set_exception(RelayError("relay refused the circuit", ev.code))
        elif isinstance(ev, IncomingCircuit):
            try:
                self._incoming.put_nowait(ev)
            except asyncio.QueueFull:
                self._core.close_circuit(ev.circuit)
        elif isinstance(ev, CircuitData):
            t = self._circuits.get(ev.circuit)
            if t is not None:
                t._protocol.data_received(ev.data)
        elif isinstance(ev, CircuitClosed):
            t = self._circuits.pop(ev.circuit, None)
            if t is not None:
                t._lost()

    async def link_over_circuit(self, circuit: int, make_core, peer: Any, timeout: float = 10.0) -> Connection:
        """Run a ``Link`` core over an open circuit; returns the authenticated Connection."""

        async def factory(protocol: LinkProtocol):
            t = _CircuitTransport(self, circuit, protocol, peer)
            self._circuits[circuit] = t
            protocol.connection_made(t)
            return t

        return await _link_over(factory, make_core, timeout)

    async def close(self) -> None:
        await self.conn.close()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


# --------------------------------------------------------------------------- punching
async def _accept_from(lsock: socket.socket, addresses) -> socket.socket:
    loop = asyncio.get_running_loop()
    wanted = {(str(h), int(p)) for h, p in addresses}
    while True:
        conn, addr = await loop.sock_accept(lsock)
        if (addr[0], addr[1]) in wanted:
            conn.setblocking(False)
            return conn
        conn.close()  # only the peer's announced candidate may use the punch window


async def _dial_simultaneous(local_port: int, addresses, at: float, deadline: float,
                             listen: bool = False) -> Optional[socket.socket]:
    """TCP simultaneous open from ``local_port`` to one of ``addresses`` (first that works).

    With ``listen`` (the DCUtR responder) the port also accepts, for the time of the
    punch, a connection from exactly the peer's announced candidates: when the peer's SYN
    arrives before ours has left, a NAT with endpoint-independent filtering (or loopback)
    delivers it to us and the kernel would otherwise answer with RST.
    """
    loop = asyncio.get_running_loop()
    accept_task: Optional[asyncio.Task] = None
    lsock: Optional[socket.socket] = None
    if listen:
        lsock = _reuse_socket(local_port)
        lsock.listen(4)
        accept_task = loop.create_task(_accept_from(lsock, addresses))
    try:
        delay = at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        while time.time() < deadline:
            for host, port in addresses:
                sock = _reuse_socket(local_port)
                connect_task = loop.create_task(loop.sock_connect(sock, (host, port)))
                waiting = {connect_task} | ({accept_task} if accept_task else set())
                await asyncio.wait(waiting, timeout=max(0.05, deadline - time.time()),
                                   return_when=asyncio.FIRST_COMPLETED)
                if accept_task is not None and accept_task.done() and not accept_task.exception():
                    connect_task.cancel()
                    await asyncio.gather(connect_task, return_exceptions=True)
                    sock.close()
                    won, accept_task = accept_task.result(), None
                    return won
                if connect_task.done() and not connect_task.cancelled() and connect_task.exception() is None:
                    return sock
                connect_task.cancel()
                exc = (await asyncio.gather(connect_task, return_exceptions=True))[0]
                log.debug("simultaneous open to %s:%s: %r", host, port, exc)
                sock.close()
            # Refused: the peer's SYN arrived before ours left (or a NAT answered); retry shortly.
            await asyncio.sleep(0.05)
        return None
    finally:
        if accept_task is not None:
            if not accept_task.done():
                accept_task.cancel()
            res = (await asyncio.gather(accept_task, return_exceptions=True))[0]
            if isinstance(res, socket.socket):
                res.close()
        if lsock is not None:
            lsock.close()


class EstablishResult:
    """What ``establish``/``accept_relayed`` produced: the link and the path that won."""

    __slots__ = ("connection", "path", "attempts", "rtt", "elapsed")

    def __init__(self, connection: Connection, path: str, attempts: int, rtt: float, elapsed: float) -> None:
        self.connection = connection
        self.path = path  # "direct", "punched" or "relay"
        self.attempts = attempts
        self.rtt = rtt
        self.elapsed = elapsed

    def __repr__(self) -> str:
        return f"EstablishResult(path={self.path!r}, attempts={self.attempts}, rtt={self.rtt:.4f})"


async def establish(
    peer_id: bytes, *, identity: Identity, relay: Optional[RelayClientLink] = None,
    peer_certificate: Optional[NodeCertificate] = None, direct_timeout: float = 2.0,
    relay_timeout: float = 10.0, punch: bool = True, punch_attempts: int = 3,
    dial_timeout: float = 3.0, config: Optional[LinkConfig] = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> EstablishResult:
    """Connect to ``peer_id`` by the first path that works, in QuDAG's order.

    1. direct: dial each address in ``peer_certificate`` (bounded by ``direct_timeout``);
       an address the peer mapped with UPnP or learnt by STUN and put in its certificate
       is reached here too;
    2. through ``relay``: open a circuit to ``peer_id`` and run the end-to-end handshake
       over it, then (``punch``) upgrade by DCUtR TCP hole punching from the port the
       relay observed; the relayed link is kept when punching fails.
    Raises ``RelayError``/``ConnectionClosed``/``asyncio.TimeoutError`` when nothing works.
    """
    t0 = time.time()
    peer_id = bytes(peer_id)
    if peer_certificate is not None:
        for host, port in peer_certificate.addresses:
            try:
                from qudag_io.link import connect
                conn = await connect(host, port, identity=identity, peer_certificate=peer_certificate,
                                     config=config, timeout=direct_timeout, rng=rng)
            except (OSError, asyncio.TimeoutError, ConnectionClosed):
                continue
            return EstablishResult(conn, "direct", 1, 0.0, time.time() - t0)
    if relay is None:
        raise RelayError("no direct path and no relay")
    if relay.reservation is None:
        await relay.reserve()
    circuit = await relay.open_circuit(peer_id, timeout=relay_timeout)

    def make_core(peer: Any, now: float) -> Link:
        return Link.initiator(identity=identity, peer_certificate=peer_certificate,
                              expected_peer_id=None if peer_certificate else peer_id,
                              config=config, rng=rng, now=now)

    relayed = await relay.link_over_circuit(circuit, make_core, ("relay", relay.relay_id.hex()), relay_timeout)
    if relayed.peer_node_id != peer_id:
        await relayed.close(1, "wrong peer")
        raise RelayError("relayed peer proved a different identity")
    if not punch or relay.reservation is None:
        await relayed.send(_SETUP_FALLBACK)
        return EstablishResult(relayed, "relay", 0, 0.0, time.time() - t0)
    core = PunchInitiator([relay.reservation.observed_address], max_attempts=punch_attempts, timeout=dial_timeout)
    evs = core.start(time.time())
    rtt = 0.0
    while True:
        dial: Optional[DialNow] = None
        for ev in evs:
            if isinstance(ev, PunchSendMessage):
                await relayed.send(_SETUP_PUNCH + ev.data)
            elif isinstance(ev, DialNow):
                dial = ev
            elif isinstance(ev, PunchFailed):
                log.debug("punch failed: %s", ev.reason)
                await relayed.send(_SETUP_FALLBACK)
                return EstablishResult(relayed, "relay", core.attempt, rtt, time.time() - t0)
        if dial is None:
            try:
                msg = await asyncio.wait_for(relayed.recv(), dial_timeout)
            except asyncio.TimeoutError:
                evs = core.handle_timer(time.time() + dial_timeout)
                continue
            if not msg.startswith(_SETUP_PUNCH):
                evs = core.handle_timer(float("inf"))
                continue
            evs = core.receive_message(msg[1:], time.time())
            continue
        rtt = dial.rtt
        direct = await _punch_link(relay.local_port, dial, dial_timeout, lambda p, now: Link.initiator(
            identity=identity, peer_certificate=relayed.peer_certificate, expected_peer_id=peer_id,
            config=config, rng=rng, now=now))
        if direct is not None and direct.peer_node_id == peer_id:
            core.succeeded()
            await relayed.send(_SETUP_UPGRADED)
            await relayed.close(0, "upgraded to a direct link")
            return EstablishResult(direct, "punched", core.attempt, rtt, time.time() - t0)
        if direct is not None:
            await direct.close(1, "wrong peer")
        evs = core.dial_failed(time.time())


async def _punch_link(local_port: int, dial: DialNow, dial_timeout: float, make_core,
                      listen: bool = False) -> Optional[Connection]:
    sock = await _dial_simultaneous(local_port, dial.addresses, dial.at, dial.at + dial_timeout, listen)
    if sock is None:
        return None
    try:
        return await _link_on_socket(sock, make_core, dial_timeout)
    except (OSError, asyncio.TimeoutError, ConnectionClosed):
        return None


async def accept_relayed(
    relay: RelayClientLink, *, identity: Identity, certificate: Optional[NodeCertificate] = None,
    config: Optional[LinkConfig] = None, dial_timeout: float = 3.0, punch_attempts: int = 3,
    setup_timeout: float = 30.0, rng: Callable[[int], bytes] = os.urandom,
) -> EstablishResult:
    """Accept the next relayed circuit, run the responder side of the handshake and of
    DCUtR; returns the punched direct link when the initiator upgraded, else the relayed one."""
    t0 = time.time()
    inc = await relay.next_incoming()
    relay._core.accept(inc.circuit)
    relay._flush()
    if certificate is None:
        certificate = identity.issue_certificate((), now=time.time())
    ctx = ResponderContext(identity, certificate, rng=rng)

    def make_core(peer: Any, now: float) -> Link:
        return Link.responder(context=ctx, peer_address=peer, config=config, now=now)

    relayed = await relay.link_over_circuit(inc.circuit, make_core, ("relay", inc.source.hex()), dial_timeout * 4)
    if relayed.peer_node_id != inc.source:
        await relayed.close(1, "identity differs from the relay's")
        raise RelayError("relayed peer's handshake identity differs from its relay link identity")
    own = relay.reservation.observed_address if relay.reservation else ("0.0.0.0", relay.local_port)
    core = PunchResponder([own], max_attempts=punch_attempts, timeout=dial_timeout * 2)
    dial_task: Optional[asyncio.Task] = None
    deadline = t0 + setup_timeout
    try:
        while time.time() < deadline:
            msg = await asyncio.wait_for(relayed.recv(), max(0.1, deadline - time.time()))
            if msg == _SETUP_FALLBACK:
                return EstablishResult(relayed, "relay", core.attempt, 0.0, time.time() - t0)
            if msg == _SETUP_UPGRADED:
                if dial_task is None:
                    raise RelayError("peer upgraded without a punch")
                direct = await asyncio.wait_for(asyncio.shield(dial_task), dial_timeout * 2)
                dial_task = None
                if direct is None or direct.peer_node_id != inc.source:
                    raise RelayError("peer upgraded but our punched link failed")
                await relayed.close(0, "upgraded to a direct link")
                return EstablishResult(direct, "punched", core.attempt, 0.0, time.time() - t0)
            if not msg.startswith(_SETUP_PUNCH):
                raise RelayError("unexpected message during relay setup")
            for ev in core.receive_message(msg[1:], time.time()):
                if isinstance(ev, PunchSendMessage):
                    await relayed.send(_SETUP_PUNCH + ev.data)
                elif isinstance(ev, DialNow):
                    if dial_task is not None:
                        dial_task.cancel()
                    dial_task = asyncio.get_running_loop().create_task(
                        _punch_link(relay.local_port, ev, dial_timeout, make_core, listen=True))
                elif isinstance(ev, PunchFailed):
                    raise RelayError(f"punch failed: {ev.reason}")
        raise asyncio.TimeoutError("relay setup phase did not finish")
    finally:
        if dial_task is not None:
            dial_task.cancel()
            res = await asyncio.gather(dial_task, return_exceptions=True)
            if res and isinstance(res[0], Connection):
                await res[0].close()


# --------------------------------------------------------------------------- UDP path
class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: "UdpPathEndpoint") -> None:
        self.owner = owner

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors: the deadline decides
        pass


class UdpPathEndpoint:
    """A UDP path to the peer of an established link (``qudag_core.nat.udppath``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.core: Any = None
        self.transport: Any = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self.result: asyncio.Future = loop.create_future()
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=1024)

    def _process(self, events: list) -> None:
        from qudag_core.nat.udppath import UdpDatagram, UdpPathFailed, UdpPathValidated
        for ev in events:
            if isinstance(ev, UdpPathValidated) and not self.result.done():
                self.result.set_result(ev)
            elif isinstance(ev, UdpPathFailed) and not self.result.done():
                self.result.set_exception(TimeoutError(ev.reason))
            elif isinstance(ev, UdpDatagram):
                try:
                    self._queue.put_nowait(ev.data)
                except asyncio.QueueFull:
                    pass  # a datagram transport may drop

    def _transmit(self) -> None:
        for data, addr in self.core.datagrams_to_send(time.time()):
            self.transport.sendto(data, addr)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.core.get_timer()
        if when is not None:
            self._timer = self._loop.call_later(max(0.0, when - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._process(self.core.handle_timer(time.time()))
        self._transmit()

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        self._process(self.core.receive_datagram(data, addr, time.time()))
        self._transmit()

    def send(self, data: bytes) -> None:
        self.core.send(data)
        self._transmit()

    async def recv(self, timeout: float = 5.0) -> bytes:
        return await asyncio.wait_for(self._queue.get(), timeout)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()


async def open_udp_path(conn: Connection, *, local_port: int, stun_server: tuple, timeout: float = 3.0,
                        rng: Callable[[int], bytes] = os.urandom) -> UdpPathEndpoint:
    """Punch and validate a UDP path to ``conn``'s peer; both peers call this at once.

    Learns our UDP candidate by STUN from ``local_port``, swaps candidate and a fresh
    transmit key over the authenticated link, then probes (``qudag_core.nat.udppath``).
    Raises ``TimeoutError`` when no authenticated ACK arrives within ``timeout``.
    """
    from qudag_core.nat.punch import decode_message, encode_connect
    from qudag_core.nat.udppath import UdpPath
    from qudag_io.stun import stun_binding

    key, nonce = rng(32), rng(8)
    try:
        candidate = await stun_binding(stun_server, local_addr=("0.0.0.0", local_port), timeout=2.0)
    except Exception:
        await conn.send(b"Q")  # an empty offer keeps the peer's exchange in step
        msg = await asyncio.wait_for(conn.recv(), timeout + 2.0)
        raise
    await conn.send(b"Q" + key + encode_connect([candidate]))
    msg = await asyncio.wait_for(conn.recv(), timeout + 2.0)
    if msg[:1] != b"Q":
        raise RelayError("peer sent something else than a UDP offer")
    if len(msg) < 34:
        raise TimeoutError("peer has no UDP candidate")
    kind, addrs = decode_message(msg[33:])
    if kind != "connect":
        raise RelayError("bad UDP candidate message")
    loop = asyncio.get_running_loop()
    ep = UdpPathEndpoint(loop)
    ep.core = UdpPath(tx_key=key, rx_key=msg[1:33], session_id=conn.session_id, candidates=addrs,
                      nonce=nonce, now=time.time(), timeout=timeout)
    ep.transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(ep),
                                                          local_addr=("0.0.0.0", local_port))
    ep._transmit()
    try:
        await asyncio.wait_for(asyncio.shield(ep.result), timeout + 1.0)
    except BaseException:
        ep.close()
        raise
    return ep
