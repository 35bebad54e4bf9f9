"""Relay with authenticated reservations (docs/nat.md §Relays), after libp2p circuit relay v2.

Every message here travels as one message of an authenticated qudag link (handshake then
secure channel), so the relay knows the proven NodeId of whoever sent it.  A peer behind a
NAT RESERVEs a slot; another peer asks the relay to CONNECT it to a *NodeId* (never an
address) that holds a reservation; the relay tells the target (INCOMING), which ACCEPTs;
DATA then flows both ways on the circuit.  The payload of DATA is the byte stream of the
two peers' own end-to-end link (its handshake, then AEAD frames): the relay forwards
ciphertext it cannot read, and counts it against the target's reservation.

Design decision a reader would ask about: circuits are multiplexed over the peers'
existing links to the relay (DATA carries a circuit id) instead of opening a fresh link per
circuit.  That way the target never has to dial anyone (it may not be able to), and a
relay holds exactly one link per peer.  The relay is not a reflector: it forwards only
between two authenticated links, only to a target with a live reservation, and only
within the reservation's byte and time limits.

Wire format (all integers big-endian)::

    RESERVE     0x01
    RESERVED    0x02 ttl:u32 byte_limit:u64 addr
    CONNECT     0x03 target:20
    CONNECTED   0x04 circuit:u32 target:20
    INCOMING    0x05 circuit:u32 source:20
    ACCEPT      0x06 circuit:u32
    DATA        0x07 circuit:u32 payload
    CLOSE       0x08 circuit:u32 code:u8
    REFUSED     0x09 code:u8 target:20      (RESERVE refused: target = 20 zero bytes)
    addr        = family:u8 (4|6) ip:4|16 port:u16

Unknown message types are kept as ``Unrecognized`` and ignored (STYLE.md §6).
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from qudag_core.errors import LocalProtocolError, RemoteProtocolError
from qudag_core.nat.traversal_events import (
    CircuitClosed, CircuitConnected, CircuitData, CircuitEnded, CircuitOpened, ConnectRefused,
    IncomingCircuit, RelayRefusal, ReservationGranted, ReservationRefused, Reserved,
)

__all__ = [
    "RelayMessageError", "RelayLimits", "RelayServer", "RelayClient",
    "Reserve", "ReservedMsg", "Connect", "Connected", "Incoming", "Accept", "Data", "Close",
    "Refused", "Unrecognized", "encode", "decode", "MAX_DATA",
]

NODE_ID_SIZE = 20
#: Largest DATA payload; keeps a DATA message inside one default channel frame (64 KiB).
MAX_DATA = 32 * 1024
_NO_TARGET = bytes(NODE_ID_SIZE)


class RelayMessageError(RemoteProtocolError):
    """A relay control message is malformed."""

    error_code = RelayRefusal.MALFORMED


# --------------------------------------------------------------------------- messages
@dataclass(frozen=True, slots=True, kw_only=True)
class Reserve:
    """Ask for (or renew) a reservation."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ReservedMsg:
    ttl: int
    byte_limit: int
    address: tuple


@dataclass(frozen=True, slots=True, kw_only=True)
class Connect:
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Connected:
    circuit: int
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Incoming:
    circuit: int
    source: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Accept:
    circuit: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Data:
    circuit: int
    payload: bytes = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    circuit: int
    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Refused:
    code: int
    target: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Unrecognized:
    type: int
    body: bytes = field(repr=False)


def _encode_addr(addr: tuple) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    port = addr[1]
    if not isinstance(port, int) or not 0 <= port < 65536:
        raise LocalProtocolError(f"bad port {port!r}")
    return bytes((ip.version,)) + ip.packed + struct.pack(">H", port)


