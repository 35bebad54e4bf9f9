"""Typed KRPC messages: BEP 5 (DHT), BEP 32 (``nodes6``), BEP 42 (``ip``), BEP 43 (``ro``:
read-only nodes), BEP 44 (get/put of immutable and mutable items) and qudag's
``qd_get``/``qd_put`` for ML-DSA-signed records.

``parse_message(data)`` returns a ``Query`` subclass, a ``Response`` or an ``Error``, or
raises ``KrpcError`` (``BencodeError`` is one) whose ``error_code`` is what the node
answers with and whose ``transaction_id`` addresses that answer when it could be read.
Parsing is restricted: each known field is checked for type and length (ids 20 bytes,
tokens 1..64 bytes, ports 1..65535, compact node lists multiples of 26/38 bytes, BEP 44
``v`` <= 1000 bytes -> 205, ``salt`` <= 64 bytes -> 207, ...).  Unknown keys are ignored
(BEP 5 "KRPC Protocol") and never re-emitted; an unknown query method parses as
``UnknownQuery`` so the node can answer 204.

Responses do not name their query on the wire, so there is one ``Response`` class whose
optional fields cover every response shape; the caller matches it to its query by the
transaction id (as every KRPC implementation must).

``encode()`` builds the dictionary, runs it through the same field checks as the parser
(a failure is a ``LocalProtocolError``: we never emit what we would refuse), then bencodes
it.  ``encode_datagram()`` additionally enforces the 1,400-byte UDP budget and refuses
channel-only messages (``DatagramTooLarge``).

qudag extension (documented here, it has no BEP):

* ``qd_get`` args ``{id, target, rt, [rev]}``: ``target`` 20 bytes, ``rt`` record type
  (0..65535, open set: 1 node certificate, 2 dark-address descriptor), ``rev`` optional:
  only return a record whose revision is greater.
* ``qd_put`` args ``{id, token, rec, [salt]}`` with ``rec`` = ``{k, rev, rt, sig, v}``:
  ``k`` ML-DSA-65 public key (1952 B), ``sig`` ML-DSA-65 signature (3309 B), ``rev``
  revision 0..2**63-1, ``v`` opaque bytes (<= 8192), ``salt`` <= 64 bytes.  Responses to
  ``qd_get`` carry the same ``rec`` dict plus ``token``/``nodes``.
* target = the first 20 bytes of BLAKE3(``"qudag 2026 krpc qd target"`` || 0x00 || k ||
  salt); the key has a fixed length, so the split between ``k`` and ``salt`` is unambiguous.
* signature: ML-DSA-65 over the canonical bencoding of ``{rev, rt, salt, v}`` with the
  context string ``"qudag 2026 krpc qd record"`` (FIPS 204 ctx), so a record can be moved
  neither to another salt, type or revision nor into another protocol's signatures.
* both methods are channel-only: a record is ~5.3 KB, far past a datagram.

BEP 44 mutable items use ed25519 from ``cryptography``; target = SHA-1(k || salt), the
signed buffer is ``[4:salt<len>:<salt>]3:seqi<seq>e1:v<bencoded v>`` (BEP 44 "Signature
Verification").  ``value`` fields hold the *bencoded* ``v``: the strict decoder accepts
only canonical bencode, so these are exactly the bytes that were hashed or signed.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

import cython
from typing import Any, ClassVar, NamedTuple, Optional, Union

from qudag_core.errors import InvalidKey, InvalidSignature, LocalProtocolError
from qudag_core.krpc import bencode
from qudag_core.krpc.errors import DatagramTooLarge, KrpcError, KrpcErrorCode

__all__ = [
    "DATAGRAM_BUDGET",
    "MESSAGE_MAX_SIZE",
    "ID_LEN",
    "TOKEN_MAX",
    "TID_MAX",
    "BEP44_VALUE_MAX",
    "BEP44_SALT_MAX",
    "QD_VALUE_MAX",
    "QD_SALT_MAX",
    "QD_SIGN_CONTEXT",
    "QD_TARGET_TAG",
    "RecordType",
    "PeerAddr",
    "NodeInfo",
    "QdRecord",
    "Message",
    "Query",
    "Ping",
    "FindNode",
    "GetPeers",
    "AnnouncePeer",
    "Get",
    "Put",
    "QdGet",
    "QdPut",
    "UnknownQuery",
    "Response",
    "Error",
    "parse_datagram",
    "parse_message",
    "immutable_target",
    "mutable_target",
    "mutable_signing_buffer",
    "sign_mutable",
    "verify_mutable",
    "qd_target",
    "qd_signing_buffer",
    "sign_qd_record",
]

DATAGRAM_BUDGET = 1400
MESSAGE_MAX_SIZE = bencode.DEFAULT_MAX_SIZE
ID_LEN = 20
TID_MAX = 32
TOKEN_MAX = 64
VERSION_MAX = 64
ERROR_TEXT_MAX = 1024
METHOD_MAX = 64
BEP44_VALUE_MAX = 1000
BEP44_SALT_MAX = 64
SEQ_MAX = 2**63 - 1
ED25519_KEY_LEN = 32
ED25519_SIG_LEN = 64
QD_VALUE_MAX = 8192
QD_SALT_MAX = 64
QD_PK_LEN = 1952
QD_SIG_LEN = 3309
QD_SIGN_CONTEXT = b"qudag 2026 krpc qd record"
QD_TARGET_TAG = b"qudag 2026 krpc qd target"

_PROTO = KrpcErrorCode.PROTOCOL


class RecordType:
    """qudag record types carried by ``qd_get``/``qd_put`` (an open set: any 0..65535)."""

    NODE_CERTIFICATE = 1
    DARK_DESCRIPTOR = 2


# ---- value types -------------------------------------------------------------------


# PeerAddr and NodeInfo are named tuples, not dataclasses: a find_node response carries 8
# of them (up to ~50 over a channel), and a tuple builds ~5x faster than a frozen
# dataclass.  They stay immutable and slot-free all the same.


class PeerAddr(NamedTuple):
    """A compact address (BEP 5 "Contact Encoding"): packed IPv4 (4) or IPv6 (16) + port."""

    ip: bytes
    """Packed address, network byte order."""
    port: int
    """UDP/TCP port, 1..65535."""

    def compact(self) -> bytes:
        return bytes(self.ip) + int(self.port).to_bytes(2, "big")

    @property
    def host(self) -> str:
        import ipaddress

        return str(ipaddress.ip_address(bytes(self.ip)))


class NodeInfo(NamedTuple):
    """Compact node info: 20-byte id + compact address (26 bytes IPv4, 38 bytes IPv6)."""

    node_id: bytes
    """The node's 20-byte id."""
    ip: bytes
    """Packed address, 4 or 16 bytes."""
    port: int
    """UDP port, 1..65535."""

    def compact(self) -> bytes:
        return bytes(self.node_id) + bytes(self.ip) + int(self.port).to_bytes(2, "big")


