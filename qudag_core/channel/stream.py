"""The stream secure channel: AEAD frames over a reliable byte stream (docs/channel.md).

Sans-IO, driven like h11/h2 (STYLE.md §1): ``send_message`` / ``ping`` /
``update_key`` / ``close`` queue frames, ``data_to_send()`` hands them out,
``receive_data(bytes)`` returns events, ``get_timer()`` / ``handle_timer(now)`` drive
time-based rekeying, keepalive and the idle timeout.  The handshake's per-direction
keys are epoch 0; each KEY_UPDATE frame moves one direction to
``derive_key("qudag 2026 channel key update", current_key)`` and resets its counter
(TLS 1.3 §4.6.3 KeyUpdate, but one frame type and no response: each side rekeys its
own sending direction independently).

The decision a reader would ask about: a remote violation never raises.  The frame
that failed is not delivered (plaintext leaves the AEAD only after the tag verified),
an ALERT is queued, the state becomes ERROR for good and one ``Terminated`` event is
returned after whatever earlier, fully authenticated frames the same call delivered.
Only our own misuse raises (``LocalProtocolError`` subclasses).
"""
from __future__ import annotations

import struct

import cython

from qudag_core.channel.config import ChannelConfig
from qudag_core.channel.errors import (
    ChannelNotOpen,
    ErrorCode,
    FrameAuthenticationFailed,
    FrameTooLarge,
    MalformedFrame,
    MessageTooLarge,
    NonceLimitReached,
    PeerNonceLimitExceeded,
    error_code_from_int,
)
from qudag_core.channel.events import (
    Direction,
    Event,
    KeyUpdated,
    MessageReceived,
    PingReceived,
    PongReceived,
    Terminated,
    UnknownFrameReceived,
)
from qudag_core.channel.frames import (
    MAX_PING_PAYLOAD,
    MIN_BODY_SIZE,
    STREAM_HEADER_SIZE,
    FrameCipher,
    FrameType,
    decode_close,
    encode_close,
)
from qudag_core.channel.state import ChannelState, Input, next_state
from qudag_core.crypto import derive_key
from qudag_core.errors import DecryptError, InvalidKey, RemoteProtocolError

__all__ = ["SecureChannel", "KEY_UPDATE_CONTEXT"]

KEY_UPDATE_CONTEXT = "qudag 2026 channel key update"

_OPEN = ChannelState.OPEN
_DATA = 0  # FrameType.DATA as a plain int for the hot path
_NEVER = 1 << 200
_read_u32 = struct.Struct(">I").unpack_from
_new_object = object.__new__
_set_message_data = MessageReceived.data.__set__  # the slot descriptor (frozen blocks __setattr__ only)


def _message_received(payload: bytes) -> MessageReceived:
    """``MessageReceived(data=payload)`` without running the dataclass ``__init__``.

    The same object, built the way ``object.__new__`` + ``object.__setattr__`` would
    build it; on a 512-byte message the generated ``__init__`` alone costs a sixth of
    the channel's time.  The compiled build makes the two C calls directly."""
    if cython.compiled:
        event = qudag_alloc_instance(MessageReceived)
        PyObject_GenericSetAttr(event, "data", payload)
    else:
        event = _new_object(MessageReceived)
        _set_message_data(event, payload)
    return event


def _check_key(name: str, key: bytes) -> None:
    if len(key) != 32:
        raise InvalidKey(f"{name} must be 32 bytes, got {len(key)}")


def _next_key(key: bytearray) -> bytearray:
    """The next key of one direction; the old key's bytes are overwritten in place."""
    new = bytearray(derive_key(KEY_UPDATE_CONTEXT, bytes(key)))
    key[:] = bytes(len(key))
    return new


