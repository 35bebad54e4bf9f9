"""Sans-IO stream objects for the handshake (docs/handshake.md §5, STYLE.md §1-§4).

``InitiatorHandshake`` and ``ResponderHandshake`` are fed bytes with
``receive_data(data, now=None) -> list[Event]`` and asked for bytes with
``data_to_send()``; ``get_timer()``/``handle_timer(now)`` drive the handshake deadline.
They never touch a socket, a clock or global randomness.  Each is a table-driven state
machine: a ``(state, frame type)`` pair missing from the table is an
``UnexpectedMessage``, and any remote violation moves the object to the sticky FAILED
state with an ALERT queued and a ``Terminated`` event returned -- never an exception the
adapter must catch.  Only API misuse raises (``HandshakeUsageError``).

Many ``ResponderHandshake`` objects share one ``ResponderContext``: static keys, the
certificate cache, the replay filter, the cookie secrets and the ``under_load`` flag
the adapter sets.  The decision a reader asks about: the replay filter only remembers
INIT messages that *decrypted and carried a valid certificate*, so forged or corrupted
copies cannot poison it, and it is two fixed-size generations, so it cannot grow
without bound (a replay older than both generations still creates no session: it
cannot produce FINISH without the initiator's keys, see §4.5).
"""
from __future__ import annotations

import hmac
import struct

from qudag_core.crypto.hashing import blake3_hash, keyed_hash
from qudag_core.crypto.mlkem import CT_SIZE as MLKEM_CT_SIZE
from qudag_core.crypto.xwing import PK_SIZE as XWING_PK_SIZE
from qudag_core.errors import QudagError
from qudag_core.handshake.errors import (
    AmplificationLimit,
    BadCookie,
    HandshakeTimeout,
    HandshakeUsageError,
    PeerAlert,
    ReplayDetected,
    UnexpectedMessage,
    UnexpectedPeer,
)
from qudag_core.handshake.events import HandshakeComplete, Terminated
from qudag_core.handshake.steps import (
    SUPPORTED_VERSIONS,
    initiator_finish,
    _initiator_start,
    _responder_process,
    responder_finish,
)
from qudag_core.handshake.wire import (
    CERT_REQUEST_MIN,
    COOKIE_SIZE,
    MAX_BODY,
    T_ALERT,
    T_CERT_REPLY,
    T_CERT_REQUEST,
    T_COOKIE,
    T_FINISH,
    T_INIT,
    T_RESPONSE,
    FrameReader,
    encode_versions,
    split_init,
)
from qudag_core.identity import CertificateCache, NodeAddress, NodeCertificate, NodeId

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "AMPLIFICATION_FACTOR",
    "COOKIE_PERIOD",
    "State",
    "ResponderContext",
    "InitiatorHandshake",
    "ResponderHandshake",
]

HANDSHAKE_TIMEOUT = 10.0
AMPLIFICATION_FACTOR = 3
COOKIE_PERIOD = 120.0
_REPLAY_KEY_SIZE = 16
_FRAME_HEADER = struct.Struct(">BH")  # wire.frame()'s header


def _bounds(*types) -> dict:
    """Frame types a state parses at all, with their body bounds (ALERT everywhere)."""
    return {t: MAX_BODY[t] for t in types + (T_ALERT,)}


_I_EXPECT_CERT = _bounds(T_CERT_REPLY)
_I_EXPECT_RESPONSE = _bounds(T_COOKIE, T_RESPONSE)
_R_EXPECT_INIT = _bounds(T_CERT_REQUEST, T_INIT)
_R_EXPECT_FINISH = _bounds(T_FINISH)


class State:
    """Handshake states, named for what they wait for."""

    EXPECT_CERT = "EXPECT_CERT"
    EXPECT_INIT = "EXPECT_INIT"
    EXPECT_RESPONSE = "EXPECT_RESPONSE"
    EXPECT_FINISH = "EXPECT_FINISH"
    DONE = "DONE"
    FAILED = "FAILED"