@dataclass(frozen=True, slots=True, kw_only=True)
class QdRecord:
    """A qudag record signed with ML-DSA-65 (see the module docstring for the format)."""

    record_type: int
    """Open set, see ``RecordType``."""
    revision: int
    """Monotonic revision, 0..2**63-1; a store keeps the highest."""
    public_key: bytes
    """ML-DSA-65 public key, 1952 bytes."""
    signature: bytes
    """ML-DSA-65 signature over ``qd_signing_buffer``, 3309 bytes."""
    value: bytes
    """Opaque record bytes (certificate, descriptor), at most 8192."""

    def target(self, salt: bytes = b"") -> bytes:
        return qd_target(self.public_key, salt)

    def signing_buffer(self, salt: bytes = b"") -> bytes:
        return qd_signing_buffer(self.record_type, self.revision, self.value, salt)

    def verify(self, salt: bytes = b"") -> None:
        """Raise ``KrpcError`` (206) unless the signature verifies under ``public_key``."""
        from qudag_core.crypto import MlDsa65PublicKey

        try:
            MlDsa65PublicKey(self.public_key).verify(self.signature, self.signing_buffer(salt), QD_SIGN_CONTEXT)
        except (InvalidKey, InvalidSignature) as exc:
            raise KrpcError(f"qd record: {exc}", error_code=KrpcErrorCode.INVALID_SIGNATURE) from None

    def _to_dict(self) -> dict:
        return {b"k": self.public_key, b"rev": self.revision, b"rt": self.record_type,
                b"sig": self.signature, b"v": self.value}


# ---- field checks (shared by parse and encode) --------------------------------------


def _fail(msg: str, tid: Optional[bytes], code: int = _PROTO) -> KrpcError:
    return KrpcError(msg, error_code=code, transaction_id=tid)


def _get_bytes(d: dict, key: bytes, tid: Optional[bytes], lo: int, hi: int,
               required: bool = True, code: int = _PROTO) -> Optional[bytes]:
    v = d.get(key)
    if v is None:
        if required:
            raise _fail(f"missing {key.decode()!r}", tid)
        return None
    if type(v) is not bytes:
        raise _fail(f"{key.decode()!r} must be a byte string", tid)
    if not lo <= len(v) <= hi:
        raise _fail(f"{key.decode()!r} length {len(v)} not in {lo}..{hi}", tid, code)
    return v


def _get_int(d: dict, key: bytes, tid: Optional[bytes], lo: int, hi: int,
             required: bool = True) -> Optional[int]:
    v = d.get(key)
    if v is None:
        if required:
            raise _fail(f"missing {key.decode()!r}", tid)
        return None
    if type(v) is not int:
        raise _fail(f"{key.decode()!r} must be an integer", tid)
    if not lo <= v <= hi:
        raise _fail(f"{key.decode()!r} = {v} not in {lo}..{hi}", tid)
    return v


def _get_dict(d: dict, key: bytes, tid: Optional[bytes]) -> dict:
    v = d.get(key)
    if type(v) is not dict:
        raise _fail(f"{key.decode()!r} must be a dictionary", tid)
    return v