class SecureChannel:
    """One direction pair of AEAD-framed traffic after a completed handshake."""

    __slots__ = (
        "_config", "_state", "_session_id",
        "_tx_key", "_rx_key", "_tx", "_rx",
        "_tx_counter", "_rx_counter", "_tx_bytes", "_tx_epoch", "_rx_epoch",
        "_now", "_tx_key_since", "_last_received_at", "_last_sent_at",
        "_out", "_in", "_pending",
        "_max_payload", "_max_body", "_nonce_limit", "_data_limit", "_rekey_msgs", "_rekey_bytes",
    )

    def __init__(
        self,
        *,
        tx_key: bytes,
        rx_key: bytes,
        session_id: bytes,
        now: float,
        config: ChannelConfig | None = None,
    ) -> None:
        _check_key("tx_key", tx_key)
        _check_key("rx_key", rx_key)
        _check_key("session_id", session_id)
        if config is None:
            config = ChannelConfig()
        self._config = config
        self._state = _OPEN
        self._session_id = bytes(session_id)
        self._tx_key = bytearray(tx_key)
        self._rx_key = bytearray(rx_key)
        self._tx = FrameCipher(self._tx_key)
        self._rx = FrameCipher(self._rx_key)
        self._tx_counter = 0
        self._rx_counter = 0
        self._tx_bytes = 0
        self._tx_epoch = 0
        self._rx_epoch = 0
        self._now = now
        self._tx_key_since = now
        self._last_received_at = now
        self._last_sent_at = now
        self._out: list[bytes] = []
        self._in = bytearray()
        self._pending: list[Event] = []
        self._max_payload = config.max_frame_size
        self._max_body = config.max_body_size
        self._nonce_limit = config.nonce_limit
        # Counters below _data_limit may carry any frame; the last one is kept for a
        # KEY_UPDATE, CLOSE or ALERT so one can always follow the data.
        self._data_limit = config.nonce_limit - 1
        self._rekey_msgs = config.rekey_after_messages if config.rekey_after_messages is not None else _NEVER
        self._rekey_bytes = config.rekey_after_bytes if config.rekey_after_bytes is not None else _NEVER

    def __repr__(self) -> str:
        return (
            f"<SecureChannel {self._state.value} session={self._session_id[:4].hex()}... "
            f"tx_epoch={self._tx_epoch} rx_epoch={self._rx_epoch}>"
        )

    # -- read-only facts -------------------------------------------------------------

    @property
    def state(self) -> ChannelState:
        return self._state

    @property
    def config(self) -> ChannelConfig:
        return self._config

    @property
    def session_id(self) -> bytes:
        """The handshake transcript hash this channel was keyed from (not secret)."""
        return self._session_id

    @property
    def tx_epoch(self) -> int:
        return self._tx_epoch

    @property
    def rx_epoch(self) -> int:
        return self._rx_epoch

    @property
    def tx_counter(self) -> int:
        """Frames sealed under the current transmit key (the next nonce counter)."""
        return self._tx_counter

    @property
    def rx_counter(self) -> int:
        return self._rx_counter

    @property
    def last_received_at(self) -> float:
        """Time of the last authenticated frame (construction time before the first)."""
        return self._last_received_at

    @property
    def last_sent_at(self) -> float:
        return self._last_sent_at

    @property
    def buffered_bytes(self) -> int:
        """Bytes of an incomplete frame held between ``receive_data`` calls."""
        return len(self._in)

    @property
    def max_buffered_bytes(self) -> int:
        """Upper bound of ``buffered_bytes``: one frame short of complete."""
        return STREAM_HEADER_SIZE + self._max_body - 1

    # -- sending ---------------------------------------------------------------------

    def send_message(self, data: bytes) -> None:
        """Queue one message (at most ``config.max_frame_size`` bytes) as a DATA frame."""
        if self._state is not _OPEN:
            self._refuse(Input.SEND)
        n = len(data)
        if n > self._max_payload:
            raise MessageTooLarge(f"message of {n} bytes exceeds max_frame_size {self._max_payload}")
        self._send_frame(_DATA, data, n)

    def ping(self, data: bytes = b"") -> None:
        """Queue a PING (payload up to 64 bytes); the peer answers with PONG."""
        if self._state is not _OPEN:
            self._refuse(Input.SEND)
        if len(data) > MAX_PING_PAYLOAD:
            raise MessageTooLarge(f"PING payload is limited to {MAX_PING_PAYLOAD} bytes")
        self._send_frame(FrameType.PING, data, 0)

    def update_key(self) -> None:
        """Switch our transmit key now (KEY_UPDATE), whatever the thresholds say."""
        if self._state is not _OPEN:
            self._refuse(Input.SEND)
        self._update_tx_key()

    def close(self, code: int = 0, reason: str = "") -> None:
        """Queue an authenticated CLOSE (application ``code`` u16, ``reason``) and end.

        Closing an ended channel does nothing.  No ``Terminated`` event is reported
        for our own close; the peer gets ``Terminated(by_peer=True, is_alert=False)``."""
        if not 0 <= code <= 0xFFFF:
            raise ValueError("close code must fit in 16 bits")
        nxt = next_state(self._state, Input.LOCAL_CLOSE)
        if self._state is not _OPEN:
            return
        self._seal_final(FrameType.CLOSE, encode_close(code, reason))
        self._end(nxt)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer, in order; empties the queue."""
        out = self._out
        if not out:
            return b""
        self._out = []
        if len(out) == 1:
            return out[0]
        return b"".join(out)

    def _refuse(self, inp: Input) -> None:
        if next_state(self._state, inp) is None:
            raise ChannelNotOpen(f"channel is {self._state.value}: {inp.value} not allowed")

    def _send_frame(self, frame_type: int, payload: bytes, nbytes: int) -> None:
        if self._tx_counter >= self._rekey_msgs or self._tx_bytes >= self._rekey_bytes:
            self._update_tx_key()
        counter = self._tx_counter
        if counter >= self._data_limit:
            raise NonceLimitReached(
                f"{counter} frames sealed under this key; nonce_limit {self._nonce_limit} reached"
            )
        self._out.append(self._tx.seal_frame(counter, frame_type, payload))
        self._tx_counter = counter + 1
        self._tx_bytes += nbytes
        self._last_sent_at = self._now

    def _seal_final(self, frame_type: int, payload: bytes) -> None:
        """KEY_UPDATE, CLOSE and ALERT may use the reserved last counter."""
        counter = self._tx_counter
        if counter >= self._nonce_limit:
            raise NonceLimitReached("no counter left under this key")
        self._out.append(self._tx.seal_frame(counter, frame_type, payload))
        self._tx_counter = counter + 1
        self._last_sent_at = self._now

    def _update_tx_key(self) -> None:
        self._seal_final(FrameType.KEY_UPDATE, b"")
        self._tx.wipe()
        self._tx_key = _next_key(self._tx_key)
        self._tx = FrameCipher(self._tx_key)
        self._tx_counter = 0
        self._tx_bytes = 0
        self._tx_epoch += 1
        self._tx_key_since = self._now
        self._pending.append(KeyUpdated(direction=Direction.SEND, epoch=self._tx_epoch))

    def _update_rx_key(self) -> None:
        self._rx.wipe()
        self._rx_key = _next_key(self._rx_key)
        self._rx = FrameCipher(self._rx_key)
        self._rx_counter = 0
        self._rx_epoch += 1
        self._pending.append(KeyUpdated(direction=Direction.RECEIVE, epoch=self._rx_epoch))

    # -- receiving -------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float | None = None) -> list[Event]:
        """Feed bytes from the peer; returns the events they complete, in order.

        ``now`` (optional) stamps ``last_received_at``; without it the last time given
        to the constructor or ``handle_timer`` is used.  Never raises for bad input."""
        if now is not None:
            self._now = now
        # Frames handled below append to the pending list, after events already queued.
        events = self._pending
        if type(data) is not bytes and type(data) is not bytearray:
            data = memoryview(data).cast("B")  # lengths below count bytes, not items
        try:
            if self._state is _OPEN and data:
                if self._in:
                    self._reassemble(data)
                else:
                    consumed = self._parse(data)
                    if self._state is _OPEN and consumed < len(data):
                        with memoryview(data) as mv:
                            self._in += mv[consumed:]
        except RemoteProtocolError as exc:
            self._fail(exc)
        self._pending = []
        return events

    def _reassemble(self, data) -> None:
        """``receive_data`` when an incomplete frame is buffered.

        Only the bytes that complete the buffered frame are copied in (its header first,
        which ``_parse`` checks before any of the body is taken); that one frame is
        opened from the buffer, the rest of ``data`` is parsed where it lies and only its
        incomplete tail is buffered.  So each received byte is copied at most once, and
        only if its frame straddles two reads - a 4 MiB read holding one buffered frame's
        tail no longer goes through the buffer whole."""
        buf = self._in
        n = len(data)
        header_size = STREAM_HEADER_SIZE
        with memoryview(data) as mv:
            have = len(buf)
            pos = 0
            if have < header_size:
                pos = header_size - have
                if pos > n:
                    pos = n
                buf += mv[:pos]
                have += pos
                if have < header_size:
                    return
                self._parse(buf)  # the header alone: raises if it is bad, opens nothing
            end = header_size + _read_u32(buf, 0)[0]
            take = end - have
            if take > n - pos:
                buf += mv[pos:]  # still incomplete: below end, so below the cap
                return
            buf += mv[pos : pos + take]
            pos += take
            self._parse(buf)  # exactly one frame
            if self._state is not _OPEN:
                return  # _end dropped the buffer
            del buf[:]
            if pos < n:
                with mv[pos:] as rest:
                    consumed = self._parse(rest)
                    if self._state is _OPEN and consumed < n - pos:
                        buf += rest[consumed:]

    def _parse(self, src) -> int:
        """Open every complete frame in ``src``; returns how many bytes were used."""
        n = len(src)
        pos = 0
        max_body = self._max_body
        header_size = STREAM_HEADER_SIZE  # C-typed copies in the compiled build
        min_body = MIN_BODY_SIZE
        events = self._pending
        mv = None
        try:
            while n - pos >= header_size:
                body = _read_u32(src, pos)[0]
                if body > max_body:
                    # Refused before a single byte of it is buffered.
                    raise FrameTooLarge(f"length prefix {body} exceeds the {max_body}-byte limit")
                if body < min_body:
                    raise MalformedFrame(f"length prefix {body} is shorter than type and tag")
                end = pos + header_size + body
                if end > n:
                    break
                counter = self._rx_counter
                if counter >= self._nonce_limit:
                    raise PeerNonceLimitExceeded("peer sent more frames than nonce_limit under one key")
                if pos == 0 and end == n:
                    frame = src  # the common case: exactly one frame, no slice needed
                else:
                    if mv is None:
                        mv = memoryview(src)
                    frame = mv[pos:end]
                try:
                    frame_type, payload = self._rx.open_frame(counter, frame)
                except DecryptError:
                    raise FrameAuthenticationFailed(
                        f"frame {counter} of epoch {self._rx_epoch} failed authentication"
                    ) from None
                frame = None
                self._rx_counter = counter + 1
                self._last_received_at = self._now
                pos = end
                if frame_type == _DATA:
                    events.append(_message_received(payload))
                else:
                    self._control(frame_type, payload)
                    if self._state is not _OPEN:
                        break
        finally:
            if mv is not None:
                mv.release()
        return pos

    def _control(self, frame_type: int, payload: bytes) -> None:
        events = self._pending
        if frame_type == FrameType.KEY_UPDATE:
            if payload:
                raise MalformedFrame("KEY_UPDATE carries no payload")
            self._update_rx_key()
        elif frame_type == FrameType.PING:
            if len(payload) > MAX_PING_PAYLOAD:
                raise MalformedFrame("PING payload too long")
            events.append(PingReceived(data=payload))
            try:
                self._send_frame(FrameType.PONG, payload, 0)
            except NonceLimitReached:
                pass  # rekeying disabled and the key is spent: the PONG is dropped
        elif frame_type == FrameType.PONG:
            events.append(PongReceived(data=payload))
        elif frame_type == FrameType.CLOSE or frame_type == FrameType.ALERT:
            parsed = decode_close(payload)
            if parsed is None:
                raise MalformedFrame("CLOSE/ALERT body must be code:u16 || reason")
            code, reason = parsed
            alert = frame_type == FrameType.ALERT
            self._end(next_state(self._state, Input.RECV_ALERT if alert else Input.RECV_CLOSE))
            events.append(
                Terminated(
                    error_code=error_code_from_int(code) if alert else code,
                    reason=reason,
                    by_peer=True,
                    is_alert=alert,
                )
            )
        else:
            events.append(UnknownFrameReceived(frame_type=frame_type, data=payload))

    def _fail(self, exc: RemoteProtocolError) -> None:
        code = error_code_from_int(exc.error_code)
        self._alert_and_end(code, str(exc), Input.VIOLATION)

    def _alert_and_end(self, code: int, reason: str, inp: Input) -> None:
        nxt = next_state(self._state, inp)
        if self._tx_counter < self._nonce_limit:
            self._seal_final(FrameType.ALERT, encode_close(int(code), reason))
        self._end(nxt)
        self._pending.append(Terminated(error_code=code, reason=reason, by_peer=False, is_alert=True))

    def _end(self, state: ChannelState | None) -> None:
        assert state is not None and state is not _OPEN
        self._state = state
        self._in = bytearray()
        self._tx.wipe()
        self._rx.wipe()
        self._tx_key[:] = bytes(32)
        self._rx_key[:] = bytes(32)

    # -- time ------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When ``handle_timer`` should next be called (None: no timer needed)."""
        if self._state is not _OPEN:
            return None
        cfg = self._config
        deadline = None
        if cfg.rekey_after_seconds is not None:
            deadline = self._tx_key_since + cfg.rekey_after_seconds
        if cfg.keepalive_interval is not None:
            t = self._last_sent_at + cfg.keepalive_interval
            deadline = t if deadline is None or t < deadline else deadline
        if cfg.idle_timeout is not None:
            t = self._last_received_at + cfg.idle_timeout
            deadline = t if deadline is None or t < deadline else deadline
        return deadline

    def handle_timer(self, now: float) -> list[Event]:
        """Act on every deadline that ``now`` has reached; returns resulting events."""
        self._now = now
        state = next_state(self._state, Input.TIMER)
        if state is _OPEN:
            cfg = self._config
            if cfg.idle_timeout is not None and now >= self._last_received_at + cfg.idle_timeout:
                self._alert_and_end(ErrorCode.IDLE_TIMEOUT, "idle timeout", Input.IDLE_TIMEOUT)
            else:
                if cfg.rekey_after_seconds is not None and now >= self._tx_key_since + cfg.rekey_after_seconds:
                    self._update_tx_key()
                if cfg.keepalive_interval is not None and now >= self._last_sent_at + cfg.keepalive_interval:
                    try:
                        self._send_frame(FrameType.PING, b"", 0)
                    except NonceLimitReached:
                        self._last_sent_at = now  # cannot ping without a rekey; try again later
        events = self._pending
        self._pending = []
        return events
