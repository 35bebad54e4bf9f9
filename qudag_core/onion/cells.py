"""Fixed-size onion cells: link cells, relay cells, open command enums, per-state parsers.

Layout (docs/onion.md §1, after tor-spec §3 "Cell packet format" and §6.1 "Relay cells"):

    link cell  = circ_id (u32) | command (u8) | payload (1019 bytes)        = 1024 bytes
    relay cell = tag (16) | relay_cmd (u8) | stream_id (u16) | length (u16) | data (998)
                 (the relay payload is the whole 1019-byte link payload; everything
                 except the circ id and command is onion-encrypted, see relaycrypto.py)

The decision a reader asks about: **1024-byte cells**.  An X-Wing public key is 1216 bytes
and a ciphertext 1120, so no cell size that keeps padding overhead sane carries a whole
handshake; we fragment handshakes anyway (fragments.py) and pick the size for the data
path: 1024 bytes still fits one cell per 1200-byte datagram, halves per-cell overhead
(header + 16-byte tag + crypto call) relative to Tor's 514 bytes, and makes a CREATE three
cells instead of five.

Parsing is lazy: ``Cell`` keeps the raw bytes; the command is decoded on access and the
payload is a memoryview.  ``parse_cell(data, allowed)`` accepts only the commands allowed
in the caller's state; anything else is a declared ``CellError``.  Unknown codes are kept as
``Unrecognized(code)`` (open enum) so a newer peer's PADDING-like cells are not a crash.
"""
from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Union

from qudag_core.errors import RemoteProtocolError

__all__ = [
    "CELL_SIZE",
    "CIRC_ID_SIZE",
    "HEADER_SIZE",
    "PAYLOAD_SIZE",
    "TAG_SIZE",
    "RELAY_HEADER_SIZE",
    "RELAY_DATA_MAX",
    "CellCommand",
    "RelayCommand",
    "Unrecognized",
    "CellError",
    "MalformedCell",
    "UnexpectedCell",
    "Cell",
    "RelayMessage",
    "DestroyReason",
    "build_cell",
    "parse_cell",
    "build_relay_payload",
    "parse_relay_payload",
    "CellReader",
    "PaddingPool",
    "command_of",
    "relay_command_of",
]

CELL_SIZE = 1024
CIRC_ID_SIZE = 4
HEADER_SIZE = CIRC_ID_SIZE + 1
PAYLOAD_SIZE = CELL_SIZE - HEADER_SIZE  # 1019
TAG_SIZE = 16
RELAY_HEADER_SIZE = 1 + 2 + 2
RELAY_DATA_MAX = PAYLOAD_SIZE - TAG_SIZE - RELAY_HEADER_SIZE  # 998

_CIRC_CMD = struct.Struct(">IB")
_RELAY_HDR = struct.Struct(">BHH")


class CellCommand(enum.IntEnum):
    """Link-level cell commands (the byte after the circuit id)."""

    PADDING = 0
    CREATE = 1
    CREATED = 2
    RELAY = 3
    DESTROY = 4


class RelayCommand(enum.IntEnum):
    """Commands inside a decrypted relay payload."""

    DATA = 1
    BEGIN = 2
    END = 3
    CONNECTED = 4
    SENDME = 5
    EXTEND = 6
    EXTENDED = 7
    DROP = 8  # long-range cover: the recognising hop discards it


class DestroyReason(enum.IntEnum):
    NONE = 0
    PROTOCOL = 1
    INTERNAL = 2
    REQUESTED = 3
    HANDSHAKE_FAILED = 4
    CONNECT_FAILED = 5
    TOO_MANY_HOPS = 6
    INTEGRITY = 7  # relay crypto: a cell was not recognised where it had to be
    TIMEOUT = 8
    FINISHED = 9


@dataclass(frozen=True, slots=True)
class Unrecognized:
    """A command code this version does not know; kept rather than rejected."""

    code: int


AnyCommand = Union[CellCommand, Unrecognized]
AnyRelayCommand = Union[RelayCommand, Unrecognized]


class CellError(RemoteProtocolError):
    """A cell from the peer is malformed or not allowed here."""

    error_code = DestroyReason.PROTOCOL


class MalformedCell(CellError):
    """Wrong size, impossible length field, bad fragment header ..."""


class UnexpectedCell(CellError):
    """A well-formed cell whose command is not allowed in the current state."""


# code -> member tables: a dict lookup is cheaper than ``Enum(code)`` on the per-cell path.
_CELL_COMMANDS: dict = {int(c): c for c in CellCommand}
_RELAY_COMMANDS: dict = {int(c): c for c in RelayCommand}


def command_of(code: int) -> AnyCommand:
    cmd = _CELL_COMMANDS.get(code)
    return Unrecognized(code) if cmd is None else cmd


def relay_command_of(code: int) -> AnyRelayCommand:
    cmd = _RELAY_COMMANDS.get(code)
    return Unrecognized(code) if cmd is None else cmd