def _parse_addr(raw: bytes, tid: Optional[bytes], what: str) -> PeerAddr:
    port = (raw[-2] << 8) | raw[-1]
    if port == 0:
        raise _fail(f"{what}: port 0", tid)
    return tuple.__new__(PeerAddr, (raw[:-2], port))


_tuple_new = tuple.__new__


def _node_info(node_id: bytes, ip: bytes, port: int) -> NodeInfo:
    """``NodeInfo(node_id, ip, port)`` without NamedTuple's Python-level ``__new__``
    (a find_node reply carries k of them); the compiled build fills the tuple directly."""
    if cython.compiled:
        return qudag_new_tuple3(NodeInfo, node_id, ip, port)
    return _tuple_new(NodeInfo, (node_id, ip, port))


def _check_nodes(raw: bytes, step: int, tid: Optional[bytes], what: str) -> None:
    """The checks ``_parse_nodes`` makes, without building anything."""
    n = len(raw)
    if n % step:
        raise _fail(f"{what!r} length {n} is not a multiple of {step}", tid)
    for i in range(step - 2, n, step):
        if raw[i] == 0 and raw[i + 1] == 0:
            raise _fail(f"{what!r}: node with port 0", tid)


def _parse_nodes(raw: bytes, step: int, tid: Optional[bytes], what: str) -> tuple[NodeInfo, ...]:
    _check_nodes(raw, step, tid, what)
    out = []
    n = len(raw)
    for i in range(0, n, step):
        port = (raw[i + step - 2] << 8) | raw[i + step - 1]
        out.append(_node_info(raw[i:i + 20], raw[i + 20:i + step - 2], port))
    return tuple(out)


def _value_raw(d: dict, tid: Optional[bytes], required: bool) -> Optional[bytes]:
    if b"v" not in d:
        if required:
            raise _fail("missing 'v'", tid)
        return None
    raw = bencode.encode(d[b"v"])
    if len(raw) > BEP44_VALUE_MAX:
        raise _fail(f"'v' is {len(raw)} bytes, more than {BEP44_VALUE_MAX}", tid, KrpcErrorCode.MESSAGE_TOO_BIG)
    return raw


def _parse_record(d: dict, tid: Optional[bytes]) -> QdRecord:
    rec = _get_dict(d, b"rec", tid)
    return QdRecord(
        record_type=_get_int(rec, b"rt", tid, 0, 0xFFFF),
        revision=_get_int(rec, b"rev", tid, 0, SEQ_MAX),
        public_key=_get_bytes(rec, b"k", tid, QD_PK_LEN, QD_PK_LEN),
        signature=_get_bytes(rec, b"sig", tid, QD_SIG_LEN, QD_SIG_LEN),
        value=_get_bytes(rec, b"v", tid, 0, QD_VALUE_MAX, code=KrpcErrorCode.MESSAGE_TOO_BIG),
    )


# ---- messages ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Fields every KRPC message may carry at the top level."""

    transaction_id: bytes
    """``t``: chosen by the querier, echoed in the response (1..32 bytes)."""
    client_version: Optional[bytes] = None
    """``v``: client identifier and version (BEP 5, BEP 20), if sent."""
    ip: Optional[PeerAddr] = None
    """``ip``: the receiver's address as the sender sees it (BEP 42 "Bootstrapping")."""

    def _to_dict(self) -> dict:
        """Abstract: every concrete subclass overrides this."""
        raise NotImplementedError

    def channel_only(self) -> bool:
        """Whether this message may only travel over a qudag channel, never UDP."""
        return False

    def encode(self) -> bytes:
        """Bencode this message; ``LocalProtocolError`` if a field breaks a rule."""
        try:
            d = self._to_dict()
            _from_dict(d)
        except KrpcError as exc:
            raise LocalProtocolError(f"cannot encode {type(self).__name__}: {exc}") from None
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise LocalProtocolError(f"cannot encode {type(self).__name__}: {exc}") from None
        return bencode.encode(d)

    def fits_datagram(self) -> bool:
        """Whether ``encode_datagram()`` would succeed."""
        return not self.channel_only() and len(self.encode()) <= DATAGRAM_BUDGET

    def encode_datagram(self) -> bytes:
        """``encode()`` for UDP: ``DatagramTooLarge`` if channel-only or over 1,400 bytes."""
        if self.channel_only():
            raise DatagramTooLarge(f"{type(self).__name__} is channel-only")
        data = self.encode()
        if len(data) > DATAGRAM_BUDGET:
            raise DatagramTooLarge(f"{type(self).__name__} is {len(data)} bytes, budget {DATAGRAM_BUDGET}")
        return data

    def _top(self, d: dict) -> dict:
        d[b"t"] = self.transaction_id
        if self.client_version is not None:
            d[b"v"] = self.client_version
        if self.ip is not None:
            d[b"ip"] = self.ip.compact()
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class Query(Message):
    """A query (``y`` = ``q``); subclasses name the method."""

    node_id: bytes
    """``a.id``: the querying node's 20-byte id."""
    read_only: bool = False
    """``ro`` = 1 (BEP 43): the sender is a read-only node; do not add it to the routing
    table (nor ping it), just answer."""

    METHOD: ClassVar[bytes] = b""
    CHANNEL_ONLY: ClassVar[bool] = False

    def _args(self) -> dict:
        return {}

    def _to_dict(self) -> dict:
        args = self._args()
        args[b"id"] = self.node_id
        d = {b"y": b"q", b"q": self.METHOD, b"a": args}
        if self.read_only:
            d[b"ro"] = 1
        return self._top(d)

    def channel_only(self) -> bool:
        return self.CHANNEL_ONLY


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Query):
    """BEP 5 ``ping``."""

    METHOD: ClassVar[bytes] = b"ping"


