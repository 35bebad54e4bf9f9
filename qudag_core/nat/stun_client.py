"""STUN client transactions over UDP (RFC 8489 §6.2.1, §6.3.3, §9), sans-IO.

Driving API (STYLE.md §1, datagram cores): ``request(server, now, ...)`` starts a
transaction and returns its handle; ``receive_datagram(data, addr, now)`` and
``handle_timer(now)`` return the events they caused; ``datagrams_to_send(now)`` drains
``(bytes, addr)`` pairs; ``get_timer()`` says when ``handle_timer`` is next due.

Retransmission follows §6.2.1 exactly: the request goes out at 0, RTO, 3·RTO, 7·RTO ...
(the interval doubling) for Rc transmissions in all, then the client waits Rm·RTO more
and reports :class:`TransactionTimedOut` (with the defaults RTO = 0.5 s, Rc = 7,
Rm = 16: sends at 0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5 s, timeout at 39.5 s).

The decision a reader would ask about: a response is only accepted when its
transaction id is one we are waiting on *and* it comes from the address we sent to
(or, for RFC 5780 CHANGE-REQUEST tests, the address the caller said to expect).
Anything else is dropped and counted in ``stats``; the transaction keeps waiting, so
an off-path attacker cannot end it with a forged datagram from elsewhere.  When
credentials are in use a success response must carry a MESSAGE-INTEGRITY(-SHA256) that
verifies (§9.1.4, §9.2.5) or it is dropped the same way.

Long-term credentials (§9.2): the first request goes without authentication; a 401
(or later a 438 Stale Nonce) with REALM and NONCE makes the client resend once with
USERNAME, REALM, NONCE and MESSAGE-INTEGRITY under MD5(username:realm:password).  The
RFC 8489 password-algorithm negotiation (PASSWORD-ALGORITHMS, USERHASH in requests) is
not done by the client; the codec supports the attributes.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from qudag_core.errors import LocalProtocolError
from qudag_core.nat import stun as S
from qudag_core.nat.events import (
    AllocateSucceeded,
    BindingSucceeded,
    Event,
    TransactionFailed,
    TransactionSucceeded,
    TransactionTimedOut,
)
from qudag_core.nat.stun import Attr, StunError

__all__ = ["ShortTermCredentials", "LongTermCredentials", "StunClient", "normalise_address"]

# Each long-term transaction may be re-sent with fresh credentials this many times
# (401 then 438 Stale Nonce), so a server cannot keep us looping.
_MAX_AUTH_RETRIES = 2
# Responses without integrity that can end an authenticated transaction: the server
# could not (400, 420) or would not yet (401, 438) authenticate its answer.
_UNAUTHENTICATED_ERRORS = frozenset({400, 401, 420, 438})


@dataclass(frozen=True, slots=True, kw_only=True)
class ShortTermCredentials:
    """§9.1: USERNAME plus MESSAGE-INTEGRITY keyed with OpaqueString(password)."""

    username: str
    password: str = field(repr=False)
    #: Use MESSAGE-INTEGRITY-SHA256 instead of the HMAC-SHA1 MESSAGE-INTEGRITY.
    sha256: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LongTermCredentials:
    """§9.2: username and password; realm and nonce come from the server's 401."""

    username: str
    password: str = field(repr=False)


def normalise_address(addr) -> tuple:
    """``(host, port)`` with the host in canonical text form; IPv4-mapped IPv6 hosts
    become IPv4 and a scope id or flow info (4-tuple socket addresses) is dropped."""
    host, port = addr[0], addr[1]
    try:
        ip = ipaddress.ip_address(str(host).split("%", 1)[0])
    except ValueError:
        return (str(host), int(port))
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (str(ip), int(port))


class _Transaction:
    __slots__ = (
        "handle", "wire_id", "server", "accept_from", "method", "attributes", "credentials",
        "key", "realm", "nonce", "auth_retries", "sent", "rc", "next_at", "interval",
        "last_sent_at", "retransmitted",
    )

    def __init__(self) -> None:
        self.realm: str | None = None
        self.nonce: str | None = None
        self.key: bytes | None = None
        self.auth_retries = 0
        self.sent = 0
        self.retransmitted = False


