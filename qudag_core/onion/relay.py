"""Relay side of circuits: a sans-IO table of circuits across links (docs/onion.md §3).

Driving API: ``receive_cell(link_id, data, now) -> list[Event]``, ``cells_to_send() ->
list[(link_id, bytes)]``, and their batch forms ``receive_cells(link_id, buf, now)`` (any
number of whole cells, e.g. one link message; runs of DATA for one stream come out as one
``ExitDataReceived``) and ``batches_to_send() -> list[(link_id, bytes)]`` (each item n x
1024 bytes of cells for one link, in order), ``link_ready / link_failed / link_closed``,
``get_timer()``, ``handle_timer(now)``.  Links are opaque ids chosen by the adapter.

Each circuit has a *prev* side (toward the client) and, once extended, a *next* side.
Per side and state only some link commands are parsed at all (``ALLOWED``); anything else,
a failed handshake, or a forward cell that no layer recognises and that cannot be passed
on, tears the circuit down: DESTROY goes out on every side it did not come from, so a
DESTROY anywhere travels the whole path.

The decision a reader asks about: how a relay knows it would be the 9th hop.  Every CREATE
carries a one-byte hop position, set to 1 by the client and to ``own + 1`` by the relay that
extends; a relay at position ``max_hops`` refuses EXTEND and destroys the circuit.  Only a
relay on the path could lie about it, and such a relay could extend it anyway.

Every cell fed in is relayed (``cells_relayed``), consumed here (handshake fragments,
DESTROY, PADDING, recognised relay messages), or discarded; discards are counted per
reason in plain integer attributes (``discarded_*``, read together as
``cells_discarded``), incremented on the discard paths only, so the relaying path pays
nothing for them.
"""
from __future__ import annotations

import heapq
import struct
import sys
from array import array

from qudag_core.crypto import XWingPrivateKey
from qudag_core.onion import handshake as hs
from qudag_core.onion.cells import (
    CIRC_ID_SIZE,
    HEADER_SIZE,
    PAYLOAD_SIZE,
    RELAY_DATA_MAX,
    RELAY_HEADER_SIZE,
    TAG_SIZE,
    Cell,
    CellCommand,
    CellError,
    DestroyReason,
    PaddingPool,
    RelayCommand,
    Unrecognized,
    build_cell,
    build_relay_payload,
    parse_cell,
    parse_relay_payload,
)
from qudag_core.onion.events import ExitDataReceived, ExitMessageReceived, LinkNeeded, RelayCircuitClosed
from qudag_core.onion.fragments import Reassembler, fragment
from qudag_core.onion.relaycrypto import BACKWARD, FORWARD, new_layer

__all__ = ["DISCARD_REASONS", "RelayState", "OnionRelay"]

CELL = 1024
_RELAY = int(CellCommand.RELAY)
# where a relay cell's data starts: after circ id, command, tag and relay header
_DATA_AT = HEADER_SIZE + TAG_SIZE + RELAY_HEADER_SIZE
_FAST_EXIT = {int(c): c for c in (RelayCommand.DATA, RelayCommand.SENDME, RelayCommand.END, RelayCommand.BEGIN)}
_DATA = int(RelayCommand.DATA)
# per cell of a run: relay command, stream id and length (skipping circ id, command, tag)
_RELAY_HDR_FMT = "%dxBHH%dx" % (HEADER_SIZE + TAG_SIZE, CELL - _DATA_AT)
# per cell of a run: the data of a full DATA cell
_FULL_DATA_FMT = "%dx%ds" % (_DATA_AT, RELAY_DATA_MAX)


#: Why the relay core discarded a received cell (the keys of ``OnionRelay.cells_discarded``):
#: ``unknown_circuit`` - not a CREATE, on a circuit id the link has no circuit for (or a
#: CREATE for circuit id 0); ``after_destroy`` - later cells of one link message's run for
#: a circuit that an earlier cell of the run destroyed; ``malformed`` - not a whole cell;
#: ``rejected`` - a cell the circuit's state or its content does not allow (the circuit is
#: destroyed because of it); ``circuit_limit`` - a CREATE fragment refused because the
#: relay is at its circuit or half-open limit.
DISCARD_REASONS = ("unknown_circuit", "after_destroy", "malformed", "rejected", "circuit_limit")