@dataclass(frozen=True, slots=True, kw_only=True)
class FindNode(Query):
    """BEP 5 ``find_node``."""

    target: bytes
    """The 20-byte id sought."""

    METHOD: ClassVar[bytes] = b"find_node"

    def _args(self) -> dict:
        return {b"target": self.target}


@dataclass(frozen=True, slots=True, kw_only=True)
class GetPeers(Query):
    """BEP 5 ``get_peers``."""

    info_hash: bytes
    """The torrent's 20-byte infohash (a DHT key)."""

    METHOD: ClassVar[bytes] = b"get_peers"

    def _args(self) -> dict:
        return {b"info_hash": self.info_hash}


@dataclass(frozen=True, slots=True, kw_only=True)
class AnnouncePeer(Query):
    """BEP 5 ``announce_peer``."""

    info_hash: bytes
    """The 20-byte infohash announced."""
    port: int
    """The peer's port (0..65535 accepted only with ``implied_port`` = 1)."""
    token: bytes
    """The write token from an earlier ``get_peers`` response."""
    implied_port: Optional[int] = None
    """0 or 1 if sent; 1 means "use the UDP source port"."""

    METHOD: ClassVar[bytes] = b"announce_peer"

    def _args(self) -> dict:
        d = {b"info_hash": self.info_hash, b"port": self.port, b"token": self.token}
        if self.implied_port is not None:
            d[b"implied_port"] = self.implied_port
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class Get(Query):
    """BEP 44 ``get`` (immutable or mutable item)."""

    target: bytes
    """SHA-1 of the bencoded value (immutable) or of key + salt (mutable)."""
    seq: Optional[int] = None
    """Only send the item if its sequence number is greater than this."""

    METHOD: ClassVar[bytes] = b"get"

    def _args(self) -> dict:
        d: dict[bytes, Any] = {b"target": self.target}
        if self.seq is not None:
            d[b"seq"] = self.seq
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class Put(Query):
    """BEP 44 ``put``: immutable when ``key`` is None, mutable otherwise."""

    token: bytes
    """Write token from an earlier ``get`` response."""
    value: bytes
    """The *bencoded* ``v`` (at most 1000 bytes)."""
    key: Optional[bytes] = None
    """``k``: ed25519 public key (32 bytes), mutable items only."""
    signature: Optional[bytes] = None
    """``sig``: ed25519 signature (64 bytes) over ``mutable_signing_buffer``."""
    seq: Optional[int] = None
    """``seq``: sequence number, 0..2**63-1."""
    salt: Optional[bytes] = None
    """``salt``: at most 64 bytes."""
    cas: Optional[int] = None
    """``cas``: expected current sequence number (compare and swap)."""

    METHOD: ClassVar[bytes] = b"put"

    @property
    def is_mutable(self) -> bool:
        return self.key is not None

    def target(self) -> bytes:
        if self.key is None:
            return immutable_target(self.value)
        return mutable_target(self.key, self.salt or b"")

    def verify(self) -> None:
        """Check a mutable item's signature: ``KrpcError`` 206 if it fails."""
        if self.key is None or self.signature is None or self.seq is None:
            raise KrpcError("not a mutable put", error_code=_PROTO, transaction_id=self.transaction_id)
        verify_mutable(self.key, self.signature, self.value, self.seq, self.salt or b"")

    def _args(self) -> dict:
        d: dict[bytes, Any] = {b"token": self.token, b"v": bencode.decode(self.value, BEP44_VALUE_MAX)}
        for k, v in ((b"k", self.key), (b"sig", self.signature), (b"seq", self.seq),
                     (b"salt", self.salt), (b"cas", self.cas)):
            if v is not None:
                d[k] = v
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class QdGet(Query):
    """qudag ``qd_get``: fetch an ML-DSA-signed record (channel-only)."""

    target: bytes
    """``qd_target(public_key, salt)``, 20 bytes."""
    record_type: int
    """Record type wanted (``RecordType``)."""
    revision: Optional[int] = None
    """Only return a record with a greater revision."""

    METHOD: ClassVar[bytes] = b"qd_get"
    CHANNEL_ONLY: ClassVar[bool] = True

    def _args(self) -> dict:
        d: dict[bytes, Any] = {b"target": self.target, b"rt": self.record_type}
        if self.revision is not None:
            d[b"rev"] = self.revision
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class QdPut(Query):
    """qudag ``qd_put``: store an ML-DSA-signed record (channel-only)."""

    token: bytes
    """Write token from an earlier ``qd_get`` response."""
    record: QdRecord
    """The signed record."""
    salt: bytes = b""
    """Salt mixed into the target and the signed buffer (at most 64 bytes)."""

    METHOD: ClassVar[bytes] = b"qd_put"
    CHANNEL_ONLY: ClassVar[bool] = True

    def target(self) -> bytes:
        return self.record.target(self.salt)

    def verify(self) -> None:
        self.record.verify(self.salt)

    def _args(self) -> dict:
        d: dict[bytes, Any] = {b"token": self.token, b"rec": self.record._to_dict()}
        if self.salt:
            d[b"salt"] = self.salt
        return d


