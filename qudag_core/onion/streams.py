"""Streams over a circuit with SENDME flow-control windows (sans-IO).

After tor-spec §6 (relay streams: BEGIN / CONNECTED / DATA / END) and §7.3-7.4 (flow
control): each side keeps a *package* window (cells it may still send) and a *deliver*
window (cells it may still receive) per circuit and per stream.  Every ``increment``
DATA cells delivered, the receiver sends a SENDME (stream id 0 for the circuit window) and
the sender's package window grows by ``increment``.  Sending DATA with an empty window or a
SENDME that would lift a window above its initial size is a protocol violation.

The decision a reader asks about: ``StreamMux`` is independent of the circuit and its
crypto: it consumes ``(command, stream_id, data)`` triples that a recognised relay cell
carried (``RelayMessageReceived`` / ``ExitMessageReceived``) and produces the triples to
send, which the adapter hands to ``ClientCircuit.send_relay`` or
``OnionRelay.send_backward``.  One mux per circuit endpoint (client, or exit hop).

SENDMEs go out as DATA is delivered (``auto_sendme=True``) or, for receiver-side
backpressure, only when the application calls ``consumed(stream_id, cells)``.

Data the windows do not yet allow waits in a per-stream buffer capped at ``max_buffered``
bytes; ``send`` returns how many bytes it took (backpressure), ``writable(stream_id)``
says whether more would be accepted.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from qudag_core.errors import LocalProtocolError
from qudag_core.onion.cells import RELAY_DATA_MAX, CellError, RelayCommand

__all__ = [
    "StreamError",
    "StreamMux",
    "StreamRequested",
    "StreamOpened",
    "StreamData",
    "StreamEnded",
    "CIRCUIT_WINDOW",
    "STREAM_WINDOW",
]

CIRCUIT_WINDOW = 1000
CIRCUIT_INCREMENT = 100
STREAM_WINDOW = 500
STREAM_INCREMENT = 50


class StreamError(CellError):
    """The peer broke stream or flow-control rules (the circuit should be destroyed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamRequested:
    """Exit side: the client asks to open ``stream_id`` to ``target``; answer with
    ``accept`` or ``refuse``."""

    stream_id: int
    """Stream id chosen by the client."""
    target: bytes
    """Opaque target (e.g. b"host:port" or a dark address)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamOpened:
    """Client side: the exit accepted the stream."""

    stream_id: int
    """Stream id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamData:
    """Bytes arrived on a stream."""

    stream_id: int
    """Stream id."""
    data: bytes
    """Payload of one DATA cell."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamEnded:
    """The stream is closed (END received or sent)."""

    stream_id: int
    """Stream id."""
    reason: int
    """END reason byte (0 = done)."""


class _Stream:
    __slots__ = ("open", "package", "deliver", "buf", "buffered", "delivered_since", "end_after_flush")

    def __init__(self, opened: bool) -> None:
        self.open = opened
        self.package = STREAM_WINDOW
        self.deliver = STREAM_WINDOW
        self.buf: deque[bytes] = deque()
        self.buffered = 0
        self.delivered_since = 0
        self.end_after_flush = False


class StreamMux:
    """Streams of one circuit endpoint.  ``is_client`` picks who may BEGIN."""

    def __init__(
        self, *, is_client: bool, max_streams: int = 256, max_buffered: int = 256 * 1024, auto_sendme: bool = True
    ) -> None:
        self._client = is_client
        self._auto = auto_sendme
        self._max_streams = max_streams
        self._max_buffered = max_buffered
        self._streams: dict[int, _Stream] = {}
        self._next_id = 1
        self.circ_package = CIRCUIT_WINDOW
        self.circ_deliver = CIRCUIT_WINDOW
        self._circ_delivered_since = 0
        self._out: list[tuple[int, int, bytes]] = []

    # -- local API --------------------------------------------------------------------------

    def open_stream(self, target: bytes) -> int:
        """Client: BEGIN a stream to ``target``; returns its id."""
        if not self._client:
            raise LocalProtocolError("only the client opens streams")
        if len(self._streams) >= self._max_streams:
            raise LocalProtocolError("too many streams on this circuit")
        if len(target) > RELAY_DATA_MAX:
            raise LocalProtocolError("target too long")
        for _ in range(0x10000):
            sid = self._next_id
            self._next_id = self._next_id % 0xFFFF + 1
            if sid not in self._streams:
                break
        else:  # pragma: no cover - max_streams < 65535 makes this unreachable
            raise LocalProtocolError("no free stream id")
        self._streams[sid] = _Stream(opened=False)
        self._out.append((RelayCommand.BEGIN, sid, bytes(target)))
        return sid

    def accept(self, stream_id: int) -> None:
        """Exit: the connection for ``stream_id`` is up."""
        st = self._get_local(stream_id)
        st.open = True
        self._out.append((RelayCommand.CONNECTED, stream_id, b""))

    def refuse(self, stream_id: int, reason: int = 1) -> list:
        return self.close(stream_id, reason)

    def send(self, stream_id: int, data: bytes) -> int:
        """Queue ``data``; returns the number of bytes accepted (0 when the buffer is full)."""
        st = self._get_local(stream_id)
        if st.end_after_flush:
            raise LocalProtocolError("stream is closing")
        room = max(0, self._max_buffered - st.buffered)
        # one copy to bytes, then cell-sized slices of it (slicing bytes is about twice as
        # fast as bytes() of memoryview slices)
        take = data if type(data) is bytes and len(data) <= room else bytes(memoryview(data)[:room])
        n = len(take)
        st.buf.extend([take[i : i + RELAY_DATA_MAX] for i in range(0, n, RELAY_DATA_MAX)])
        st.buffered += n
        self._pump()
        return n

    def writable(self, stream_id: int) -> bool:
        st = self._streams.get(stream_id)
        return st is not None and st.buffered < self._max_buffered

    def close(self, stream_id: int, reason: int = 0) -> list:
        """Send END once buffered data has gone (reason 0), or at once (reason != 0)."""
        st = self._get_local(stream_id)
        if reason == 0 and st.buf:
            st.end_after_flush = True
            return []
        del self._streams[stream_id]
        self._out.append((RelayCommand.END, stream_id, bytes([reason & 0xFF])))
        return [StreamEnded(stream_id=stream_id, reason=reason)]

    def consumed(self, stream_id: int, cells: int = 1) -> None:
        """With ``auto_sendme=False``: the application has taken ``cells`` DATA cells of
        ``stream_id``; SENDMEs go out (and the deliver windows reopen) only then, which is
        what pushes back on a fast sender when the application is slow."""
        st = self._streams.get(stream_id)
        if st is not None:
            self._consumed(stream_id, st, cells)

    def _consumed(self, stream_id: int, st: _Stream, cells: int) -> None:
        """Count ``cells`` delivered cells; queue the SENDMEs they earn in the order one
        call per cell would (a stream SENDME before a circuit SENDME earned by the same
        cell), in O(SENDMEs) rather than O(cells)."""
        s_total = st.delivered_since + cells
        c_total = self._circ_delivered_since + cells
        ns = s_total // STREAM_INCREMENT
        nc = c_total // CIRCUIT_INCREMENT
        st.delivered_since = s_total - ns * STREAM_INCREMENT
        self._circ_delivered_since = c_total - nc * CIRCUIT_INCREMENT
        st.deliver += ns * STREAM_INCREMENT
        self.circ_deliver += nc * CIRCUIT_INCREMENT
        if not nc:
            self._out += [(RelayCommand.SENDME, stream_id, b"")] * ns
            return
        # the cell (1-based, within this call) that earns the i-th SENDME of each kind
        s_first = STREAM_INCREMENT - (s_total - cells)
        c_first = CIRCUIT_INCREMENT - (c_total - cells)
        i = j = 0
        while i < ns or j < nc:
            if j >= nc or (i < ns and s_first + i * STREAM_INCREMENT <= c_first + j * CIRCUIT_INCREMENT):
                self._out.append((RelayCommand.SENDME, stream_id, b""))
                i += 1
            else:
                self._out.append((RelayCommand.SENDME, 0, b""))
                j += 1

    def messages_to_send(self) -> list[tuple[int, int, bytes]]:
        out, self._out = self._out, []
        return out

    def _get_local(self, stream_id: int) -> _Stream:
        st = self._streams.get(stream_id)
        if st is None:
            raise LocalProtocolError(f"no stream {stream_id}")
        return st

    def _pump(self) -> None:
        """Move buffered data into DATA messages while both windows allow."""
        DATA = RelayCommand.DATA
        for sid, st in list(self._streams.items()):
            buf = st.buf
            if st.open and buf:
                k = min(len(buf), st.package, self.circ_package)  # as many as both windows allow
                if k > 0:
                    if k == len(buf):
                        chunks = list(buf)
                        buf.clear()
                    else:
                        chunks = [buf.popleft() for _ in range(k)]
                    st.buffered -= sum(map(len, chunks))
                    st.package -= k
                    self.circ_package -= k
                    self._out += [(DATA, sid, c) for c in chunks]
            if st.end_after_flush and not buf:
                del self._streams[sid]
                self._out.append((RelayCommand.END, sid, b"\x00"))

    # -- remote input -------------------------------------------------------------------------

    def receive_message(self, command, stream_id: int, data: bytes) -> list:
        """Handle one relay message for this endpoint; ``StreamError`` on violations."""
        if command == RelayCommand.SENDME:
            return self._sendme(stream_id)
        if stream_id == 0:
            raise StreamError(f"{command!r} needs a stream id")
        st = self._streams.get(stream_id)
        if command == RelayCommand.BEGIN:
            if self._client:
                raise StreamError("BEGIN sent to a client")
            if st is not None:
                raise StreamError("BEGIN for a stream in use")
            if len(self._streams) >= self._max_streams:
                self._out.append((RelayCommand.END, stream_id, b"\x02"))
                return []
            self._streams[stream_id] = _Stream(opened=False)
            return [StreamRequested(stream_id=stream_id, target=bytes(data))]
        if st is None:
            return []  # stream already closed locally: late cells are dropped
        if command == RelayCommand.CONNECTED:
            if not self._client or st.open:
                raise StreamError("unexpected CONNECTED")
            st.open = True
            self._pump()
            return [StreamOpened(stream_id=stream_id)]
        if command == RelayCommand.DATA:
            if not st.open:
                raise StreamError("DATA before the stream opened")
            if st.deliver <= 0 or self.circ_deliver <= 0:
                raise StreamError("DATA beyond the flow-control window")
            st.deliver -= 1
            self.circ_deliver -= 1
            if self._auto:
                self._consumed(stream_id, st, 1)
            return [StreamData(stream_id=stream_id, data=bytes(data))]
        if command == RelayCommand.END:
            del self._streams[stream_id]
            return [StreamEnded(stream_id=stream_id, reason=data[0] if data else 0)]
        raise StreamError(f"relay command {command!r} not handled by streams")

    def receive_data_run(self, stream_id: int, chunks: list) -> tuple:
        """Batch form of ``receive_message(DATA, stream_id, chunk)`` for each chunk in
        order, without one ``StreamData`` event per cell: returns ``(delivered, error)``,
        the chunks those events would have carried and the ``StreamError`` that the first
        violating chunk would have raised (``None`` if none; later chunks are not
        looked at, as cell by cell)."""
        n, err = self.receive_data_cells(stream_id, len(chunks))
        return (chunks if n == len(chunks) else chunks[:n]), err

    def receive_data_cells(self, stream_id: int, cells: int) -> tuple:
        """``receive_message(DATA, stream_id, ...)`` for ``cells`` cells at once, counting
        only (the caller holds the bytes, e.g. an ``ExitDataReceived``): returns
        ``(accepted, error)``, how many leading cells cell-by-cell delivery would have
        delivered and the ``StreamError`` the next one would have raised (``None`` if all
        were accepted).  Windows and SENDMEs end up exactly as cell by cell."""
        if cells <= 0:
            return 0, None
        if stream_id == 0:
            return 0, StreamError("DATA needs a stream id")
        st = self._streams.get(stream_id)
        if st is None:
            return 0, None  # stream already closed locally: late cells are dropped
        if not st.open:
            return 0, StreamError("DATA before the stream opened")
        if self._auto:
            # before each cell the windows are deliver + delivered_since - (cells counted
            # since the last SENDME): never below that sum - (increment - 1), so a sum of
            # at least one increment admits any number of cells
            if (
                st.deliver + st.delivered_since < STREAM_INCREMENT
                or self.circ_deliver + self._circ_delivered_since < CIRCUIT_INCREMENT
            ):
                return self._data_cells_slow(stream_id, st, cells)
            st.deliver -= cells
            self.circ_deliver -= cells
            self._consumed(stream_id, st, cells)
            return cells, None
        room = min(st.deliver, self.circ_deliver)
        take = cells if cells <= room else max(room, 0)
        st.deliver -= take
        self.circ_deliver -= take
        if take < cells:
            return take, StreamError("DATA beyond the flow-control window")
        return cells, None

    def _data_cells_slow(self, stream_id: int, st: _Stream, cells: int) -> tuple:
        """Cell by cell (auto SENDMEs with windows already low: only after misuse)."""
        for n in range(cells):
            if st.deliver <= 0 or self.circ_deliver <= 0:
                return n, StreamError("DATA beyond the flow-control window")
            st.deliver -= 1
            self.circ_deliver -= 1
            self._consumed(stream_id, st, 1)
        return cells, None

    def _sendme(self, stream_id: int) -> list:
        if stream_id == 0:
            if self.circ_package + CIRCUIT_INCREMENT > CIRCUIT_WINDOW:
                raise StreamError("circuit SENDME beyond the window")
            self.circ_package += CIRCUIT_INCREMENT
        else:
            st = self._streams.get(stream_id)
            if st is None:
                return []
            if st.package + STREAM_INCREMENT > STREAM_WINDOW:
                raise StreamError("stream SENDME beyond the window")
            st.package += STREAM_INCREMENT
        self._pump()
        return []