class RelayState:
    EXPECT_CREATE = "EXPECT_CREATE"  # CREATE fragments arriving
    OPEN = "OPEN"  # we are the last hop
    AWAIT_LINK = "AWAIT_LINK"  # EXTEND received, adapter opening a link
    EXPECT_CREATED = "EXPECT_CREATED"  # CREATE sent to the next relay
    EXTENDED = "EXTENDED"  # forwarding to a next hop


R = RelayState
_P, _N = "prev", "next"
ALLOWED: dict[tuple[str, str], frozenset] = {
    (R.EXPECT_CREATE, _P): frozenset({CellCommand.CREATE, CellCommand.DESTROY}),
    (R.OPEN, _P): frozenset({CellCommand.RELAY, CellCommand.DESTROY, CellCommand.PADDING}),
    (R.AWAIT_LINK, _P): frozenset({CellCommand.RELAY, CellCommand.DESTROY, CellCommand.PADDING}),
    (R.EXPECT_CREATED, _P): frozenset({CellCommand.RELAY, CellCommand.DESTROY, CellCommand.PADDING}),
    (R.EXTENDED, _P): frozenset({CellCommand.RELAY, CellCommand.DESTROY, CellCommand.PADDING}),
    (R.EXPECT_CREATED, _N): frozenset({CellCommand.CREATED, CellCommand.DESTROY}),
    (R.EXTENDED, _N): frozenset({CellCommand.RELAY, CellCommand.DESTROY, CellCommand.PADDING}),
}
_EXIT_CMDS = frozenset(
    {RelayCommand.BEGIN, RelayCommand.DATA, RelayCommand.END, RelayCommand.SENDME, RelayCommand.DROP, Unrecognized}
)
ALLOWED_RELAY: dict[str, frozenset] = {
    R.OPEN: _EXIT_CMDS | {RelayCommand.EXTEND},
    R.AWAIT_LINK: _EXIT_CMDS,
    R.EXPECT_CREATED: _EXIT_CMDS,
    R.EXTENDED: _EXIT_CMDS,
}


_STRUCTS: dict = {}


def _cell_struct(per_cell: str, n: int) -> struct.Struct:
    """A big-endian Struct repeating ``per_cell`` (1024 bytes' worth) ``n`` times: one C
    call reads a header field of every cell in a batch (never used to write: ``x``
    would zero the bytes it skips)."""
    key = (per_cell, n)
    st = _STRUCTS.get(key)
    if st is None:
        st = struct.Struct(">" + per_cell * n)
        if len(_STRUCTS) < 1024:
            _STRUCTS[key] = st
    return st


