"""Coordinated hole punching over a relayed link, after libp2p DCUtR (docs/nat.md §Hole punching).

The libp2p "Direct Connection Upgrade through Relay" spec: the initiator A sends CONNECT
with its observed addresses and starts a clock; B answers CONNECT with its own; A takes the
round-trip time, sends SYNC and dials after RTT/2; B dials as soon as SYNC arrives.  Both
SYNs therefore leave at about the same instant and each NAT sees an outgoing packet to the
other side before the other side's packet arrives (TCP simultaneous open, RFC 793 §3.4
figure 8).  A failed attempt is retried (default: 3 attempts in all).

The messages travel inside the peers' end-to-end link through the relay, so the relay
cannot see or alter the addresses.  Design decision: the core only *times* the dial
(``DialNow(at=...)``); the sockets, SO_REUSEPORT binding and the post-quantum handshake on
the punched socket are the adapter's job (``qudag_io/traversal.py``).

Wire format: ``0x01 CONNECT count:u8 addr*count`` (addr as in ``relay.py``, at most 8),
``0x02 SYNC``.  Unknown types are refused (a punch exchange is short and strict).
"""
from __future__ import annotations

import enum

from qudag_core.errors import LocalProtocolError, RemoteProtocolError
from qudag_core.nat.relay import _decode_addr, _encode_addr
from qudag_core.nat.traversal_events import DialNow, PunchFailed, PunchSendMessage

__all__ = ["PunchMessageError", "PunchInitiator", "PunchResponder", "PunchState",
           "encode_connect", "encode_sync", "decode_message", "MAX_ADDRESSES"]

MAX_ADDRESSES = 8
_CONNECT, _SYNC = 0x01, 0x02


class PunchMessageError(RemoteProtocolError):
    """A hole-punch coordination message is malformed."""


def encode_connect(addresses) -> bytes:
    addresses = list(addresses)
    if not 1 <= len(addresses) <= MAX_ADDRESSES:
        raise LocalProtocolError("CONNECT carries 1..8 addresses")
    return bytes((_CONNECT, len(addresses))) + b"".join(_encode_addr(a) for a in addresses)


def encode_sync() -> bytes:
    return bytes((_SYNC,))


def decode_message(data: bytes):
    """``("connect", (addr, ...))`` or ``("sync", ())``; ``PunchMessageError`` if malformed."""
    data = bytes(data)
    if not data:
        raise PunchMessageError("empty punch message")
    if data[0] == _SYNC:
        if len(data) != 1:
            raise PunchMessageError("SYNC has no body")
        return ("sync", ())
    if data[0] != _CONNECT:
        raise PunchMessageError(f"unknown punch message 0x{data[0]:02x}")
    if len(data) < 2 or not 1 <= data[1] <= MAX_ADDRESSES:
        raise PunchMessageError("CONNECT address count out of range")
    pos, out = 2, []
    for _ in range(data[1]):
        if pos >= len(data):
            raise PunchMessageError("CONNECT truncated")
        size = {4: 7, 6: 19}.get(data[pos])
        if size is None or pos + size > len(data):
            raise PunchMessageError("CONNECT address malformed")
        try:
            out.append(_decode_addr(data[pos:pos + size], 0))
        except RemoteProtocolError as exc:
            raise PunchMessageError(str(exc)) from None
        pos += size
    if pos != len(data):
        raise PunchMessageError("trailing bytes after CONNECT")
    return ("connect", tuple(out))


class PunchState(enum.Enum):
    IDLE = "IDLE"
    EXPECT_CONNECT = "EXPECT_CONNECT"
    EXPECT_SYNC = "EXPECT_SYNC"
    DIALING = "DIALING"
    DONE = "DONE"
    FAILED = "FAILED"


# (role, state, input) -> next state; anything missing is a protocol error -> FAILED (sticky).
_TRANSITIONS = {
    ("i", PunchState.IDLE, "start"): PunchState.EXPECT_CONNECT,
    ("i", PunchState.EXPECT_CONNECT, "connect"): PunchState.DIALING,
    ("i", PunchState.EXPECT_CONNECT, "timeout"): PunchState.FAILED,
    ("i", PunchState.DIALING, "dial_failed"): PunchState.EXPECT_CONNECT,
    ("i", PunchState.DIALING, "succeeded"): PunchState.DONE,
    ("r", PunchState.IDLE, "connect"): PunchState.EXPECT_SYNC,
    ("r", PunchState.EXPECT_SYNC, "sync"): PunchState.DIALING,
    ("r", PunchState.EXPECT_SYNC, "timeout"): PunchState.FAILED,
    ("r", PunchState.DIALING, "connect"): PunchState.EXPECT_SYNC,
    ("r", PunchState.DIALING, "dial_failed"): PunchState.DIALING,
    ("r", PunchState.DIALING, "succeeded"): PunchState.DONE,
}