def _decode_addr(body: bytes, pos: int) -> tuple:
    if pos >= len(body):
        raise RelayMessageError("address truncated")
    fam = body[pos]
    size = 4 if fam == 4 else 16 if fam == 6 else 0
    if not size:
        raise RelayMessageError(f"unknown address family {fam}")
    end = pos + 1 + size + 2
    if end != len(body):
        raise RelayMessageError("address length mismatch")
    ip = ipaddress.ip_address(bytes(body[pos + 1:pos + 1 + size]))
    (port,) = struct.unpack_from(">H", body, pos + 1 + size)
    return (str(ip), port)


def _check_id(value: bytes) -> bytes:
    if len(value) != NODE_ID_SIZE:
        raise LocalProtocolError("node ids are 20 bytes")
    return bytes(value)


def encode(msg: object) -> bytes:
    """Encode one relay message."""
    if isinstance(msg, Reserve):
        return b"\x01"
    if isinstance(msg, ReservedMsg):
        return b"\x02" + struct.pack(">IQ", msg.ttl, msg.byte_limit) + _encode_addr(msg.address)
    if isinstance(msg, Connect):
        return b"\x03" + _check_id(msg.target)
    if isinstance(msg, Connected):
        return b"\x04" + struct.pack(">I", msg.circuit) + _check_id(msg.target)
    if isinstance(msg, Incoming):
        return b"\x05" + struct.pack(">I", msg.circuit) + _check_id(msg.source)
    if isinstance(msg, Accept):
        return b"\x06" + struct.pack(">I", msg.circuit)
    if isinstance(msg, Data):
        if len(msg.payload) > MAX_DATA:
            raise LocalProtocolError("DATA payload too large")
        return b"\x07" + struct.pack(">I", msg.circuit) + bytes(msg.payload)
    if isinstance(msg, Close):
        return b"\x08" + struct.pack(">IB", msg.circuit, msg.code)
    if isinstance(msg, Refused):
        return b"\x09" + struct.pack(">B", msg.code) + _check_id(msg.target)
    if isinstance(msg, Unrecognized):
        return bytes((msg.type,)) + msg.body
    raise LocalProtocolError(f"not a relay message: {type(msg).__name__}")


_FIXED = {0x01: 0, 0x03: 20, 0x04: 24, 0x05: 24, 0x06: 4, 0x08: 5, 0x09: 21}


def decode(data: bytes) -> object:
    """Decode one relay message; ``RelayMessageError`` if malformed (never anything else)."""
    data = bytes(data)
    if not data:
        raise RelayMessageError("empty relay message")
    kind, body = data[0], data[1:]
    if kind in _FIXED and len(body) != _FIXED[kind]:
        raise RelayMessageError(f"relay message 0x{kind:02x}: bad length {len(body)}")
    if kind == 0x01:
        return Reserve()
    if kind == 0x02:
        if len(body) < 12:
            raise RelayMessageError("RESERVED truncated")
        ttl, limit = struct.unpack_from(">IQ", body, 0)
        return ReservedMsg(ttl=ttl, byte_limit=limit, address=_decode_addr(body, 12))
    if kind == 0x03:
        return Connect(target=body)
    if kind == 0x04:
        return Connected(circuit=int.from_bytes(body[:4], "big"), target=body[4:])
    if kind == 0x05:
        return Incoming(circuit=int.from_bytes(body[:4], "big"), source=body[4:])
    if kind == 0x06:
        return Accept(circuit=int.from_bytes(body, "big"))
    if kind == 0x07:
        if len(body) < 4:
            raise RelayMessageError("DATA truncated")
        if len(body) - 4 > MAX_DATA:
            raise RelayMessageError("DATA payload too large")
        return Data(circuit=int.from_bytes(body[:4], "big"), payload=body[4:])
    if kind == 0x08:
        return Close(circuit=int.from_bytes(body[:4], "big"), code=body[4])
    if kind == 0x09:
        return Refused(code=body[0], target=body[1:])
    return Unrecognized(type=kind, body=body)