@dataclass(frozen=True, slots=True, kw_only=True)
class UnknownQuery(Message):
    """A query whose method we do not implement: answer 204 (BEP 5 "Errors")."""

    method: bytes
    """``q`` as received."""
    node_id: Optional[bytes] = None
    """``a.id`` if it was present and well formed."""
    read_only: bool = False
    """``ro`` = 1 (BEP 43), as on ``Query``."""

    def _to_dict(self) -> dict:
        args = {} if self.node_id is None else {b"id": self.node_id}
        d = {b"y": b"q", b"q": self.method, b"a": args}
        if self.read_only:
            d[b"ro"] = 1
        return self._top(d)


@dataclass(frozen=True, slots=True, kw_only=True)
class Response(Message):
    """A response (``y`` = ``r``).  Which optional fields are set depends on the query."""

    node_id: bytes
    """``r.id``: the responding node's id."""
    nodes: Optional[tuple[NodeInfo, ...]] = None
    """``nodes``: IPv4 compact node info (BEP 5)."""
    nodes6: Optional[tuple[NodeInfo, ...]] = None
    """``nodes6``: IPv6 compact node info (BEP 32)."""
    values: Optional[tuple[PeerAddr, ...]] = None
    """``values``: compact peer addresses (``get_peers``)."""
    token: Optional[bytes] = None
    """``token``: write token (``get_peers``, ``get``, ``qd_get``)."""
    value: Optional[bytes] = None
    """``v``: the *bencoded* BEP 44 item."""
    key: Optional[bytes] = None
    """``k``: BEP 44 ed25519 public key."""
    seq: Optional[int] = None
    """``seq``: BEP 44 sequence number."""
    signature: Optional[bytes] = None
    """``sig``: BEP 44 ed25519 signature."""
    record: Optional[QdRecord] = None
    """``rec``: a qudag record (``qd_get``); makes the response channel-only."""

    def channel_only(self) -> bool:
        return self.record is not None

    def verify_item(self, target: bytes, salt: bytes = b"") -> None:
        """Check the BEP 44 item in a ``get`` response against the ``target`` looked up
        (BEP 44 "Signature Verification": the key must hash to the target and the
        signature verify).  ``KrpcError`` 203 for a missing or mismatched item, 206 for a
        bad signature."""
        tid = self.transaction_id
        if self.value is None:
            raise _fail("response carries no item", tid)
        if self.key is None:
            if immutable_target(self.value) != target:
                raise _fail("immutable item does not hash to the target", tid)
            return
        if self.signature is None or self.seq is None:
            raise _fail("mutable item without 'sig' or 'seq'", tid)
        if mutable_target(self.key, salt) != target:
            raise _fail("mutable item key does not hash to the target", tid)
        verify_mutable(self.key, self.signature, self.value, self.seq, salt)

    def verify_record(self, target: bytes, salt: bytes = b"") -> None:
        """Check the qudag record in a ``qd_get`` response against ``target`` and ``salt``."""
        if self.record is None:
            raise _fail("response carries no record", self.transaction_id)
        if self.record.target(salt) != target:
            raise _fail("record key does not hash to the target", self.transaction_id)
        self.record.verify(salt)

    def _to_dict(self) -> dict:
        r: dict[bytes, Any] = {b"id": self.node_id}
        if self.nodes is not None:
            r[b"nodes"] = b"".join(n.compact() for n in self.nodes)
        if self.nodes6 is not None:
            r[b"nodes6"] = b"".join(n.compact() for n in self.nodes6)
        if self.values is not None:
            r[b"values"] = [p.compact() for p in self.values]
        if self.token is not None:
            r[b"token"] = self.token
        if self.value is not None:
            r[b"v"] = bencode.decode(self.value, BEP44_VALUE_MAX)
        if self.key is not None:
            r[b"k"] = self.key
        if self.seq is not None:
            r[b"seq"] = self.seq
        if self.signature is not None:
            r[b"sig"] = self.signature
        if self.record is not None:
            r[b"rec"] = self.record._to_dict()
        return self._top({b"y": b"r", b"r": r})