def _one_relay_circuit(mv: memoryview, n: int) -> bool:
    """Whether all ``n`` cells in ``mv`` are RELAY cells with the first cell's circuit id:
    two strided C-level comparisons (circ ids as uint32, command bytes)."""
    ids = mv.cast("I")[:: CELL // 4]
    return ids == array("I", [ids[0]]) * n and mv[CIRC_ID_SIZE::CELL] == _RELAY_CMDS[:n]


_RELAY_CMDS = bytes([_RELAY]) * 4096


def _data_run_end(flags: bytes, hdr: tuple, k: int, sid: int) -> int:
    """End (exclusive) of the run of recognised DATA cells of stream ``sid`` that starts at
    cell ``k`` (whose header is already known to qualify).  A run that is the whole batch,
    the usual case, is confirmed with a few C-level counts instead of a per-cell loop."""
    n = len(flags)
    if (
        k == 0
        and b"\x00" not in flags
        and hdr[0::3].count(_DATA) == n
        and hdr[1::3].count(sid) == n
        and max(hdr[2::3]) <= RELAY_DATA_MAX
    ):
        return n
    m = k + 1
    while m < n and flags[m] and hdr[3 * m] == _DATA and hdr[3 * m + 1] == sid and hdr[3 * m + 2] <= RELAY_DATA_MAX:
        m += 1
    return m


def _gather(run: bytearray, mv: memoryview, k: int, m: int, sizes: tuple) -> bytes:
    """The data of cells ``k..m-1`` (lengths ``sizes``) as one ``bytes``."""
    if sizes.count(RELAY_DATA_MAX) == m - k:  # all full: one struct call slices them all
        return b"".join(_cell_struct(_FULL_DATA_FMT, m - k).unpack_from(run, k * CELL))
    return b"".join([mv[b + _DATA_AT : b + _DATA_AT + ln] for b, ln in zip(range(k * CELL, m * CELL, CELL), sizes)])


class _Circuit:
    __slots__ = ("prev", "next", "state", "fwd", "bwd", "position", "reasm", "extend_msg", "deadline", "next_node")

    def __init__(self, prev, now: float, timeout: float) -> None:
        self.prev = prev
        self.next = None
        self.state = R.EXPECT_CREATE
        self.fwd = None
        self.bwd = None
        self.position = 0
        self.reasm: Reassembler | None = Reassembler(timeout=timeout)
        self.extend_msg: bytes | None = None
        self.deadline: float | None = now + timeout
        self.next_node: bytes | None = None


class OnionRelay:
    """All circuits through one relay."""

    def __init__(
        self,
        node_id: bytes,
        static_key: XWingPrivateKey,
        *,
        rng,
        max_hops: int = 8,
        max_circuits: int = 10_000,
        max_half_open: int = 256,
        handshake_timeout: float = 30.0,
        pure_crypto: bool = False,
    ) -> None:
        if len(node_id) != hs.NODE_ID_SIZE:
            raise ValueError("node id must be 20 bytes")
        self.node_id = bytes(node_id)
        self._key = static_key
        self._rng = rng
        self._pad = PaddingPool(rng)  # padding of the relay cells this relay originates
        self._max_hops = max_hops
        self._max_circuits = max_circuits
        self._max_half_open = max_half_open
        self._timeout = handshake_timeout
        self._pure = pure_crypto
        self._sides: dict[tuple, tuple[_Circuit, str]] = {}
        self._circuits: dict[tuple, _Circuit] = {}  # by prev key
        self._waiting: dict[bytes, list[_Circuit]] = {}
        self._out: list[tuple[object, bytes]] = []
        self._half_open = 0
        self._timers: list = []  # heap of (deadline, seq, circuit); stale entries skipped
        self._timer_seq = 0
        #: Counters for metrics: cells passed on to another link (either direction), circuits
        #: whose CREATE completed here, that died before it did, and CREATEs refused (limits).
        self.cells_relayed = self.circuits_opened = self.circuits_failed = self.circuits_refused = 0
        #: Cells discarded, one count per reason of ``DISCARD_REASONS`` (see there).
        self.discarded_unknown_circuit = self.discarded_after_destroy = self.discarded_malformed = 0
        self.discarded_rejected = self.discarded_circuit_limit = 0

    def __repr__(self) -> str:
        return f"OnionRelay(node_id={self.node_id.hex()}, circuits={len(self._circuits)})"

    @property
    def circuit_count(self) -> int:
        return len(self._circuits)

    @property
    def cells_discarded(self) -> dict[str, int]:
        """The discard counts by reason (a snapshot, keys in ``DISCARD_REASONS`` order)."""
        return {
            "unknown_circuit": self.discarded_unknown_circuit,
            "after_destroy": self.discarded_after_destroy,
            "malformed": self.discarded_malformed,
            "rejected": self.discarded_rejected,
            "circuit_limit": self.discarded_circuit_limit,
        }

    def cells_to_send(self) -> list[tuple[object, bytes]]:
        """Queued cells, one 1024-byte cell per item, in order."""
        out, self._out = self._out, []
        cells: list[tuple[object, bytes]] = []
        for link_id, data in out:
            if len(data) == CELL:
                cells.append((link_id, bytes(data)))
            else:
                for i in range(0, len(data), CELL):
                    cells.append((link_id, bytes(data[i : i + CELL])))
        return cells

    def batches_to_send(self) -> list[tuple[object, bytes]]:
        """Queued output as ``(link_id, n x 1024 bytes)`` items, in order: runs of relay
        cells that arrived together leave together (one item), ready for one link message."""
        out, self._out = self._out, []
        return out

    def _send(self, side, command, payload: bytes = b"") -> None:
        self._out.append((side[0], bytes(build_cell(side[1], command, payload, pad=self._rng))))

    # -- input -----------------------------------------------------------------------------

    def receive_cell(self, link_id, data: bytes, now: float) -> list:
        try:
            cell = Cell(data)
        except CellError:
            self.discarded_malformed += 1
            return []  # the link framer delivers whole cells; anything else is dropped
        key = (link_id, cell.circ_id)
        entry = self._sides.get(key)
        if entry is None:
            return self._new_circuit(key, cell, now)
        circ, side = entry
        try:
            cell = parse_cell(data, ALLOWED[(circ.state, side)])
            if cell.command == CellCommand.DESTROY:
                return self._destroy(circ, cell.payload[0], came_from=side)
            if cell.command == CellCommand.PADDING:
                return []
            if side == _P:
                return self._from_prev(circ, cell, data, now)
            return self._from_next(circ, cell, data, now)
        except CellError as e:
            return self._reject(circ, e.error_code or DestroyReason.PROTOCOL)

    def receive_cells(self, link_id, buf, now: float) -> list:
        """Batch form of ``receive_cell`` for ``buf`` holding n whole cells (one link
        message).  Consecutive RELAY cells of one circuit side are peeled with ONE layer
        call and forwarded as one output item; every other cell goes through
        ``receive_cell``.  Same output bytes and the same events in the same order as
        calling ``receive_cell`` cell by cell, except that consecutive recognised DATA
        cells of one stream come as one ``ExitDataReceived`` (which says how to cut it back
        into the per-cell events).  A length that is not a multiple of the cell size
        drops the trailing partial cell (the link framer delivers whole cells)."""
        mv = memoryview(buf).cast("B")
        n = len(mv) // CELL
        if len(mv) != n * CELL:
            self.discarded_malformed += 1  # the trailing partial cell
        elif n > 1 and _one_relay_circuit(mv, n):
            # the usual link message: RELAY cells of one circuit, checked without a
            # per-cell object; handled as the general loop below would handle it
            entry = self._sides.get((link_id, int.from_bytes(mv[:CIRC_ID_SIZE], "big")))
            if entry is not None:
                circ, side = entry
                if side == _P and circ.state != R.EXPECT_CREATE:
                    return self._forward_run(circ, bytearray(mv), now)
                if side == _N and circ.state == R.EXTENDED:
                    self._backward_run(circ, bytearray(mv))
                    return []
        events: list = []
        sides = self._sides
        heads = _cell_struct("5s1019x", n).unpack_from(mv)  # every cell's circ id + command
        i = 0
        while i < n:
            base = i * CELL
            head = heads[i]
            cid = int.from_bytes(head[:CIRC_ID_SIZE], "big")
            entry = sides.get((link_id, cid))
            if entry is None or head[CIRC_ID_SIZE] != _RELAY:
                events += self.receive_cell(link_id, mv[base : base + CELL], now)
                i += 1
                continue
            circ, side = entry
            state = circ.state
            if side == _N and state != R.EXTENDED or side == _P and state == R.EXPECT_CREATE:
                events += self.receive_cell(link_id, mv[base : base + CELL], now)
                i += 1
                continue
            if i == 0 and heads.count(head) == n:
                j = n  # the usual link message: all one circuit
            else:
                j = i + 1
                while j < n and heads[j] == head:
                    j += 1
            run = bytearray(mv[base : j * CELL])
            if side == _P:
                events += self._forward_run(circ, run, now)
            else:
                self._backward_run(circ, run)
            i = j
        return events

    def _backward_run(self, circ: _Circuit, run: bytearray) -> None:
        circ.bwd.encrypt(run)
        self._relabel(run, circ.prev[1])
        self._out.append((circ.prev[0], run))
        self.cells_relayed += len(run) // CELL

    @staticmethod
    def _relabel(run: bytearray, circ_id: int) -> None:
        """Write ``circ_id`` into every cell of ``run``: one strided store through a
        uint32 view (native order, so the big-endian id is converted once)."""
        n = len(run) // CELL
        if n == 1:
            run[:CIRC_ID_SIZE] = circ_id.to_bytes(CIRC_ID_SIZE, "big")
            return
        native = int.from_bytes(circ_id.to_bytes(CIRC_ID_SIZE, "big"), sys.byteorder)
        memoryview(run).cast("I")[:: CELL // 4] = array("I", [native]) * n

    def _forward_run(self, circ: _Circuit, run: bytearray, now: float) -> list:
        """Peel a run of forward RELAY cells with one call; forward the unrecognised ones
        in contiguous slices (EXTENDED), handle the recognised ones in order.  Recognised
        DATA cells of one stream that follow each other become one ``ExitDataReceived``."""
        flags = circ.fwd.decrypt(run)
        n = len(flags)
        if circ.state == R.EXTENDED and b"\x01" not in flags:
            self._relabel(run, circ.next[1])
            self._out.append((circ.next[0], run))
            self.cells_relayed += len(flags)
            return []
        events: list = []
        mv = memoryview(run)
        hdr = None  # (command, stream id, length) of every cell, parsed once if needed
        k = 0
        while k < n:
            if self._circuits.get(circ.prev) is not circ:
                self.discarded_after_destroy += n - k
                break  # destroyed by an earlier cell of the run: the rest is dropped
            if flags[k]:
                if hdr is None:
                    hdr = _cell_struct(_RELAY_HDR_FMT, n).unpack_from(run)
                code = hdr[3 * k]
                sid = hdr[3 * k + 1]
                if code == _DATA and hdr[3 * k + 2] <= RELAY_DATA_MAX:
                    m = _data_run_end(flags, hdr, k, sid)
                    sizes = hdr[3 * k + 2 : 3 * m : 3]
                    events.append(
                        ExitDataReceived(
                            link_id=circ.prev[0],
                            circ_id=circ.prev[1],
                            stream_id=sid,
                            data=_gather(run, mv, k, m, sizes),
                            sizes=sizes,
                        )
                    )
                    k = m
                    continue
                length = hdr[3 * k + 2]
                if code in _FAST_EXIT and length <= RELAY_DATA_MAX:
                    # stream traffic (allowed in every state that has a fwd layer): the
                    # event straight from the header, no intermediate RelayMessage
                    base = k * CELL
                    events.append(
                        ExitMessageReceived(
                            link_id=circ.prev[0],
                            circ_id=circ.prev[1],
                            command=_FAST_EXIT[code],
                            stream_id=sid,
                            data=bytes(mv[base + _DATA_AT : base + _DATA_AT + length]),
                        )
                    )
                    k += 1
                    continue
                try:
                    events += self._recognised(circ, bytearray(mv[k * CELL : (k + 1) * CELL]), now)
                except CellError as e:
                    events += self._reject(circ, e.error_code or DestroyReason.PROTOCOL)
                    self.discarded_after_destroy += n - k - 1
                    break
                k += 1
                continue
            if circ.state != R.EXTENDED:
                events += self._reject(circ, DestroyReason.INTEGRITY)
                self.discarded_after_destroy += n - k - 1
                break
            m = k + 1
            while m < n and not flags[m]:
                m += 1
            piece = bytearray(mv[k * CELL : m * CELL])
            self._relabel(piece, circ.next[1])
            self._out.append((circ.next[0], piece))
            self.cells_relayed += m - k
            k = m
        return events

    def _new_circuit(self, key, cell: Cell, now: float) -> list:
        if cell.command != CellCommand.CREATE or cell.circ_id == 0:
            self.discarded_unknown_circuit += 1
            return []  # stray cell for a circuit we do not know (maybe just destroyed)
        if len(self._circuits) >= self._max_circuits or self._half_open >= self._max_half_open:
            self.discarded_circuit_limit += 1
            if bytes(cell.payload[2:4]) == b"\x00\x00":  # a CREATE's first fragment (offset 0)
                self.circuits_refused += 1
            self._send(key, CellCommand.DESTROY, bytes([DestroyReason.INTERNAL]))
            return []
        circ = _Circuit(key, now, self._timeout)
        self._circuits[key] = circ
        self._half_open += 1
        self._arm(circ, circ.deadline)
        self._sides[key] = (circ, _P)
        try:
            return self._from_prev(circ, cell, cell.raw, now)
        except CellError as e:
            return self._reject(circ, e.error_code or DestroyReason.PROTOCOL)

    def _from_prev(self, circ: _Circuit, cell: Cell, data, now: float) -> list:
        if cell.command == CellCommand.CREATE:
            msg = circ.reasm.feed(cell.payload, now)
            if msg is None:
                return []
            position = msg[0]
            if not 1 <= position <= self._max_hops:
                return self._reject(circ, DestroyReason.TOO_MANY_HOPS)
            secret, reply = hs.server(self._rng, self.node_id, self._key, msg[1:])
            circ.position = position
            circ.fwd = new_layer(secret, FORWARD, CELL, HEADER_SIZE, pure=self._pure)
            circ.bwd = new_layer(secret, BACKWARD, CELL, HEADER_SIZE, pure=self._pure)
            circ.state = R.OPEN
            self.circuits_opened += 1
            self._half_open -= 1
            circ.reasm = None
            circ.deadline = None
            for frag in fragment(reply, PAYLOAD_SIZE):
                self._send(circ.prev, CellCommand.CREATED, frag)
            return []
        # RELAY, forward direction: peel our layer
        buf = bytearray(data)
        if circ.fwd.decrypt(buf) == b"\x01":
            return self._recognised(circ, buf, now)
        if circ.state == R.EXTENDED:
            buf[:CIRC_ID_SIZE] = circ.next[1].to_bytes(CIRC_ID_SIZE, "big")
            self._out.append((circ.next[0], bytes(buf)))
            self.cells_relayed += 1
            return []
        # nobody further on can recognise it: modified in transit (tagging) or garbage
        return self._reject(circ, DestroyReason.INTEGRITY)

    def _recognised(self, circ: _Circuit, buf: bytearray, now: float) -> list:
        msg = parse_relay_payload(memoryview(buf)[HEADER_SIZE:], ALLOWED_RELAY[circ.state])
        if msg.command == RelayCommand.EXTEND:
            if circ.reasm is None:
                circ.reasm = Reassembler(timeout=self._timeout)
                self._arm(circ, now + self._timeout)
            full = circ.reasm.feed(msg.data, now)
            if full is None:
                return []
            circ.reasm = None
            if circ.position >= self._max_hops:
                return self._reject(circ, DestroyReason.TOO_MANY_HOPS)
            if len(full) != hs.CREATE_SIZE:
                return self._reject(circ, DestroyReason.PROTOCOL)
            node = full[: hs.NODE_ID_SIZE]
            if node == self.node_id:
                return self._reject(circ, DestroyReason.PROTOCOL)
            circ.extend_msg = full
            circ.next_node = node
            circ.state = R.AWAIT_LINK
            self._arm(circ, now + self._timeout)
            first = node not in self._waiting
            self._waiting.setdefault(node, []).append(circ)
            return [LinkNeeded(node_id=node)] if first else []
        if msg.command == RelayCommand.DROP:
            return []
        return [
            ExitMessageReceived(
                link_id=circ.prev[0], circ_id=circ.prev[1], command=msg.command, stream_id=msg.stream_id, data=msg.data
            )
        ]

    def _from_next(self, circ: _Circuit, cell: Cell, data, now: float) -> list:
        if cell.command == CellCommand.CREATED:
            reply = circ.reasm.feed(cell.payload, now)
            if reply is None:
                return []
            circ.reasm = None
            circ.deadline = None
            circ.state = R.EXTENDED
            for frag in fragment(reply, RELAY_DATA_MAX):
                self._send_backward(circ, RelayCommand.EXTENDED, 0, frag)
            return []
        buf = bytearray(data)
        circ.bwd.encrypt(buf)
        buf[:CIRC_ID_SIZE] = circ.prev[1].to_bytes(CIRC_ID_SIZE, "big")
        self._out.append((circ.prev[0], bytes(buf)))
        self.cells_relayed += 1
        return []

    def _send_backward(self, circ: _Circuit, command, stream_id: int, data: bytes) -> None:
        cell = build_cell(circ.prev[1], CellCommand.RELAY, build_relay_payload(command, stream_id, data, pad=self._pad))
        circ.bwd.encrypt(cell, originate=True)
        self._out.append((circ.prev[0], bytes(cell)))

    def send_backward(self, link_id, circ_id: int, command: RelayCommand | int, stream_id: int, data: bytes) -> None:
        """Originate a relay message toward the client of circuit ``(link_id, circ_id)``."""
        circ = self._circuits.get((link_id, circ_id))
        if circ is None or circ.bwd is None:
            from qudag_core.errors import LocalProtocolError

            raise LocalProtocolError("no open circuit there")
        self._send_backward(circ, command, stream_id, data)

    def send_backward_batch(self, link_id, circ_id: int, messages) -> None:
        """``send_backward`` for a list of ``(command, stream_id, data)``: the same cells,
        wrapped with one layer call and queued as one output item."""
        circ = self._circuits.get((link_id, circ_id))
        if circ is None or circ.bwd is None:
            from qudag_core.errors import LocalProtocolError

            raise LocalProtocolError("no open circuit there")
        if not messages:
            return
        buf = bytearray()
        for command, stream_id, data in messages:
            payload = build_relay_payload(command, stream_id, data, pad=self._pad)
            buf += build_cell(circ.prev[1], CellCommand.RELAY, payload)
        circ.bwd.encrypt(buf, originate=True)
        self._out.append((circ.prev[0], buf))

    def destroy(self, link_id, circ_id: int, reason: int = DestroyReason.REQUESTED) -> list:
        """Tear down circuit ``(link_id, circ_id)`` from the exit's side (e.g. its stream
        layer saw a flow-control violation): DESTROY goes out on every side."""
        circ = self._circuits.get((link_id, circ_id))
        return [] if circ is None else self._destroy(circ, reason)

    # -- adapter callbacks -------------------------------------------------------------------

    def link_ready(self, node_id: bytes, link_id, now: float) -> list:
        """A link to ``node_id`` is up: send the pending CREATEs over it."""
        for circ in self._waiting.pop(bytes(node_id), []):
            if circ.state != R.AWAIT_LINK:
                continue
            while True:
                cid = int.from_bytes(self._rng(4), "big")
                if cid and (link_id, cid) not in self._sides:
                    break
            circ.next = (link_id, cid)
            self._sides[circ.next] = (circ, _N)
            circ.state = R.EXPECT_CREATED
            circ.reasm = Reassembler(timeout=self._timeout)
            self._arm(circ, now + self._timeout)
            msg = bytes([circ.position + 1]) + circ.extend_msg
            circ.extend_msg = None
            for frag in fragment(msg, PAYLOAD_SIZE):
                self._send(circ.next, CellCommand.CREATE, frag)
        return []

    def link_failed(self, node_id: bytes, now: float) -> list:
        events: list = []
        for circ in self._waiting.pop(bytes(node_id), []):
            if circ.state == R.AWAIT_LINK:
                events += self._destroy(circ, DestroyReason.CONNECT_FAILED)
        return events

    def link_closed(self, link_id) -> list:
        """The link is gone: every circuit using it is destroyed toward its other side."""
        events: list = []
        for key, (circ, side) in list(self._sides.items()):
            if key[0] == link_id and key in self._sides:
                events += self._destroy(circ, DestroyReason.CONNECT_FAILED, came_from=side)
        return events

    def _reject(self, circ: _Circuit, reason: int) -> list:
        """The cell being handled is refused (``rejected``) and its circuit destroyed."""
        self.discarded_rejected += 1
        return self._destroy(circ, reason)

    def _destroy(self, circ: _Circuit, reason: int, came_from: str | None = None) -> list:
        if self._circuits.get(circ.prev) is not circ:
            return []
        payload = bytes([int(reason) & 0xFF])
        if came_from != _P:
            self._send(circ.prev, CellCommand.DESTROY, payload)
        if circ.next is not None and came_from != _N:
            self._send(circ.next, CellCommand.DESTROY, payload)
        del self._circuits[circ.prev]
        self._sides.pop(circ.prev, None)
        if circ.next is not None:
            self._sides.pop(circ.next, None)
        if circ.next_node is not None and circ.state == R.AWAIT_LINK:
            lst = self._waiting.get(circ.next_node, [])
            if circ in lst:
                lst.remove(circ)
            if not lst:
                self._waiting.pop(circ.next_node, None)
        if circ.state == R.EXPECT_CREATE:
            self._half_open -= 1
            self.circuits_failed += 1
        circ.state = "CLOSED"
        circ.deadline = None
        circ.fwd = circ.bwd = None
        return [RelayCircuitClosed(link_id=circ.prev[0], circ_id=circ.prev[1], reason=int(reason))]

    # -- timers ----------------------------------------------------------------------------

    def _arm(self, circ: _Circuit, deadline: float) -> None:
        circ.deadline = deadline
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, circ))

    def _prune(self) -> None:
        while self._timers and self._timers[0][2].deadline != self._timers[0][0]:
            heapq.heappop(self._timers)  # disarmed, re-armed or closed since

    def get_timer(self) -> float | None:
        """The earliest handshake/reassembly deadline (a heap: O(log n) per arm)."""
        self._prune()
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> list:
        events: list = []
        self._prune()
        while self._timers and self._timers[0][0] <= now:
            _, _, circ = heapq.heappop(self._timers)
            if circ.deadline is not None and now >= circ.deadline:
                events += self._destroy(circ, DestroyReason.TIMEOUT)
            self._prune()
        return events