def _address_bytes(address) -> bytes:
    """Canonical bytes of the peer's transport address, for the cookie MAC."""
    if address is None:
        return b"\x00"
    try:
        return NodeAddress(address[0], address[1]).encode()
    except (QudagError, TypeError, IndexError, ValueError):
        return b"\xff" + repr(address).encode()


class ResponderContext:
    """State shared by all responder handshakes of one node.

    ``under_load`` (set by the adapter) makes responders answer a cookie-less INIT
    with a stateless COOKIE before any KEM work.  ``kem_operations`` counts KEM
    operations done for peers; ``state_size()`` is what the replay test measures."""

    __slots__ = (
        "identity",
        "certificate",
        "cert_cache",
        "versions",
        "under_load",
        "rng",
        "cookie_period",
        "replay_capacity",
        "kem_operations",
        "_cookie_secret",
        "_cookie_previous",
        "_cookie_epoch",
        "_replay_current",
        "_replay_previous",
    )

    def __init__(
        self,
        identity,
        certificate: NodeCertificate,
        *,
        rng,
        cert_cache: CertificateCache | None = None,
        versions=SUPPORTED_VERSIONS,
        replay_capacity: int = 1 << 15,
        cookie_period: float = COOKIE_PERIOD,
    ) -> None:
        if certificate.mldsa_public_key != identity.signing_key.public_key.raw:
            raise ValueError("certificate does not belong to this identity")
        encode_versions(versions)
        if replay_capacity < 1 or cookie_period <= 0:
            raise ValueError("replay_capacity and cookie_period must be positive")
        self.identity = identity
        self.certificate = certificate
        self.cert_cache = cert_cache if cert_cache is not None else CertificateCache()
        self.versions = tuple(versions)
        self.under_load = False
        self.rng = rng
        self.cookie_period = float(cookie_period)
        self.replay_capacity = replay_capacity
        self.kem_operations = 0
        self._cookie_secret = None
        self._cookie_previous = None
        self._cookie_epoch = 0.0
        self._replay_current: set = set()
        self._replay_previous: set = set()

    def __repr__(self) -> str:
        return f"ResponderContext(node_id={self.identity.node_id.hex()}, under_load={self.under_load})"

    def count_kem(self) -> None:
        self.kem_operations += 1

    # -- cookies (stateless: MAC over the peer address and the INIT core)
    def _rotate(self, now: float) -> None:
        if self._cookie_secret is None:
            self._cookie_secret = self.rng(32)
            self._cookie_epoch = now
            return
        elapsed = now - self._cookie_epoch
        if elapsed >= self.cookie_period:
            self._cookie_previous = self._cookie_secret if elapsed < 2 * self.cookie_period else None
            self._cookie_secret = self.rng(32)
            self._cookie_epoch = now

    def make_cookie(self, address_bytes: bytes, init_core: bytes, now: float) -> bytes:
        self._rotate(now)
        return keyed_hash(self._cookie_secret, address_bytes + init_core)[:COOKIE_SIZE]

    def check_cookie(self, address_bytes: bytes, init_core: bytes, cookie: bytes, now: float) -> bool:
        self._rotate(now)
        ok = False
        for secret in (self._cookie_secret, self._cookie_previous):
            if secret is not None:
                want = keyed_hash(secret, address_bytes + init_core)[:COOKIE_SIZE]
                ok |= hmac.compare_digest(want, cookie)
        return ok

    # -- replay filter: two bounded generations
    def replay_seen(self, key: bytes) -> bool:
        return key in self._replay_current or key in self._replay_previous

    def replay_remember(self, key: bytes) -> None:
        if len(self._replay_current) >= self.replay_capacity:
            self._replay_previous = self._replay_current
            self._replay_current = set()
        self._replay_current.add(key)

    def state_size(self) -> int:
        """Entries held across handshakes (replay filter + certificate cache)."""
        return len(self._replay_current) + len(self._replay_previous) + len(self.cert_cache)

    def new_handshake(self, *, now: float, peer_address=None, address_validated: bool = False,
                      timeout: float = HANDSHAKE_TIMEOUT) -> "ResponderHandshake":
        return ResponderHandshake(self, now=now, peer_address=peer_address,
                                  address_validated=address_validated, timeout=timeout)