@dataclass(frozen=True, slots=True, kw_only=True)
class Error(Message):
    """An error (``y`` = ``e``): ``e`` = [code, message] (BEP 5 "Errors")."""

    code: int
    """KRPC error code (``KrpcErrorCode``; an open set)."""
    message: bytes = b""
    """Human-readable text, at most 1024 bytes."""

    def _to_dict(self) -> dict:
        return self._top({b"y": b"e", b"e": [self.code, self.message]})

    @classmethod
    def for_exception(cls, exc: KrpcError, *, transaction_id: bytes,
                      client_version: Optional[bytes] = None) -> "Error":
        """The reply a node sends for a ``KrpcError`` raised while handling a query."""
        text = str(exc).encode("utf-8", "replace")[:ERROR_TEXT_MAX]
        return cls(transaction_id=transaction_id, client_version=client_version,
                   code=exc.error_code, message=text)


# ---- parser ------------------------------------------------------------------------


# The lookup queries every node answers (ping, find_node, get_peers) are built slot by
# slot like replies (``_build``); field order: transaction_id, client_version, ip,
# node_id, read_only, then the method's own.


def _q_ping(common: dict, a: dict, tid: bytes) -> Query:
    return _build(Ping, (tid, common.get("client_version"), common.get("ip"), common["node_id"],
                         common["read_only"]))


def _q_find_node(common: dict, a: dict, tid: bytes) -> Query:
    return _build(FindNode, (tid, common.get("client_version"), common.get("ip"), common["node_id"],
                             common["read_only"], _get_bytes(a, b"target", tid, ID_LEN, ID_LEN)))


def _q_get_peers(common: dict, a: dict, tid: bytes) -> Query:
    return _build(GetPeers, (tid, common.get("client_version"), common.get("ip"), common["node_id"],
                             common["read_only"], _get_bytes(a, b"info_hash", tid, ID_LEN, ID_LEN)))


def _q_announce_peer(common: dict, a: dict, tid: bytes) -> Query:
    implied = _get_int(a, b"implied_port", tid, 0, 1, required=False)
    return AnnouncePeer(
        info_hash=_get_bytes(a, b"info_hash", tid, ID_LEN, ID_LEN),
        port=_get_int(a, b"port", tid, 0 if implied else 1, 0xFFFF),
        token=_get_bytes(a, b"token", tid, 1, TOKEN_MAX),
        implied_port=implied,
        **common,
    )


def _q_get(common: dict, a: dict, tid: bytes) -> Query:
    return Get(target=_get_bytes(a, b"target", tid, ID_LEN, ID_LEN),
               seq=_get_int(a, b"seq", tid, 0, SEQ_MAX, required=False), **common)


def _q_put(common: dict, a: dict, tid: bytes) -> Query:
    token = _get_bytes(a, b"token", tid, 1, TOKEN_MAX)
    value = _value_raw(a, tid, required=True)
    key = _get_bytes(a, b"k", tid, ED25519_KEY_LEN, ED25519_KEY_LEN, required=False)
    salt = _get_bytes(a, b"salt", tid, 0, BEP44_SALT_MAX, required=False, code=KrpcErrorCode.SALT_TOO_BIG)
    if key is None:
        for k in (b"sig", b"seq", b"salt", b"cas"):
            if k in a:
                raise _fail(f"immutable put with {k.decode()!r}", tid)
        return Put(token=token, value=value, **common)
    return Put(
        token=token,
        value=value,
        key=key,
        signature=_get_bytes(a, b"sig", tid, ED25519_SIG_LEN, ED25519_SIG_LEN),
        seq=_get_int(a, b"seq", tid, 0, SEQ_MAX),
        salt=salt,
        cas=_get_int(a, b"cas", tid, 0, SEQ_MAX, required=False),
        **common,
    )


def _q_qd_get(common: dict, a: dict, tid: bytes) -> Query:
    return QdGet(target=_get_bytes(a, b"target", tid, ID_LEN, ID_LEN),
                 record_type=_get_int(a, b"rt", tid, 0, 0xFFFF),
                 revision=_get_int(a, b"rev", tid, 0, SEQ_MAX, required=False), **common)


def _q_qd_put(common: dict, a: dict, tid: bytes) -> Query:
    salt = _get_bytes(a, b"salt", tid, 0, QD_SALT_MAX, required=False, code=KrpcErrorCode.SALT_TOO_BIG)
    return QdPut(token=_get_bytes(a, b"token", tid, 1, TOKEN_MAX), record=_parse_record(a, tid),
                 salt=salt if salt is not None else b"", **common)


_QUERIES = {
    b"ping": _q_ping,
    b"find_node": _q_find_node,
    b"get_peers": _q_get_peers,
    b"announce_peer": _q_announce_peer,
    b"get": _q_get,
    b"put": _q_put,
    b"qd_get": _q_qd_get,
    b"qd_put": _q_qd_put,
}


def _node_list(r: dict, key: bytes, step: int, tid: bytes, raw: bool) -> tuple:
    """``(parsed, None)`` or, with ``raw``, ``(None, checked compact bytes)`` for the node
    list under ``key`` (``(None, None)`` when absent)."""
    data = _get_bytes(r, key, tid, 0, MESSAGE_MAX_SIZE, required=False)
    if data is None:
        return None, None
    what = key.decode()
    if raw:
        _check_nodes(data, step, tid, what)
        return None, data
    return _parse_nodes(data, step, tid, what), None