class Cell:
    """A received link cell: header decoded on access, payload a zero-copy view."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes | bytearray | memoryview) -> None:
        if len(raw) != CELL_SIZE:
            raise MalformedCell(f"cell must be {CELL_SIZE} bytes, got {len(raw)}")
        self.raw = raw

    @property
    def circ_id(self) -> int:
        return _CIRC_CMD.unpack_from(self.raw, 0)[0]

    @property
    def command(self) -> AnyCommand:
        return command_of(self.raw[CIRC_ID_SIZE])

    @property
    def payload(self) -> memoryview:
        return memoryview(self.raw)[HEADER_SIZE:]

    def __repr__(self) -> str:  # payload may be secret-bearing plaintext: never shown
        return f"Cell(circ_id={self.circ_id}, command={self.command!r})"


def build_cell(circ_id: int, command: CellCommand | int, payload: bytes = b"", *, pad=None) -> bytearray:
    """Return a full 1024-byte cell.  ``pad(n)`` fills the tail (random padding on the
    wire, so padding is not a plaintext crib); zeros if omitted."""
    if not 0 <= circ_id <= 0xFFFFFFFF:
        raise ValueError("circ_id out of range")
    if len(payload) > PAYLOAD_SIZE:
        raise ValueError(f"payload {len(payload)} > {PAYLOAD_SIZE}")
    out = bytearray(CELL_SIZE)
    _CIRC_CMD.pack_into(out, 0, circ_id, int(command))
    out[HEADER_SIZE : HEADER_SIZE + len(payload)] = payload
    if pad is not None and len(payload) < PAYLOAD_SIZE:
        out[HEADER_SIZE + len(payload) :] = pad(PAYLOAD_SIZE - len(payload))
    return out


def parse_cell(data: bytes | bytearray | memoryview, allowed: frozenset) -> Cell:
    """Restricted parser: the cell, if its command is in ``allowed``; else ``UnexpectedCell``.

    An ``Unrecognized`` command passes only if ``Unrecognized`` itself is in ``allowed``
    (a state that tolerates unknown link commands says so explicitly)."""
    cell = Cell(data)
    cmd = cell.command
    if isinstance(cmd, Unrecognized):
        if Unrecognized not in allowed:
            raise UnexpectedCell(f"unknown cell command {cmd.code} not allowed here")
    elif cmd not in allowed:
        raise UnexpectedCell(f"cell command {cmd.name} not allowed here")
    return cell


@dataclass(frozen=True, slots=True)
class RelayMessage:
    """A decrypted, recognised relay cell's header and data."""

    command: AnyRelayCommand
    """Relay command (open enum)."""
    stream_id: int
    """0 for circuit-level messages (EXTEND, SENDME for the circuit, DROP)."""
    data: bytes
    """The ``length`` meaningful bytes; the rest of the cell is padding."""


def build_relay_payload(command: RelayCommand | int, stream_id: int, data: bytes, *, pad=None) -> bytearray:
    """The 1019-byte relay payload with a zero tag slot (the crypto layer fills it)."""
    if len(data) > RELAY_DATA_MAX:
        raise ValueError(f"relay data {len(data)} > {RELAY_DATA_MAX}")
    if not 0 <= stream_id <= 0xFFFF:
        raise ValueError("stream_id out of range")
    out = bytearray(PAYLOAD_SIZE)
    _RELAY_HDR.pack_into(out, TAG_SIZE, int(command), stream_id, len(data))
    start = TAG_SIZE + RELAY_HEADER_SIZE
    out[start : start + len(data)] = data
    if pad is not None and len(data) < RELAY_DATA_MAX:
        out[start + len(data) :] = pad(RELAY_DATA_MAX - len(data))
    return out


def parse_relay_payload(payload: bytes | bytearray | memoryview, allowed: frozenset | None = None) -> RelayMessage:
    """Decode a recognised relay payload; ``allowed`` restricts the relay commands."""
    if len(payload) != PAYLOAD_SIZE:
        raise MalformedCell(f"relay payload must be {PAYLOAD_SIZE} bytes")
    code, stream_id, length = _RELAY_HDR.unpack_from(payload, TAG_SIZE)
    if length > RELAY_DATA_MAX:
        raise MalformedCell(f"relay length {length} > {RELAY_DATA_MAX}")
    cmd = relay_command_of(code)
    if allowed is not None:
        ok = (Unrecognized in allowed) if isinstance(cmd, Unrecognized) else (cmd in allowed)
        if not ok:
            raise UnexpectedCell(f"relay command {cmd!r} not allowed here")
    start = TAG_SIZE + RELAY_HEADER_SIZE
    return RelayMessage(command=cmd, stream_id=stream_id, data=bytes(payload[start : start + length]))


class CellReader:
    """Split a link byte stream into cells.  ``next_cell()`` returns ``None`` when it needs
    more bytes.  At most ``max_buffered`` bytes wait unread; more is a ``MalformedCell``
    (a peer flooding faster than we drain)."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_buffered: int = 64 * CELL_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_buffered

    def feed(self, data: bytes) -> None:
        if len(self._buf) + len(data) > self._max:
            raise MalformedCell("link receive buffer cap exceeded")
        self._buf += data

    def next_cell(self) -> bytes | None:
        if len(self._buf) < CELL_SIZE:
            return None
        out = bytes(self._buf[:CELL_SIZE])
        del self._buf[:CELL_SIZE]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)


class PaddingPool:
    """``pool(n) -> n random bytes`` for the padding of short relay cells, drawn from
    ``rng`` a block at a time: one OS call per many cells instead of one per cell (a
    16 KiB stream write ends in a short cell; every SENDME is one).  Padding only keeps
    the unused tail of a cell from being a known plaintext; each byte is handed out
    once, so buffering it gives nothing away that the cell would not carry anyway."""

    __slots__ = ("_rng", "_block", "_buf", "_pos")

    def __init__(self, rng, block: int = 16384) -> None:
        self._rng = rng
        self._block = block
        self._buf = b""
        self._pos = 0

    def __call__(self, n: int) -> bytes:
        pos = self._pos
        if n > len(self._buf) - pos:
            self._buf = self._rng(max(self._block, n))
            pos = 0
        self._pos = pos + n
        return self._buf[pos : pos + n]

    def __repr__(self) -> str:
        return "PaddingPool(<random>)"
