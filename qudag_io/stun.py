"""asyncio/uvloop adapter for the STUN cores (``qudag_core.nat``): a UDP socket, the
loop's clock and ``os.urandom`` drive a :class:`StunClient` or a
:class:`NatBehaviourDiscovery`.

The adapter stays thin (STYLE.md §11): datagram in -> ``core.receive_datagram`` ->
events; then everything in ``core.datagrams_to_send`` goes out and one ``call_at``
timer is re-armed from ``core.get_timer()``.  Retransmission, matching and integrity
checks all live in the core.  The one decision a reader would ask about: ICMP errors
reported through ``error_received`` are ignored (RFC 8489 §6.2.1 leaves ending the
transaction on them optional, and a spoofed ICMP would otherwise end it); the
transaction then ends by its own timeout.

Public API::

    await stun_binding(("192.0.2.1", 3478)) -> ("203.0.113.5", 40000)
    await stun_transaction(server, method=METHOD_ALLOCATE, attributes=..., credentials=...)
    await discover_nat_behaviour(server) -> NatBehaviour
"""
from __future__ import annotations

import asyncio
import os
import socket
from typing import Callable

from qudag_core.errors import RemoteProtocolError
from qudag_core.nat import stun as S
from qudag_core.nat.behaviour import NatBehaviourDiscovery
from qudag_core.nat.events import (
    BindingSucceeded,
    Event,
    NatBehaviour,
    NatBehaviourDiscovered,
    TransactionFailed,
    TransactionTimedOut,
)
from qudag_core.nat.stun_client import (
    LongTermCredentials,
    ShortTermCredentials,
    StunClient,
    normalise_address,
)

__all__ = [
    "StunRequestFailed", "stun_binding", "stun_transaction", "discover_nat_behaviour",
    "CoreDatagramProtocol",
]


class StunRequestFailed(RemoteProtocolError):
    """The server answered with an error response (``error_code`` is its ERROR-CODE;
    0 when the response was unusable, e.g. unknown comprehension-required attributes)."""

    def __init__(self, event: TransactionFailed) -> None:
        super().__init__(f"STUN request failed: {event.code} {event.reason}", error_code=event.code or 0)
        self.event = event


class CoreDatagramProtocol(asyncio.DatagramProtocol):
    """Drive any datagram core (receive_datagram / datagrams_to_send / get_timer /
    handle_timer) from a datagram transport; ``on_events`` gets every event list."""

    def __init__(self, core, on_events: Callable[[list[Event]], None]) -> None:
        self.core = core
        self._on_events = on_events
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self._on_events(self.core.receive_datagram(data, addr, self._loop.time()))
        self.transmit()

    def error_received(self, exc: Exception) -> None:
        pass  # see the module docstring

    def connection_lost(self, exc) -> None:
        self._cancel_timer()

    def transmit(self) -> None:
        now = self._loop.time()
        if self.transport is None or self.transport.is_closing():
            return
        for data, addr in self.core.datagrams_to_send(now):
            self.transport.sendto(data, addr)
        when = self.core.get_timer()
        if when != self._timer_at:
            self._cancel_timer()
            if when is not None:
                self._timer_at = when
                self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        when = self._timer_at
        self._timer = self._timer_at = None
        # The loop may run a handle a clock-resolution early: never tell the core an
        # earlier time than the one it asked for.
        now = max(self._loop.time(), when or 0.0)
        self._on_events(self.core.handle_timer(now))
        self.transmit()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_at = None


async def _resolve(server) -> tuple[tuple, int]:
    host, port = server[0], int(server[1])
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"cannot resolve {host!r}")
    family, _, _, _, sockaddr = infos[0]
    return (sockaddr[0], sockaddr[1]), family


async def _run(core, server, local_addr, start, is_final, timeout):
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()

    def on_events(events: list[Event]) -> None:
        for ev in events:
            if is_final(ev) and not done.done():
                done.set_result(ev)

    addr, family = await _resolve(server)
    if local_addr is None:
        local_addr = ("::", 0) if family == socket.AF_INET6 else ("0.0.0.0", 0)
    transport, proto = await loop.create_datagram_endpoint(
        lambda: CoreDatagramProtocol(core, on_events), local_addr=local_addr, family=family)
    try:
        start(addr, transport.get_extra_info("sockname"), loop.time())
        proto.transmit()
        return await asyncio.wait_for(done, timeout)
    finally:
        proto._cancel_timer()
        transport.close()


async def stun_transaction(
    server,
    *,
    method: int = S.METHOD_BINDING,
    attributes: list[tuple[int, bytes]] | tuple = (),
    credentials: ShortTermCredentials | LongTermCredentials | None = None,
    local_addr: tuple | None = None,
    timeout: float | None = None,
    rto: float = 0.5,
    rc: int = 7,
    rm: int = 16,
    software: str | None = None,
    rng: Callable[[int], bytes] = os.urandom,
) -> Event:
    """Run one STUN transaction from a fresh UDP socket and return its success event
    (:class:`BindingSucceeded`, :class:`AllocateSucceeded`, :class:`TransactionSucceeded`).
    Raises :class:`StunRequestFailed` on an error response, :class:`TimeoutError` when the
    RFC 8489 retransmission schedule (or ``timeout``, if shorter) runs out."""
    client = StunClient(rng=rng, rto=rto, rc=rc, rm=rm, software=software)
    handle: list[bytes] = []

    def start(addr, sockname, now):
        handle.append(client.request(addr, now, method=method, attributes=attributes,
                                     credentials=credentials))

    ev = await _run(client, server, local_addr, start,
                    lambda ev: bool(handle) and getattr(ev, "transaction_id", None) == handle[0], timeout)
    if isinstance(ev, TransactionTimedOut):
        raise TimeoutError(f"no STUN response from {server} after {ev.transmissions} transmissions")
    if isinstance(ev, TransactionFailed):
        raise StunRequestFailed(ev)
    return ev


async def stun_binding(
    server,
    *,
    local_addr: tuple | None = None,
    credentials: ShortTermCredentials | None = None,
    timeout: float | None = None,
    rto: float = 0.5,
    rc: int = 7,
    rm: int = 16,
    rng: Callable[[int], bytes] = os.urandom,
) -> tuple[str, int]:
    """Our server-reflexive ``(host, port)`` as ``server`` sees it (RFC 8489 Binding)."""
    ev = await stun_transaction(server, credentials=credentials, local_addr=local_addr,
                                timeout=timeout, rto=rto, rc=rc, rm=rm, rng=rng)
    assert isinstance(ev, BindingSucceeded)
    return ev.mapped_address


async def discover_nat_behaviour(
    server,
    *,
    local_addr: tuple | None = None,
    timeout: float | None = None,
    rto: float = 0.5,
    rc: int = 7,
    rm: int = 16,
    filtering_rc: int = 3,
    rng: Callable[[int], bytes] = os.urandom,
) -> NatBehaviour:
    """RFC 5780 mapping and filtering behaviour towards ``server`` (which must offer
    OTHER-ADDRESS for the answer to be anything but UNKNOWN)."""
    addr, _ = await _resolve(server)
    disc = NatBehaviourDiscovery(addr, rng=rng, rto=rto, rc=rc, rm=rm, filtering_rc=filtering_rc)

    def start(addr, sockname, now):
        # A wildcard bind has no single local address to compare the mapping with.
        if sockname[0] not in ("0.0.0.0", "::"):
            disc.local_address = normalise_address(sockname)
        disc.start(now)

    ev = await _run(disc, server, local_addr, start, lambda ev: isinstance(ev, NatBehaviourDiscovered), timeout)
    return ev.result