class _Base:
    __slots__ = ("_state", "_reader", "_out", "_now", "_deadline", "bytes_received", "bytes_sent")

    def _init_base(self, now: float, timeout: float) -> None:
        self._reader = FrameReader()
        # Outgoing frames as a list of pieces, joined once in data_to_send(): a 9 kB
        # INIT is then copied once on its way out instead of at every layer.
        self._out: list = []
        self._now = float(now)
        self._deadline = float(now) + timeout
        self.bytes_received = 0
        self.bytes_sent = 0

    @property
    def state(self) -> str:
        return self._state

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def get_timer(self):
        if self._state in (State.DONE, State.FAILED):
            return None
        return self._deadline

    def handle_timer(self, now: float) -> list:
        self._now = max(self._now, float(now))
        if self._state in (State.DONE, State.FAILED) or now < self._deadline:
            return []
        return [self._fail(HandshakeTimeout("handshake deadline passed"))]

    def _send(self, ftype: int, body: bytes, tail: bytes = b"") -> None:
        """Queue the frame ``ftype`` whose body is ``body || tail``."""
        n = len(body) + len(tail)
        self._check_budget(3 + n)
        self.bytes_sent += 3 + n
        self._out.append(_FRAME_HEADER.pack(ftype, n))
        self._out.append(body)
        if tail:
            self._out.append(tail)

    def _check_budget(self, n: int) -> None:
        pass

    def _fail(self, exc: Exception, by_peer: bool = False) -> Terminated:
        self._state = State.FAILED
        self._forget()
        self._reader.take_rest()  # a failed handshake holds no peer bytes
        exc.__traceback__ = None  # no frame cycle keeps this connection alive
        code = int(getattr(exc, "error_code", 1)) & 0xFFFF
        if not by_peer:
            try:
                self._send(T_ALERT, code.to_bytes(2, "big"))
            except AmplificationLimit:
                pass
        return Terminated(error_code=code, reason=str(exc), by_peer=by_peer, error=exc)

    def _complete(self, keys) -> HandshakeComplete:
        """The event both sides report once their peer is proven; bytes already received
        past the final message go to the channel."""
        return HandshakeComplete(
            tx_key=keys.tx_key,
            rx_key=keys.rx_key,
            session_id=keys.session_id,
            peer_node_id=keys.peer_certificate.node_id,
            peer_certificate=keys.peer_certificate,
            version=keys.version,
            trailing_data=self._reader.take_rest(),
        )

    def _forget(self) -> None:
        pass

    def _on_alert(self, body: bytes):
        code = int.from_bytes(body, "big") if len(body) == 2 else 0
        err = PeerAlert(f"peer sent alert 0x{code:04x}", error_code=code)
        return self._fail(err, by_peer=True)

    def receive_data(self, data: bytes, now: float | None = None) -> list:
        """Feed bytes from the peer; returns the events they caused."""
        st = self._state
        if st == State.FAILED:
            return []
        if st == State.DONE:
            if not data:
                return []
            raise HandshakeUsageError("handshake finished: feed later bytes to the secure channel")
        if now is not None:
            self._now = max(self._now, float(now))
        data = bytes(data)
        self.bytes_received += len(data)
        events: list = []
        first = True
        try:
            while self._state not in (State.DONE, State.FAILED):
                if first:
                    fr = self._reader.next_frame_from(data, self._allowed())
                    first = False
                else:
                    fr = self._reader.next_frame(self._allowed())
                if fr is None:
                    break
                ftype, body = fr
                if ftype == T_ALERT:
                    events.append(self._on_alert(body))
                    break
                ev = self._dispatch(ftype, body)
                if ev is not None:
                    events.append(ev)
        except QudagError as exc:
            events.append(self._fail(exc))
        return events