class _Punch:
    role = ""

    def __init__(self, addresses, *, max_attempts: int = 3, timeout: float = 5.0) -> None:
        self.addresses = tuple(tuple(a) for a in addresses)
        encode_connect(self.addresses)  # validate now, not mid-exchange
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.state = PunchState.IDLE
        self.attempt = 0
        self.peer_addresses: tuple = ()
        self._deadline: float | None = None

    def _step(self, inp: str) -> bool:
        nxt = _TRANSITIONS.get((self.role, self.state, inp))
        if nxt is None:
            self.state = PunchState.FAILED
            self._deadline = None
            return False
        self.state = nxt
        return True

    def _fail(self, reason: str) -> list:
        self.state = PunchState.FAILED
        self._deadline = None
        return [PunchFailed(reason=reason)]

    def succeeded(self) -> None:
        """The adapter's dial produced an authenticated direct link."""
        if (self.role, self.state, "succeeded") not in _TRANSITIONS:  # API misuse: state unchanged
            raise LocalProtocolError("succeeded() outside DIALING")
        self._step("succeeded")
        self._deadline = None

    def get_timer(self) -> float | None:
        return self._deadline

    def handle_timer(self, now: float) -> list:
        if self._deadline is None or now < self._deadline:
            return []
        self._step("timeout")
        return self._fail("punch coordination timed out")

    @property
    def is_finished(self) -> bool:
        return self.state in (PunchState.DONE, PunchState.FAILED)


class PunchInitiator(_Punch):
    """Side A: sends CONNECT, measures the RTT, sends SYNC, dials at RTT/2."""

    role = "i"

    def start(self, now: float) -> list:
        if not self._step("start"):
            raise LocalProtocolError("start() called twice")
        return self._send_connect(now)

    def _send_connect(self, now: float) -> list:
        self.attempt += 1
        self._sent_at = now
        self._deadline = now + self.timeout
        return [PunchSendMessage(data=encode_connect(self.addresses))]

    def receive_message(self, data: bytes, now: float) -> list:
        if self.is_finished:
            return []
        try:
            kind, addrs = decode_message(data)
        except PunchMessageError as exc:
            return self._fail(f"bad message: {exc}")
        if not self._step(kind):
            return self._fail(f"unexpected {kind} in {self.state}")
        self.peer_addresses = addrs
        rtt = max(0.0, now - self._sent_at)
        self._deadline = None
        return [PunchSendMessage(data=encode_sync()),
                DialNow(addresses=addrs, at=now + rtt / 2, attempt=self.attempt, rtt=rtt)]

    def dial_failed(self, now: float) -> list:
        if self.state is not PunchState.DIALING:
            raise LocalProtocolError("dial_failed() outside DIALING")
        if self.attempt >= self.max_attempts:
            return self._fail(f"no direct connection after {self.attempt} attempts")
        self._step("dial_failed")
        return self._send_connect(now)


class PunchResponder(_Punch):
    """Side B: answers CONNECT with its addresses, dials when SYNC arrives."""

    role = "r"

    def receive_message(self, data: bytes, now: float) -> list:
        if self.is_finished:
            return []
        try:
            kind, addrs = decode_message(data)
        except PunchMessageError as exc:
            return self._fail(f"bad message: {exc}")
        if not self._step(kind):
            return self._fail(f"unexpected {kind}")
        if kind == "connect":
            self.attempt += 1
            if self.attempt > self.max_attempts:
                return self._fail("too many punch attempts")
            self.peer_addresses = addrs
            self._deadline = now + self.timeout
            return [PunchSendMessage(data=encode_connect(self.addresses))]
        self._deadline = None
        return [DialNow(addresses=self.peer_addresses, at=now, attempt=self.attempt, rtt=0.0)]

    def dial_failed(self, now: float) -> list:
        if self.state is not PunchState.DIALING:
            raise LocalProtocolError("dial_failed() outside DIALING")
        self._step("dial_failed")
        # Wait for the initiator's next CONNECT (or give up after the timeout).
        self._deadline = now + self.timeout
        return []

    def handle_timer(self, now: float) -> list:
        if self._deadline is None or now < self._deadline:
            return []
        return self._fail("punch coordination timed out")