def _parse_response(common: dict, msg: dict, tid: bytes) -> Response:
    return _response(common, msg, tid, False)[0]


def _response(common: dict, msg: dict, tid: bytes, raw_nodes: bool) -> tuple:
    """``(response, nodes, nodes6)``.  With ``raw_nodes`` the two node lists are checked
    exactly as ``_parse_nodes`` checks them but returned as their compact bytes (None if
    absent) and left unset in the response; otherwise they are parsed into it."""
    r = _get_dict(msg, b"r", tid)
    node_id = _get_bytes(r, b"id", tid, ID_LEN, ID_LEN)
    values = None
    nodes, raw4 = _node_list(r, b"nodes", 26, tid, raw_nodes)
    nodes6, raw6 = _node_list(r, b"nodes6", 38, tid, raw_nodes)
    vals = r.get(b"values")
    if vals is not None:
        if type(vals) is not list:
            raise _fail("'values' must be a list", tid)
        out = []
        for item in vals:
            if type(item) is not bytes or len(item) not in (6, 18):
                raise _fail("'values' entries must be 6- or 18-byte compact addresses", tid)
            out.append(_parse_addr(item, tid, "values"))
        values = tuple(out)
    record = None
    if b"rec" in r:
        record = _parse_record(r, tid)
    resp = _build(Response, (
        tid,
        common.get("client_version"),
        common.get("ip"),
        node_id,
        nodes,
        nodes6,
        values,
        _get_bytes(r, b"token", tid, 1, TOKEN_MAX, required=False),
        _value_raw(r, tid, required=False),
        _get_bytes(r, b"k", tid, ED25519_KEY_LEN, ED25519_KEY_LEN, required=False),
        _get_int(r, b"seq", tid, 0, SEQ_MAX, required=False),
        _get_bytes(r, b"sig", tid, ED25519_SIG_LEN, ED25519_SIG_LEN, required=False),
        record,
    ))
    return resp, raw4, raw6


_new_object = object.__new__
_set_field = object.__setattr__
#: each fast-built message class's fields in declaration order (what ``_build`` takes)
_FIELDS = {cls: tuple(f.name for f in fields(cls)) for cls in (Response, Ping, FindNode, GetPeers)}


def _build(cls: type, values: tuple) -> Message:
    """A parsed message built slot by slot, ``values`` in ``_FIELDS[cls]`` order: the same
    object the dataclass ``__init__`` makes (none of these has a ``__post_init__``),
    without its keyword-argument call, a sizeable part of parsing every lookup datagram."""
    names = _FIELDS[cls]
    if cython.compiled:
        r = qudag_alloc_instance(cls)
        for name, v in zip(names, values):
            PyObject_GenericSetAttr(r, name, v)
        return r
    r = _new_object(cls)
    for name, v in zip(names, values):
        _set_field(r, name, v)
    return r


def _parse_error(common: dict, msg: dict, tid: bytes) -> Error:
    e = msg.get(b"e")
    if type(e) is not list or len(e) != 2 or type(e[0]) is not int or type(e[1]) is not bytes:
        raise _fail("'e' must be [integer, string]", tid)
    if not 0 <= e[0] <= 0x7FFFFFFF:
        raise _fail("error code out of range", tid)
    if len(e[1]) > ERROR_TEXT_MAX:
        raise _fail("error message too long", tid)
    return Error(code=e[0], message=e[1], **common)


def _common(msg: Any) -> dict:
    """The fields every message has: ``transaction_id``, ``client_version``, ``ip``."""
    if type(msg) is not dict:
        raise _fail("a KRPC message is a dictionary", None)
    tid = _get_bytes(msg, b"t", None, 1, TID_MAX)
    common: dict[str, Any] = {"transaction_id": tid}
    version = _get_bytes(msg, b"v", tid, 0, VERSION_MAX, required=False)
    if version is not None:
        common["client_version"] = version
    ip = msg.get(b"ip")
    if ip is not None:
        if type(ip) is not bytes or len(ip) not in (6, 18):
            raise _fail("'ip' must be a 6- or 18-byte compact address", tid)
        common["ip"] = _parse_addr(ip, tid, "ip")
    return common


def _from_dict(msg: Any) -> Message:
    common = _common(msg)
    tid = common["transaction_id"]
    y = msg.get(b"y")
    if y == b"q":
        method = _get_bytes(msg, b"q", tid, 1, METHOD_MAX)
        a = _get_dict(msg, b"a", tid)
        # BEP 43 "Read-Only State": a read-only node sends ``ro`` = 1 ("2:roi1e") in the
        # top-level dictionary of its queries, and receivers "inspect incoming queries for
        # the 'ro' flag set to 1".  Any other value or type is not that flag and, like
        # every unknown key (BEP 5 "KRPC Protocol"), is ignored rather than refused: a
        # stray ``ro`` must not turn a well-formed query into a 203.  Responses and
        # errors carry no flag (BEP 43 speaks of queries only).
        ro = msg.get(b"ro")
        common["read_only"] = ro is not None and type(ro) is int and ro == 1
        parse = _QUERIES.get(method)
        if parse is None:
            node_id = a.get(b"id")
            if type(node_id) is not bytes or len(node_id) != ID_LEN:
                node_id = None
            return UnknownQuery(method=method, node_id=node_id, **common)
        common["node_id"] = _get_bytes(a, b"id", tid, ID_LEN, ID_LEN)
        return parse(common, a, tid)
    if y == b"r":
        return _parse_response(common, msg, tid)
    if y == b"e":
        return _parse_error(common, msg, tid)
    raise _fail("'y' must be 'q', 'r' or 'e'", tid)


