"""Client side of a circuit: build hop by hop, wrap and unwrap relay cells (sans-IO).

Implements docs/onion.md §3: CREATE/CREATED with the first relay over the link, then
EXTEND/EXTENDED relay messages through the circuit to each further relay; every hop runs
the X-Wing handshake of ``handshake.py`` and gets its own forward and backward layer
(``relaycrypto.py``).  At most ``max_hops`` (8) hops: asking for more closes the circuit.

Driving API (one circuit, one link): ``receive_cell(data, now) -> list[Event]``,
``cells_to_send() -> list[bytes]``, ``get_timer()``, ``handle_timer(now)``.  Batch forms for
the data path: ``send_relay_batch(hop, messages)`` wraps n messages with one layer call per
hop, ``receive_cells(buf, now)`` peels n cells per layer call, and ``batches_to_send()``
returns the output as n x 1024-byte items (``cells_to_send`` splits them into cells).

The decision a reader asks about: any fault the peer causes (bad handshake, a cell not
allowed in this state, a backward cell no layer recognises) closes the circuit, queues a
DESTROY and returns ``CircuitClosed``; ``receive_cell`` raises nothing for remote input.
The closed state is sticky: later cells are dropped unread.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

from qudag_core.errors import LocalProtocolError
from qudag_core.onion import handshake as hs
from qudag_core.onion.cells import (
    HEADER_SIZE,
    PAYLOAD_SIZE,
    RELAY_DATA_MAX,
    TAG_SIZE,
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
from qudag_core.onion.events import CircuitBuilt, CircuitClosed, CircuitRotationDue, HopAdded, RelayMessageReceived
from qudag_core.onion.fragments import Reassembler, fragment
from qudag_core.onion.relaycrypto import BACKWARD, FORWARD, new_layer

__all__ = ["MAX_HOPS", "HopSpec", "ClientState", "TooManyHops", "ClientCircuit"]

MAX_HOPS = 8
CELL = 1024
_RELAY = int(CellCommand.RELAY)
_CIRC_CMD_HDR = struct.Struct(">IB")
# everything of a relay cell before its data: circ id, RELAY, zero tag slot, relay header
_CELL_HEAD = struct.Struct(f">IB{TAG_SIZE}xBHH")


@dataclass(frozen=True, slots=True)
class HopSpec:
    """A relay as the client knows it from its certificate."""

    node_id: bytes
    xwing_public_key: bytes


class ClientState:
    NEW = "NEW"
    EXPECT_CREATED = "EXPECT_CREATED"
    OPEN = "OPEN"
    EXPECT_EXTENDED = "EXPECT_EXTENDED"
    CLOSED = "CLOSED"


S = ClientState
# (state, input) -> next state.  A missing pair: local input -> LocalProtocolError;
# remote input -> the circuit closes with a PROTOCOL destroy.
TRANSITIONS: dict[tuple[str, str], str] = {
    (S.NEW, "create"): S.EXPECT_CREATED,
    (S.EXPECT_CREATED, "created"): S.OPEN,
    (S.OPEN, "extend"): S.EXPECT_EXTENDED,
    (S.EXPECT_EXTENDED, "extended"): S.OPEN,
    (S.OPEN, "send"): S.OPEN,
    (S.EXPECT_EXTENDED, "send"): S.EXPECT_EXTENDED,
}

# Restricted link-level parsers per state.
ALLOWED_CELLS: dict[str, frozenset] = {
    S.NEW: frozenset(),
    S.EXPECT_CREATED: frozenset({CellCommand.CREATED, CellCommand.DESTROY}),
    S.OPEN: frozenset({CellCommand.RELAY, CellCommand.DESTROY, CellCommand.PADDING}),
    S.EXPECT_EXTENDED: frozenset({CellCommand.RELAY, CellCommand.DESTROY, CellCommand.PADDING}),
}
_STREAM_CMDS = frozenset(
    {RelayCommand.DATA, RelayCommand.END, RelayCommand.CONNECTED, RelayCommand.SENDME, RelayCommand.DROP, Unrecognized}
)
# Restricted relay-message parsers: EXTENDED only from the newest hop while extending.
ALLOWED_RELAY: dict[str, frozenset] = {
    S.OPEN: _STREAM_CMDS,
    S.EXPECT_EXTENDED: _STREAM_CMDS | {RelayCommand.EXTENDED},
}


class TooManyHops(LocalProtocolError):
    """An extension beyond ``max_hops`` was asked for; the circuit has been closed."""


class ClientCircuit:
    """One client circuit on one link, identified there by ``circ_id``."""

    def __init__(
        self,
        circ_id: int,
        *,
        rng,
        now: float,
        max_hops: int = MAX_HOPS,
        lifetime: float = 600.0,
        rotate_after: float | None = None,
        handshake_timeout: float = 30.0,
        pure_crypto: bool = False,
    ) -> None:
        if not 0 < circ_id <= 0xFFFFFFFF:
            raise LocalProtocolError("circ_id must be 1..2^32-1")
        self.circ_id = circ_id
        self.state = S.NEW
        self._rng = rng
        self._max_hops = max_hops
        self._hs_timeout = handshake_timeout
        self._pure = pure_crypto
        self._expires = now + lifetime
        self._rotate_at: float | None = now + (rotate_after if rotate_after is not None else 0.8 * lifetime)
        self._hs_deadline: float | None = None
        self._fwd: list = []
        self._bwd: list = []
        self.node_ids: list[bytes] = []
        self._pending: hs.ClientHandshake | None = None
        self._reasm: Reassembler | None = None
        self._path: list[HopSpec] = []
        self._out: list[bytes] = []
        self._heads: dict = {}  # (command, stream_id, length) -> cell head, see send_relay_batch
        self._pad = PaddingPool(rng)  # relay-cell padding (handshakes draw from rng itself)

    def __repr__(self) -> str:
        return f"ClientCircuit(circ_id={self.circ_id}, state={self.state}, hops={len(self._fwd)})"

    @property
    def hops(self) -> int:
        return len(self._fwd)

    # -- local API ---------------------------------------------------------------------

    def _move(self, event: str) -> None:
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise LocalProtocolError(f"{event} not allowed in state {self.state}")
        self.state = nxt

    def build(self, path: list[HopSpec], now: float) -> None:
        """Create the circuit to ``path[0]`` and extend through the rest automatically;
        ``CircuitBuilt`` is emitted when the last hop is in place."""
        if not path:
            raise LocalProtocolError("empty path")
        if len(path) > self._max_hops:
            self.destroy(DestroyReason.TOO_MANY_HOPS)
            raise TooManyHops(f"path of {len(path)} hops exceeds {self._max_hops}")
        self._path = list(path)
        self.create(path[0], now)

    def create(self, hop: HopSpec, now: float) -> None:
        """Send CREATE (fragmented) to the relay at the other end of the link."""
        self._move("create")
        self._pending, msg = hs.client1(self._rng, hop.node_id, hop.xwing_public_key)
        for frag in fragment(b"\x01" + msg, PAYLOAD_SIZE):
            self._out.append(bytes(build_cell(self.circ_id, CellCommand.CREATE, frag, pad=self._rng)))
        self._reasm = Reassembler(timeout=self._hs_timeout)
        self._hs_deadline = now + self._hs_timeout

    def extend(self, hop: HopSpec, now: float) -> None:
        """Send EXTEND (fragmented) through the current last hop toward ``hop``."""
        if self.state == S.OPEN and self.hops >= self._max_hops:
            self.destroy(DestroyReason.TOO_MANY_HOPS)
            raise TooManyHops(f"circuit already has {self.hops} hops (max {self._max_hops})")
        self._move("extend")
        self._pending, msg = hs.client1(self._rng, hop.node_id, hop.xwing_public_key)
        for frag in fragment(msg, RELAY_DATA_MAX):
            self._send_relay(self.hops - 1, RelayCommand.EXTEND, 0, frag)
        self._reasm = Reassembler(timeout=self._hs_timeout)
        self._hs_deadline = now + self._hs_timeout

    def send_relay(self, hop: int, command: RelayCommand | int, stream_id: int, data: bytes) -> None:
        """Queue a relay message for hop ``hop`` (0-based), onion-wrapped."""
        self._move("send")
        if not 0 <= hop < self.hops:
            raise LocalProtocolError(f"no hop {hop}")
        if command == RelayCommand.EXTEND:
            raise LocalProtocolError("use extend()")
        self._send_relay(hop, command, stream_id, data)

    def send_relay_batch(self, hop: int, messages) -> None:
        """Queue ``(command, stream_id, data)`` relay messages for hop ``hop``: the same
        cells ``send_relay`` would make one by one, wrapped with one call per layer.

        The plaintext cells are joined from a 26-byte head per (command, stream, length),
        made once per circuit and reused (a run of full DATA cells repeats one head), the
        data, and random padding for short cells; nothing is queued if any message is
        invalid."""
        self._move("send")
        if not 0 <= hop < self.hops:
            raise LocalProtocolError(f"no hop {hop}")
        if not messages:
            return
        heads = self._heads
        if len(heads) > 1024:
            heads.clear()
        parts: list = []
        short: list = []  # (index in parts, padding length), filled after every check
        for command, stream_id, data in messages:
            ln = len(data)
            key = (command, stream_id, ln)
            head = heads.get(key)
            if head is None:
                head = heads[key] = self._cell_head(command, stream_id, ln)
            parts.append(head)
            parts.append(data)
            if ln < RELAY_DATA_MAX:
                short.append((len(parts), RELAY_DATA_MAX - ln))
                parts.append(b"")
        pad_pool = self._pad
        for i, pad in short:  # random padding, as build_relay_payload(pad=...), in order
            parts[i] = pad_pool(pad)
        buf = bytearray().join(parts)
        self._fwd[hop].encrypt(buf, originate=True)
        for i in range(hop - 1, -1, -1):
            self._fwd[i].encrypt(buf)
        self._out.append(buf)

    def _cell_head(self, command, stream_id: int, ln: int) -> bytes:
        """Circ id, RELAY, zero tag slot and relay header of a cell (checked as
        ``send_relay`` checks them)."""
        if command == RelayCommand.EXTEND:
            raise LocalProtocolError("use extend()")
        if ln > RELAY_DATA_MAX:
            raise ValueError(f"relay data {ln} > {RELAY_DATA_MAX}")
        if not 0 <= stream_id <= 0xFFFF:
            raise ValueError("stream_id out of range")
        return _CELL_HEAD.pack(self.circ_id, _RELAY, int(command), stream_id, ln)

    def _send_relay(self, hop: int, command, stream_id: int, data: bytes) -> None:
        cell = build_cell(self.circ_id, CellCommand.RELAY, build_relay_payload(command, stream_id, data, pad=self._pad))
        self._fwd[hop].encrypt(cell, originate=True)
        for i in range(hop - 1, -1, -1):
            self._fwd[i].encrypt(cell)
        self._out.append(bytes(cell))

    def destroy(self, reason: int = DestroyReason.REQUESTED) -> list:
        """Close the circuit, queueing DESTROY toward the path."""
        if self.state == S.CLOSED:
            return []
        if self.state != S.NEW:
            self._out.append(bytes(build_cell(self.circ_id, CellCommand.DESTROY, bytes([int(reason)]))))
        self._close()
        return [CircuitClosed(reason=int(reason), remote=False)]

    def _close(self) -> None:
        self.state = S.CLOSED
        self._fwd = []
        self._bwd = []
        self._pending = None
        self._reasm = None
        self._hs_deadline = None
        self._rotate_at = None

    def cells_to_send(self) -> list[bytes]:
        """Queued cells, one 1024-byte cell per item, in order."""
        out, self._out = self._out, []
        return [bytes(c[i : i + CELL]) for c in out for i in range(0, len(c), CELL)]

    def batches_to_send(self) -> list:
        """Queued output as n x 1024-byte items, in order (one link message each, or
        split by the adapter)."""
        out, self._out = self._out, []
        return out

    # -- remote input --------------------------------------------------------------------

    def receive_cell(self, data: bytes, now: float) -> list:
        if self.state in (S.CLOSED, S.NEW):
            return []
        try:
            return self._receive(data, now)
        except CellError as e:
            return self.destroy(e.error_code or DestroyReason.PROTOCOL)

    def receive_cells(self, buf, now: float) -> list:
        """Batch form of ``receive_cell`` for n whole cells: consecutive RELAY cells of this
        circuit are peeled with one call per layer (a cell recognised at hop i is not
        decrypted further, exactly as cell by cell).  Same events as ``receive_cell`` per
        cell; a trailing partial cell is dropped."""
        mv = memoryview(buf).cast("B")
        n = len(mv) // CELL
        events: list = []
        i = 0
        prefix = _CIRC_CMD_HDR.pack(self.circ_id, _RELAY)
        while i < n:
            if self.state != S.OPEN:  # while extending, a reply may add a layer: cell by cell
                events += self.receive_cell(mv[i * CELL : (i + 1) * CELL], now)
                i += 1
                continue
            j = i
            while j < n and mv[j * CELL : j * CELL + HEADER_SIZE] == prefix:
                j += 1
            if j == i:
                events += self.receive_cell(mv[i * CELL : (i + 1) * CELL], now)
                i += 1
                continue
            events += self._receive_run(bytearray(mv[i * CELL : j * CELL]), now)
            i = j
        return events

    def _receive_run(self, run: bytearray, now: float) -> list:
        n = len(run) // CELL
        found = [-1] * n  # hop that recognised each cell
        todo = list(range(n))
        for h in range(self.hops):
            if not todo:
                break
            if len(todo) == n:  # nothing recognised yet (SENDMEs from the exit): in place
                flags = self._bwd[h].decrypt(run)
                pending = todo
            else:
                # only cells still unrecognised go on: gather them, peel, scatter back
                sub = bytearray(b"".join(run[k * CELL : (k + 1) * CELL] for k in todo))
                flags = self._bwd[h].decrypt(sub)
                for idx, k in enumerate(todo):
                    run[k * CELL : (k + 1) * CELL] = sub[idx * CELL : (idx + 1) * CELL]
                pending = todo
            todo = []
            for idx, k in enumerate(pending):
                if flags[idx]:
                    found[k] = h
                else:
                    todo.append(k)
        events: list = []
        mv = memoryview(run)
        for k in range(n):
            if self.state == S.CLOSED:
                break
            if found[k] < 0:
                events += self.destroy(DestroyReason.INTEGRITY)
                break
            try:
                events += self._relay_from(found[k], bytearray(mv[k * CELL : (k + 1) * CELL]), now)
            except CellError as e:
                events += self.destroy(e.error_code or DestroyReason.PROTOCOL)
                break
        return events

    def _receive(self, data: bytes, now: float) -> list:
        cell = parse_cell(data, ALLOWED_CELLS[self.state])
        if cell.circ_id != self.circ_id:
            return []  # not ours: the adapter demultiplexes, a stray cell is dropped
        cmd = cell.command
        if cmd == CellCommand.DESTROY:
            reason = cell.payload[0]
            self._close()
            return [CircuitClosed(reason=reason, remote=True)]
        if cmd == CellCommand.PADDING:
            return []
        if cmd == CellCommand.CREATED:
            reply = self._reasm.feed(cell.payload, now)
            return [] if reply is None else self._hop_done("created", reply, now)
        # RELAY: peel until one hop recognises it
        buf = bytearray(data)
        for i in range(self.hops):
            if self._bwd[i].decrypt(buf) == b"\x01":
                return self._relay_from(i, buf, now)
        return self.destroy(DestroyReason.INTEGRITY)

    def _relay_from(self, hop: int, buf: bytearray, now: float) -> list:
        msg = parse_relay_payload(memoryview(buf)[HEADER_SIZE:], ALLOWED_RELAY[self.state])
        if msg.command == RelayCommand.EXTENDED:
            if hop != self.hops - 1 or msg.stream_id != 0:
                return self.destroy(DestroyReason.PROTOCOL)
            reply = self._reasm.feed(msg.data, now)
            return [] if reply is None else self._hop_done("extended", reply, now)
        if msg.command == RelayCommand.DROP:
            return []  # long-range cover traffic: authenticated, then discarded
        return [RelayMessageReceived(hop=hop, command=msg.command, stream_id=msg.stream_id, data=msg.data)]

    def _hop_done(self, event: str, reply: bytes, now: float) -> list:
        secret = hs.client2(self._pending, reply)  # HandshakeError -> destroy by caller
        node_id = self._pending.node_id
        self._pending = None
        self._reasm = None
        self._hs_deadline = None
        self._move(event)
        self._fwd.append(new_layer(secret, FORWARD, CELL, HEADER_SIZE, pure=self._pure))
        self._bwd.append(new_layer(secret, BACKWARD, CELL, HEADER_SIZE, pure=self._pure))
        self.node_ids.append(node_id)
        events: list = [HopAdded(hop=self.hops - 1, node_id=node_id)]
        if self._path:
            if self.hops < len(self._path):
                self.extend(self._path[self.hops], now)
            else:
                self._path = []
                events.append(CircuitBuilt(hops=self.hops))
        return events

    # -- timers --------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        if self.state == S.CLOSED:
            return None
        ts = [t for t in (self._hs_deadline, self._rotate_at, self._expires) if t is not None]
        return min(ts) if ts else None

    def handle_timer(self, now: float) -> list:
        if self.state == S.CLOSED:
            return []
        if now >= self._expires:
            return self.destroy(DestroyReason.FINISHED)
        if self._hs_deadline is not None and now >= self._hs_deadline:
            return self.destroy(DestroyReason.TIMEOUT)
        if self._rotate_at is not None and now >= self._rotate_at:
            self._rotate_at = None
            return [CircuitRotationDue(circ_id=self.circ_id)]
        return []