class InitiatorHandshake(_Base):
    """The hidden side: knows the responder's certificate (or fetches it first with
    CERT_REQUEST) and proves its own identity only inside the encrypted INIT."""

    __slots__ = (
        "identity",
        "certificate",
        "peer_certificate",
        "expected_peer_id",
        "cert_cache",
        "versions",
        "_rng",
        "_hs",
        "_init_core",
        "_cookie_used",
    )

    _TABLE = {
        (State.EXPECT_CERT, T_CERT_REPLY): "_on_cert_reply",
        (State.EXPECT_RESPONSE, T_COOKIE): "_on_cookie",
        (State.EXPECT_RESPONSE, T_RESPONSE): "_on_response",
    }

    def __init__(
        self,
        identity,
        certificate: NodeCertificate,
        *,
        rng,
        now: float,
        peer_certificate: NodeCertificate | bytes | None = None,
        expected_peer_id: bytes | None = None,
        cert_cache: CertificateCache | None = None,
        versions=SUPPORTED_VERSIONS,
        timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        """Queues the first message.  A ``peer_certificate`` handed in that does not
        verify, or names another node than ``expected_peer_id``, raises at once."""
        encode_versions(versions)
        self._init_base(now, timeout)
        self.identity = identity
        self.certificate = certificate
        self.expected_peer_id = NodeId(expected_peer_id) if expected_peer_id is not None else None
        self.cert_cache = cert_cache if cert_cache is not None else CertificateCache(8)
        self.versions = tuple(versions)
        self._rng = rng
        self._hs = None
        self._init_core = None
        self._cookie_used = False
        self.peer_certificate = None
        if peer_certificate is not None:
            self._accept_peer_certificate(peer_certificate)
            self._start()
        else:
            self._state = State.EXPECT_CERT
            self._send(T_CERT_REQUEST, bytes(CERT_REQUEST_MIN))

    def __repr__(self) -> str:
        return f"InitiatorHandshake(state={self._state})"

    def _allowed(self) -> dict:
        return _I_EXPECT_CERT if self._state == State.EXPECT_CERT else _I_EXPECT_RESPONSE

    def _dispatch(self, ftype: int, body: bytes):
        name = self._TABLE.get((self._state, ftype))
        if name is None:
            raise UnexpectedMessage(f"frame 0x{ftype:02x} in {self._state}")
        return getattr(self, name)(body)

    def _accept_peer_certificate(self, cert) -> None:
        if isinstance(cert, NodeCertificate) and cert._verified:
            cert.check_validity(self._now)  # signature checked once already
        else:
            cert = self.cert_cache.verify(cert, self._now)
        if self.expected_peer_id is not None and cert.node_id != self.expected_peer_id:
            raise UnexpectedPeer(f"responder is {cert.node_id.hex()}, expected {self.expected_peer_id.hex()}")
        self.peer_certificate = cert

    def _start(self) -> None:
        self._hs = _initiator_start(self._rng, self.identity, self.certificate, self.peer_certificate,
                                    self.versions, None, None)
        self._init_core = self._hs.init_core
        self._state = State.EXPECT_RESPONSE
        self._send(T_INIT, self._init_core, b"\x00")  # empty cookie field

    def _on_cert_reply(self, body: bytes):
        self._accept_peer_certificate(body)
        self._start()

    def _on_cookie(self, body: bytes):
        if self._cookie_used or len(body) != COOKIE_SIZE:
            raise BadCookie("second or malformed cookie challenge")
        self._cookie_used = True
        self._send(T_INIT, self._init_core, bytes((COOKIE_SIZE,)) + body)

    def _on_response(self, body: bytes):
        keys, finish = initiator_finish(self._hs, body)
        self._hs = None
        self._send(T_FINISH, finish)
        self._state = State.DONE
        return self._complete(keys)

    def _forget(self) -> None:
        self._hs = None
        self._init_core = None


class ResponderHandshake(_Base):
    """The public side of one connection.  Counts bytes so that, until the peer's
    address is validated (a valid cookie echoed, FINISH verified, or the adapter says
    so), it never sends more than ``AMPLIFICATION_FACTOR`` times what it received."""

    __slots__ = ("ctx", "peer_address", "address_validated", "_addr", "_hs", "_cert_sent", "_cookie_sent")

    _TABLE = {
        (State.EXPECT_INIT, T_CERT_REQUEST): "_on_cert_request",
        (State.EXPECT_INIT, T_INIT): "_on_init",
        (State.EXPECT_FINISH, T_FINISH): "_on_finish",
    }

    def __init__(self, ctx: ResponderContext, *, now: float, peer_address=None,
                 address_validated: bool = False, timeout: float = HANDSHAKE_TIMEOUT) -> None:
        self._init_base(now, timeout)
        self.ctx = ctx
        self.peer_address = peer_address
        self.address_validated = bool(address_validated)
        self._addr = None
        self._hs = None
        self._cert_sent = False
        self._cookie_sent = False
        self._state = State.EXPECT_INIT

    def __repr__(self) -> str:
        return f"ResponderHandshake(state={self._state}, peer={self.peer_address!r})"

    def _allowed(self) -> dict:
        return _R_EXPECT_INIT if self._state == State.EXPECT_INIT else _R_EXPECT_FINISH

    def _dispatch(self, ftype: int, body: bytes):
        name = self._TABLE.get((self._state, ftype))
        if name is None:
            raise UnexpectedMessage(f"frame 0x{ftype:02x} in {self._state}")
        return getattr(self, name)(body)

    def _check_budget(self, n: int) -> None:
        if not self.address_validated and self.bytes_sent + n > AMPLIFICATION_FACTOR * self.bytes_received:
            raise AmplificationLimit(
                f"would send {self.bytes_sent + n} bytes after receiving {self.bytes_received} from an unvalidated address"
            )

    def _on_cert_request(self, body: bytes):
        if self._cert_sent or len(body) < CERT_REQUEST_MIN:
            raise UnexpectedMessage("repeated or unpadded CERT_REQUEST")
        self._cert_sent = True
        self._send(T_CERT_REPLY, self.ctx.certificate.to_bytes())

    def _on_init(self, body: bytes):
        ctx = self.ctx
        core, offered, cookie = split_init(body)
        if ctx.under_load and not self.address_validated:
            if self._addr is None:
                self._addr = _address_bytes(self.peer_address)
            if not cookie:
                if self._cookie_sent:
                    raise BadCookie("INIT without the cookie we asked for")
                self._cookie_sent = True
                self._send(T_COOKIE, ctx.make_cookie(self._addr, core, self._now))
                return None
            if not ctx.check_cookie(self._addr, core, cookie, self._now):
                raise BadCookie("wrong or expired cookie")
            self.address_validated = True
        vlen = 1 + 2 * len(offered)
        replay_key = blake3_hash(core[vlen : vlen + XWING_PK_SIZE + MLKEM_CT_SIZE], _REPLAY_KEY_SIZE)
        if ctx.replay_seen(replay_key):
            raise ReplayDetected("INIT already processed")
        self._hs, resp = _responder_process(
            ctx.rng, ctx.identity, ctx.certificate, core, offered, now=self._now, cert_cache=ctx.cert_cache,
            versions=ctx.versions, mlkem_encapsulate=None, kem_counter=ctx.count_kem,
        )
        ctx.replay_remember(replay_key)
        self._state = State.EXPECT_FINISH
        self._send(T_RESPONSE, resp)
        return None

    def _on_finish(self, body: bytes):
        keys = responder_finish(self._hs, body)
        self._hs = None
        self.address_validated = True
        self._state = State.DONE
        return self._complete(keys)

    def _forget(self) -> None:
        self._hs = None