def parse_message(data: bytes, max_size: int = MESSAGE_MAX_SIZE) -> Union[Query, UnknownQuery, Response, Error]:
    """Parse one KRPC message; ``KrpcError`` (incl. ``BencodeError``) for anything else."""
    return _from_dict(bencode.decode(data, max_size))  # type: ignore[return-value]


def parse_datagram(data: bytes) -> tuple:
    """``(message, nodes, nodes6)``: ``parse_message`` for a node's receive path.  A
    response comes back with its ``nodes``/``nodes6`` unset and their compact bytes
    beside it (checked exactly as ``parse_message`` checks them, so the same inputs are
    refused with the same errors); for anything else both are None.  A lookup reads ids
    out of those bytes and converts only the nodes it has not seen: building k
    ``NodeInfo`` per reply was most of the cost of parsing one."""
    d = bencode.decode(data, MESSAGE_MAX_SIZE)
    if type(d) is dict and d.get(b"y") == b"r":
        common = _common(d)
        return _response(common, d, common["transaction_id"], True)
    return _from_dict(d), None, None


# ---- BEP 44 helpers ----------------------------------------------------------------


def immutable_target(value: bytes) -> bytes:
    """BEP 44 "Immutable Items": SHA-1 of the bencoded value."""
    return hashlib.sha1(bytes(value)).digest()


def mutable_target(public_key: bytes, salt: bytes = b"") -> bytes:
    """BEP 44 "Mutable Items": SHA-1 of the public key followed by the salt."""
    return hashlib.sha1(bytes(public_key) + bytes(salt)).digest()


def mutable_signing_buffer(value: bytes, seq: int, salt: bytes = b"") -> bytes:
    """BEP 44 "Signature Verification": ``[4:salt<n>:<salt>]3:seqi<seq>e1:v<bencoded v>``."""
    salt = bytes(salt)
    prefix = b"4:salt%d:%s" % (len(salt), salt) if salt else b""
    return prefix + b"3:seqi%de1:v" % seq + bytes(value)


def sign_mutable(private_key: Any, value: bytes, seq: int, salt: bytes = b"") -> bytes:
    """ed25519-sign a mutable item; ``private_key`` is a 32-byte seed or a ``cryptography``
    ``Ed25519PrivateKey``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not isinstance(private_key, Ed25519PrivateKey):
        private_key = Ed25519PrivateKey.from_private_bytes(bytes(private_key))
    return private_key.sign(mutable_signing_buffer(value, seq, salt))


def verify_mutable(public_key: bytes, signature: bytes, value: bytes, seq: int, salt: bytes = b"") -> None:
    """Raise ``KrpcError`` 206 unless ``signature`` signs the item under ``public_key``."""
    from cryptography.exceptions import InvalidSignature as _LibInvalid
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(bytes(public_key)).verify(
            bytes(signature), mutable_signing_buffer(value, seq, salt))
    except (_LibInvalid, ValueError):
        raise KrpcError("BEP 44 signature does not verify", error_code=KrpcErrorCode.INVALID_SIGNATURE) from None


# ---- qudag record helpers ----------------------------------------------------------


def qd_target(public_key: bytes, salt: bytes = b"") -> bytes:
    """First 20 bytes of BLAKE3(QD_TARGET_TAG || 0x00 || public_key || salt)."""
    from qudag_core.crypto import blake3_hash

    return blake3_hash(QD_TARGET_TAG + b"\x00" + bytes(public_key) + bytes(salt), 20)


def qd_signing_buffer(record_type: int, revision: int, value: bytes, salt: bytes = b"") -> bytes:
    """Canonical bencoding of ``{rev, rt, salt, v}``: what the ML-DSA signature covers."""
    return bencode.encode({b"rev": revision, b"rt": record_type, b"salt": bytes(salt), b"v": bytes(value)})


def sign_qd_record(private_key: Any, *, record_type: int, revision: int, value: bytes,
                   salt: bytes = b"") -> QdRecord:
    """Build a signed ``QdRecord`` with a ``qudag_core.crypto.MlDsa65PrivateKey``."""
    sig = private_key.sign(qd_signing_buffer(record_type, revision, value, salt), QD_SIGN_CONTEXT)
    return QdRecord(record_type=record_type, revision=revision, public_key=private_key.public_key.raw,
                    signature=sig, value=bytes(value))