# --------------------------------------------------------------------------- server
@dataclass(frozen=True, slots=True, kw_only=True)
class RelayLimits:
    """Per-relay resource limits."""

    reservation_ttl: int = 3600
    """Seconds a reservation lasts (renewed by another RESERVE)."""
    reservation_bytes: int = 1 << 27
    """Bytes forwarded to and from one reserving peer per reservation (128 MiB)."""
    max_reservations: int = 128
    max_circuits_per_peer: int = 16
    pending_timeout: float = 10.0
    """Seconds a target has to ACCEPT an INCOMING circuit."""


class _Reservation:
    __slots__ = ("expires", "remaining")

    def __init__(self, expires: float, remaining: int) -> None:
        self.expires = expires
        self.remaining = remaining


class _Circuit:
    __slots__ = ("cid", "source", "target", "open", "deadline", "relayed")

    def __init__(self, cid: int, source: bytes, target: bytes, deadline: float) -> None:
        self.cid = cid
        self.source = source
        self.target = target
        self.open = False
        self.deadline = deadline
        self.relayed = 0


class RelayServer:
    """The relay's sans-IO core: reservations, circuits, quotas.

    Driving API: ``peer_connected(node_id, observed_address)`` when a link authenticates,
    ``peer_disconnected(node_id, now)`` when it ends, ``receive_message(node_id, data, now)``
    for each link message, then ``messages_to_send()`` -> ``[(node_id, bytes)]``;
    ``get_timer()`` / ``handle_timer(now)`` expire reservations and unanswered circuits.
    The node ids are the ones the link handshake proved, never anything a message claims.
    """

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self._peers: dict[bytes, tuple] = {}
        self._reservations: dict[bytes, _Reservation] = {}
        self._circuits: dict[int, _Circuit] = {}
        self._by_peer: dict[bytes, set] = {}
        self._next_cid = 1
        self._out: list = []

    # -- links ---------------------------------------------------------------
    def peer_connected(self, node_id: bytes, observed_address: tuple) -> None:
        self._peers[bytes(node_id)] = tuple(observed_address)

    def peer_disconnected(self, node_id: bytes, now: float) -> list:
        node_id = bytes(node_id)
        self._peers.pop(node_id, None)
        self._reservations.pop(node_id, None)
        events: list = []
        for cid in list(self._by_peer.get(node_id, ())):
            events += self._end(cid, RelayRefusal.PEER_GONE)
        return events

    def has_reservation(self, node_id: bytes, now: float) -> bool:
        r = self._reservations.get(bytes(node_id))
        return r is not None and r.expires > now

    # -- messages ------------------------------------------------------------
    def receive_message(self, node_id: bytes, data: bytes, now: float) -> list:
        node_id = bytes(node_id)
        if node_id not in self._peers:
            return []  # no authenticated link: nothing to answer on
        try:
            msg = decode(data)
        except RelayMessageError:
            self._send(node_id, Refused(code=RelayRefusal.MALFORMED, target=_NO_TARGET))
            return []
        if isinstance(msg, Reserve):
            return self._on_reserve(node_id, now)
        if isinstance(msg, Connect):
            return self._on_connect(node_id, msg.target, now)
        if isinstance(msg, Accept):
            return self._on_accept(node_id, msg.circuit)
        if isinstance(msg, Data):
            return self._on_data(node_id, msg, now)
        if isinstance(msg, Close):
            c = self._circuits.get(msg.circuit)
            if c is not None and node_id in (c.source, c.target):
                return self._end(msg.circuit, RelayRefusal.NORMAL, skip=node_id)
            return []
        return []  # relay->client messages or unrecognised: ignored

    def _on_reserve(self, node_id: bytes, now: float) -> list:
        lim = self.limits
        live = sum(1 for r in self._reservations.values() if r.expires > now)
        existing = self._reservations.get(node_id)
        if existing is None and live >= lim.max_reservations:
            self._send(node_id, Refused(code=RelayRefusal.RESOURCE_LIMIT, target=_NO_TARGET))
            return []
        expires = now + lim.reservation_ttl
        # Renewal extends the time but does not refill the byte quota.
        remaining = existing.remaining if existing is not None and existing.expires > now else lim.reservation_bytes
        self._reservations[node_id] = _Reservation(expires, remaining)
        self._send(node_id, ReservedMsg(ttl=lim.reservation_ttl, byte_limit=remaining, address=self._peers[node_id]))
        return [ReservationGranted(peer=node_id, expires=expires)]

    def _on_connect(self, source: bytes, target: bytes, now: float) -> list:
        if target == source or target not in self._peers or not self.has_reservation(target, now):
            self._send(source, Refused(code=RelayRefusal.NO_RESERVATION, target=target))
            return []
        lim = self.limits
        if (len(self._by_peer.get(source, ())) >= lim.max_circuits_per_peer
                or len(self._by_peer.get(target, ())) >= lim.max_circuits_per_peer):
            self._send(source, Refused(code=RelayRefusal.RESOURCE_LIMIT, target=target))
            return []
        cid = self._next_cid
        self._next_cid = (self._next_cid % 0xFFFFFFFF) + 1
        c = _Circuit(cid, source, target, now + lim.pending_timeout)
        self._circuits[cid] = c
        self._by_peer.setdefault(source, set()).add(cid)
        self._by_peer.setdefault(target, set()).add(cid)
        self._send(target, Incoming(circuit=cid, source=source))
        return []

    def _on_accept(self, node_id: bytes, cid: int) -> list:
        c = self._circuits.get(cid)
        if c is None or c.open or c.target != node_id:
            return []
        c.open = True
        self._send(c.source, Connected(circuit=cid, target=c.target))
        return [CircuitOpened(circuit=cid, source=c.source, target=c.target)]

    def _on_data(self, node_id: bytes, msg: Data, now: float) -> list:
        c = self._circuits.get(msg.circuit)
        if c is None or not c.open or node_id not in (c.source, c.target):
            self._send(node_id, Close(circuit=msg.circuit, code=RelayRefusal.PERMISSION_DENIED))
            return []
        r = self._reservations.get(c.target)
        if r is None or r.expires <= now:
            return self._end(c.cid, RelayRefusal.EXPIRED)
        n = len(msg.payload)
        if n > r.remaining:
            r.remaining = 0
            return self._end(c.cid, RelayRefusal.QUOTA_EXCEEDED)
        r.remaining -= n
        c.relayed += n
        other = c.target if node_id == c.source else c.source
        self._send(other, msg)
        return []

    def _end(self, cid: int, code: int, skip: bytes | None = None) -> list:
        c = self._circuits.pop(cid, None)
        if c is None:
            return []
        for peer in (c.source, c.target):
            s = self._by_peer.get(peer)
            if s is not None:
                s.discard(cid)
                if not s:
                    del self._by_peer[peer]
            if peer != skip and peer in self._peers:
                self._send(peer, Close(circuit=cid, code=code))
        return [CircuitEnded(circuit=cid, code=code, relayed=c.relayed)]

    def _send(self, node_id: bytes, msg: object) -> None:
        self._out.append((node_id, encode(msg)))

    def messages_to_send(self) -> list:
        out, self._out = self._out, []
        return out

    # -- timers --------------------------------------------------------------
    def get_timer(self) -> float | None:
        times = [r.expires for r in self._reservations.values()]
        times += [c.deadline for c in self._circuits.values() if not c.open]
        return min(times) if times else None

    def handle_timer(self, now: float) -> list:
        events: list = []
        for peer, r in list(self._reservations.items()):
            if r.expires <= now:
                del self._reservations[peer]
                for cid in list(self._by_peer.get(peer, ())):
                    c = self._circuits.get(cid)
                    if c is not None and c.target == peer:
                        events += self._end(cid, RelayRefusal.EXPIRED)
        for cid, c in list(self._circuits.items()):
            if not c.open and c.deadline <= now:
                if c.source in self._peers:
                    self._send(c.source, Refused(code=RelayRefusal.PEER_GONE, target=c.target))
                events += self._end(cid, RelayRefusal.PEER_GONE, skip=c.source)
        return events