class StunClient:
    """Client side of STUN transactions (Binding, and any other method, e.g. TURN
    Allocate) with §6.2.1 retransmission.  ``rng(n) -> bytes`` supplies transaction ids."""

    def __init__(
        self,
        *,
        rng: Callable[[int], bytes],
        rto: float = 0.5,
        rc: int = 7,
        rm: int = 16,
        software: str | None = None,
        fingerprint: bool = True,
        max_transactions: int = 64,
    ) -> None:
        if rto <= 0 or rc < 1 or rm < 1:
            raise LocalProtocolError("RTO must be positive and Rc, Rm at least 1")
        self._rng = rng
        self.rto = float(rto)
        self.rc = int(rc)
        self.rm = int(rm)
        self._software = software
        self._fingerprint = fingerprint
        self._max = max_transactions
        self._by_wire: dict[bytes, _Transaction] = {}
        self._outbox: list[tuple[bytes, tuple]] = []
        #: Counters of dropped datagrams and retransmissions.
        self.stats: dict[str, int] = {
            "dropped_malformed": 0,
            "dropped_not_response": 0,
            "dropped_unknown_transaction": 0,
            "dropped_wrong_source": 0,
            "dropped_integrity": 0,
            "retransmissions": 0,
        }

    # ---- starting and cancelling ----------------------------------------------------
    def request(
        self,
        server,
        now: float,
        *,
        method: int = S.METHOD_BINDING,
        attributes: list[tuple[int, bytes]] | tuple = (),
        credentials: ShortTermCredentials | LongTermCredentials | None = None,
        expect_from=None,
        rc: int | None = None,
    ) -> bytes:
        """Start a transaction to ``server`` and queue its first transmission.
        ``expect_from`` is the address the response must come from (default: ``server``);
        ``rc`` overrides Rc for this transaction (RFC 5780 filtering tests use fewer)."""
        if len(self._by_wire) >= self._max:
            raise LocalProtocolError("too many outstanding STUN transactions")
        t = _Transaction()
        t.handle = self._new_id()
        t.wire_id = t.handle
        t.server = normalise_address(server)
        t.accept_from = normalise_address(expect_from) if expect_from is not None else t.server
        t.method = method
        t.attributes = list(attributes)
        t.credentials = credentials
        if isinstance(credentials, ShortTermCredentials):
            t.key = S.short_term_key(credentials.password)
        t.rc = self.rc if rc is None else max(1, int(rc))
        self._by_wire[t.wire_id] = t
        self._transmit(t, now, first=True)
        return t.handle

    def cancel(self, handle: bytes) -> bool:
        for wire, t in list(self._by_wire.items()):
            if t.handle == handle:
                del self._by_wire[wire]
                return True
        return False

    @property
    def pending(self) -> int:
        return len(self._by_wire)

    def _new_id(self) -> bytes:
        for _ in range(8):
            tid = bytes(self._rng(12))
            if len(tid) != 12:
                raise LocalProtocolError("rng(12) must return 12 bytes")
            if tid not in self._by_wire:
                return tid
        raise LocalProtocolError("rng keeps returning transaction ids in use")

    def _encode(self, t: _Transaction) -> bytes:
        attrs = list(t.attributes)
        k1 = k2 = None
        creds = t.credentials
        if isinstance(creds, ShortTermCredentials):
            attrs.append((Attr.USERNAME, creds.username.encode("utf-8")))
            if creds.sha256:
                k2 = t.key
            else:
                k1 = t.key
        elif isinstance(creds, LongTermCredentials) and t.nonce is not None:
            attrs += [
                (Attr.USERNAME, creds.username.encode("utf-8")),
                (Attr.REALM, t.realm.encode("utf-8")),
                (Attr.NONCE, t.nonce.encode("utf-8")),
            ]
            k1 = t.key
        if self._software:
            attrs.append((Attr.SOFTWARE, self._software.encode("utf-8")))
        return S.encode_message(t.method, S.CLASS_REQUEST, t.wire_id, attrs,
                                integrity_key=k1, integrity_sha256_key=k2,
                                fingerprint=self._fingerprint)

    def _transmit(self, t: _Transaction, now: float, *, first: bool) -> None:
        if first:
            t.sent = 0
            t.interval = self.rto
            t.retransmitted = False
            base = now
        else:
            # Schedule from the planned time, not the (possibly late) call time, so the
            # timeline stays 0, RTO, 3*RTO, 7*RTO ... whatever the adapter's jitter.
            base = t.next_at
            t.retransmitted = True
            self.stats["retransmissions"] += 1
        self._outbox.append((self._encode(t), t.server))
        t.sent += 1
        t.last_sent_at = now
        if t.sent >= t.rc:
            t.next_at = base + self.rm * self.rto
        else:
            t.next_at = base + t.interval
            t.interval *= 2

    # ---- driving API ---------------------------------------------------------------
    def datagrams_to_send(self, now: float) -> list[tuple[bytes, tuple]]:
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        if not self._by_wire:
            return None
        return min(t.next_at for t in self._by_wire.values())

    def handle_timer(self, now: float) -> list[Event]:
        events: list[Event] = []
        for wire, t in list(self._by_wire.items()):
            if t.next_at > now:
                continue
            if t.sent >= t.rc:
                del self._by_wire[wire]
                events.append(TransactionTimedOut(transaction_id=t.handle, server=t.server,
                                                  transmissions=t.sent))
            else:
                self._transmit(t, now, first=False)
        return events

    def receive_datagram(self, data: bytes, addr, now: float) -> list[Event]:
        try:
            msg = S.parse_message(data)
        except StunError:
            self.stats["dropped_malformed"] += 1
            return []
        if msg.msg_class not in (S.CLASS_SUCCESS, S.CLASS_ERROR):
            self.stats["dropped_not_response"] += 1
            return []
        t = self._by_wire.get(msg.transaction_id)
        if t is None or msg.method != t.method:
            self.stats["dropped_unknown_transaction"] += 1
            return []
        source = normalise_address(addr)
        if source != t.accept_from:
            self.stats["dropped_wrong_source"] += 1
            return []
        try:
            return self._on_response(t, msg, source, now)
        except StunError:
            # A malformed value in an attribute we needed: as if never received.
            self.stats["dropped_malformed"] += 1
            return []

    # ---- response processing --------------------------------------------------------
    def _finish(self, t: _Transaction) -> None:
        self._by_wire.pop(t.wire_id, None)

    def _on_response(self, t: _Transaction, msg: S.StunMessage, source: tuple, now: float) -> list[Event]:
        authenticated = t.key is not None
        if msg.msg_class == S.CLASS_ERROR:
            code_reason = msg.error_code()
            if code_reason is None:
                raise StunError("error response without ERROR-CODE")
            code, reason = code_reason
            if authenticated and (msg.has_integrity or msg.has_integrity_sha256 or code not in _UNAUTHENTICATED_ERRORS):
                if not msg.verify(t.key):
                    self.stats["dropped_integrity"] += 1
                    return []
            if code in (401, 438) and isinstance(t.credentials, LongTermCredentials):
                if self._retry_with_auth(t, msg, code, now):
                    return []
            self._finish(t)
            unknown = ()
            if code == 420 and msg.has(Attr.UNKNOWN_ATTRIBUTES):
                unknown = tuple(S.decode_unknown_attributes(msg.get(Attr.UNKNOWN_ATTRIBUTES)))
            return [TransactionFailed(transaction_id=t.handle, server=t.server, code=code,
                                      reason=reason, unknown_attributes=unknown, message=msg)]
        # Success response.
        if authenticated and not msg.verify(t.key):
            self.stats["dropped_integrity"] += 1
            return []
        unknown = S.unknown_comprehension_required(msg)
        if unknown:
            self._finish(t)
            return [TransactionFailed(transaction_id=t.handle, server=t.server, code=None,
                                      reason="unknown comprehension-required attributes in response",
                                      unknown_attributes=tuple(unknown), message=msg)]
        if t.method == S.METHOD_BINDING:
            mapped = msg.mapped_address()
            if mapped is None:
                raise StunError("Binding success response without a mapped address")
            ev: Event = BindingSucceeded(
                transaction_id=t.handle, server=t.server, mapped_address=mapped,
                response_origin=msg.address(Attr.RESPONSE_ORIGIN),
                other_address=msg.address(Attr.OTHER_ADDRESS), source=source,
                rtt=None if t.retransmitted else max(0.0, now - t.last_sent_at), message=msg)
        elif t.method == S.METHOD_ALLOCATE:
            lifetime = msg.get(Attr.LIFETIME)
            ev = AllocateSucceeded(
                transaction_id=t.handle, server=t.server,
                relayed_address=msg.xor_address(Attr.XOR_RELAYED_ADDRESS),
                mapped_address=msg.mapped_address(),
                lifetime=None if lifetime is None else S.decode_u32(lifetime), message=msg)
        else:
            ev = TransactionSucceeded(transaction_id=t.handle, server=t.server, method=t.method, message=msg)
        self._finish(t)
        return [ev]

    def _retry_with_auth(self, t: _Transaction, msg: S.StunMessage, code: int, now: float) -> bool:
        """§9.2.5: learn REALM/NONCE from a 401/438 and resend with a fresh transaction
        id.  Returns False (the error stands) when out of retries or the response lacks
        what is needed."""
        if t.auth_retries >= _MAX_AUTH_RETRIES:
            return False
        nonce = msg.text(Attr.NONCE)
        realm = msg.text(Attr.REALM) or t.realm
        if nonce is None or realm is None:
            return False
        if code == 401 and t.nonce is not None and realm == t.realm:
            # We already sent credentials for this realm and they were refused.
            return False
        creds = t.credentials
        try:
            t.key = S.long_term_key(creds.username, realm, creds.password)
        except LocalProtocolError:
            return False
        t.realm, t.nonce = realm, nonce
        t.auth_retries += 1
        del self._by_wire[t.wire_id]
        t.wire_id = self._new_id()
        self._by_wire[t.wire_id] = t
        self._transmit(t, now, first=True)
        return True