# --------------------------------------------------------------------------- client
class RelayClient:
    """A peer's side of its link to a relay (sans-IO).

    ``reserve()``, ``connect(target)``, ``accept(circuit)``, ``send_data(circuit, data)``,
    ``close_circuit(circuit)`` queue messages; ``receive_message(data)`` returns events;
    ``messages_to_send()`` drains what to send on the link.  Messages that do not fit the
    client's state (DATA on an unknown circuit, CONNECTED nobody asked for) are dropped.
    """

    def __init__(self) -> None:
        self._out: list = []
        self._pending_connects: dict[bytes, int] = {}
        self._circuits: set = set()
        self._incoming: set = set()
        self.reservation: Reserved | None = None

    def reserve(self) -> None:
        self._out.append(encode(Reserve()))

    def connect(self, target: bytes) -> None:
        target = _check_id(target)
        self._pending_connects[target] = self._pending_connects.get(target, 0) + 1
        self._out.append(encode(Connect(target=target)))

    def accept(self, circuit: int) -> None:
        if circuit not in self._incoming:
            raise LocalProtocolError(f"no incoming circuit {circuit}")
        self._incoming.discard(circuit)
        self._circuits.add(circuit)
        self._out.append(encode(Accept(circuit=circuit)))

    def send_data(self, circuit: int, data: bytes) -> None:
        if circuit not in self._circuits:
            raise LocalProtocolError(f"circuit {circuit} is not open")
        data = bytes(data)
        for i in range(0, len(data), MAX_DATA):
            self._out.append(encode(Data(circuit=circuit, payload=data[i:i + MAX_DATA])))

    def close_circuit(self, circuit: int) -> None:
        if circuit in self._circuits or circuit in self._incoming:
            self._circuits.discard(circuit)
            self._incoming.discard(circuit)
            self._out.append(encode(Close(circuit=circuit, code=RelayRefusal.NORMAL)))

    def is_open(self, circuit: int) -> bool:
        return circuit in self._circuits

    def receive_message(self, data: bytes) -> list:
        try:
            msg = decode(data)
        except RelayMessageError:
            return []
        if isinstance(msg, ReservedMsg):
            self.reservation = Reserved(ttl=msg.ttl, byte_limit=msg.byte_limit, observed_address=msg.address)
            return [self.reservation]
        if isinstance(msg, Refused):
            if msg.target == _NO_TARGET:
                return [ReservationRefused(code=msg.code)]
            if self._take_pending(msg.target):
                return [ConnectRefused(target=msg.target, code=msg.code)]
            return []
        if isinstance(msg, Connected):
            if not self._take_pending(msg.target) or msg.circuit in self._circuits:
                return []
            self._circuits.add(msg.circuit)
            return [CircuitConnected(circuit=msg.circuit, target=msg.target)]
        if isinstance(msg, Incoming):
            if msg.circuit in self._circuits or msg.circuit in self._incoming:
                return []
            self._incoming.add(msg.circuit)
            return [IncomingCircuit(circuit=msg.circuit, source=msg.source)]
        if isinstance(msg, Data):
            if msg.circuit not in self._circuits:
                return []
            return [CircuitData(circuit=msg.circuit, data=msg.payload)]
        if isinstance(msg, Close):
            if msg.circuit in self._circuits or msg.circuit in self._incoming:
                self._circuits.discard(msg.circuit)
                self._incoming.discard(msg.circuit)
                return [CircuitClosed(circuit=msg.circuit, code=msg.code)]
        return []

    def _take_pending(self, target: bytes) -> bool:
        n = self._pending_connects.get(target, 0)
        if not n:
            return False
        if n == 1:
            del self._pending_connects[target]
        else:
            self._pending_connects[target] = n - 1
        return True

    def messages_to_send(self) -> list:
        out, self._out = self._out, []
        return out
