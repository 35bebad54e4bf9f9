"""STUN message codec (RFC 8489 §5, §14, §15), with the RFC 5780 §7 behaviour-discovery
attributes and the few TURN (RFC 8656 §18) attributes an Allocate needs.  Sans-IO.

* ``parse_message(datagram)`` returns a :class:`StunMessage` or raises :class:`StunError`;
  nothing else escapes, whatever the bytes (the Hypothesis tests feed it everything).
  Every attribute length is checked against the bytes that are actually there before a
  value is sliced, the message length must be a multiple of 4 and match the datagram,
  and the integrity attributes must have their exact sizes.
* ``encode_message(...)`` builds a message, appending MESSAGE-INTEGRITY,
  MESSAGE-INTEGRITY-SHA256 and FINGERPRINT in that order with the header length field
  adjusted for each as §14.5-§14.7 require.
* The decision a reader would ask about: attributes are kept as raw ``(type, value)``
  pairs in wire order (an open set: unknown types survive a parse and a re-encode), and
  typed views (``decode_xor_address``, ``decode_error_code`` ...) decode on demand and
  raise :class:`StunError` on a malformed value.  A parse therefore never fails because
  of an attribute the caller never looks at, unless it is comprehension-required and
  unknown, which ``unknown_comprehension_required`` reports so that a server can answer
  420 (§6.3.1.1) and a client can discard the response (§6.3.3.1).

Attributes after MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
(and after MESSAGE-INTEGRITY-SHA256 other than FINGERPRINT) are ignored, as §14.5/§14.6
require: they are kept in ``StunMessage.ignored`` and never in ``attributes``.  A
FINGERPRINT that is not the last attribute, or that does not match, makes the datagram
"not STUN" (§14.7): :class:`StunError`.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import struct
import unicodedata
import zlib

from qudag_core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAGIC_COOKIE", "HEADER_LENGTH", "FINGERPRINT_XOR",
    "CLASS_REQUEST", "CLASS_INDICATION", "CLASS_SUCCESS", "CLASS_ERROR",
    "METHOD_BINDING", "METHOD_ALLOCATE", "METHOD_REFRESH",
    "Attr", "KNOWN_ATTRIBUTES", "PASSWORD_ALGORITHM_MD5", "PASSWORD_ALGORITHM_SHA256",
    "StunError", "StunMessage",
    "message_type", "split_message_type", "is_stun", "frame_length",
    "parse_message", "encode_message",
    "encode_address", "decode_address", "encode_xor_address", "decode_xor_address",
    "encode_error_code", "decode_error_code", "encode_unknown_attributes",
    "decode_unknown_attributes", "encode_change_request", "decode_change_request",
    "encode_u32", "decode_u32", "encode_requested_transport",
    "encode_password_algorithm", "decode_password_algorithms", "decode_text",
    "opaque_string", "short_term_key", "long_term_key", "userhash",
    "unknown_comprehension_required", "is_comprehension_required",
    "binding_response", "error_response",
]

MAGIC_COOKIE = 0x2112A442
_COOKIE_BYTES = b"\x21\x12\xa4\x42"
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E
# A UDP datagram cannot carry more; anything longer is not ours to parse.
MAX_MESSAGE_LENGTH = 65535

CLASS_REQUEST = 0
CLASS_INDICATION = 1
CLASS_SUCCESS = 2
CLASS_ERROR = 3

METHOD_BINDING = 0x001
METHOD_ALLOCATE = 0x003  # RFC 8656 §18.1
METHOD_REFRESH = 0x004

PASSWORD_ALGORITHM_MD5 = 0x0001  # RFC 8489 §18.5
PASSWORD_ALGORITHM_SHA256 = 0x0002

_HDR = struct.Struct("!HHI12s")
_ATTR_HDR = struct.Struct("!HH")


class Attr:
    """Attribute type codes (RFC 8489 §18.3, RFC 5780 §7, RFC 8656 §18.2).  An open set:
    any other 16-bit value is carried as a plain int."""

    MAPPED_ADDRESS = 0x0001
    CHANGE_REQUEST = 0x0003  # RFC 5780 §7.2
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    LIFETIME = 0x000D  # RFC 8656
    XOR_PEER_ADDRESS = 0x0012  # RFC 8656
    DATA = 0x0013  # RFC 8656
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016  # RFC 8656
    REQUESTED_TRANSPORT = 0x0019  # RFC 8656
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    PADDING = 0x0026  # RFC 5780 §7.6
    RESPONSE_PORT = 0x0027  # RFC 5780 §7.5
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    RESPONSE_ORIGIN = 0x802B  # RFC 5780 §7.3
    OTHER_ADDRESS = 0x802C  # RFC 5780 §7.4


#: Comprehension-required attributes this codec understands.  Used by
#: ``unknown_comprehension_required``; callers that understand more pass their own set.
KNOWN_ATTRIBUTES = frozenset({
    Attr.MAPPED_ADDRESS, Attr.CHANGE_REQUEST, Attr.USERNAME, Attr.MESSAGE_INTEGRITY,
    Attr.ERROR_CODE, Attr.UNKNOWN_ATTRIBUTES, Attr.LIFETIME, Attr.XOR_PEER_ADDRESS,
    Attr.DATA, Attr.REALM, Attr.NONCE, Attr.XOR_RELAYED_ADDRESS, Attr.REQUESTED_TRANSPORT,
    Attr.MESSAGE_INTEGRITY_SHA256, Attr.PASSWORD_ALGORITHM, Attr.USERHASH,
    Attr.XOR_MAPPED_ADDRESS, Attr.PADDING, Attr.RESPONSE_PORT,
})

# §14.3, §14.9, §14.10, §14.4: maximum byte lengths of the text attributes.
_TEXT_LIMITS = {
    Attr.USERNAME: 512,
    Attr.REALM: 763,
    Attr.NONCE: 763,
    Attr.SOFTWARE: 763,
    Attr.ALTERNATE_DOMAIN: 255,
}


class StunError(RemoteProtocolError):
    """The bytes are not a well-formed STUN message, or an attribute value is malformed.
    ``error_code`` is the STUN error code a server would answer with (400 Bad Request)."""

    error_code = 400


def message_type(method: int, cls: int) -> int:
    """Pack a 12-bit method and a 2-bit class into the 14-bit type (RFC 8489 §5, Fig. 3):
    M11..M7 C1 M6..M4 C0 M3..M0."""
    if not 0 <= method <= 0xFFF or not 0 <= cls <= 3:
        raise LocalProtocolError(f"STUN method {method:#x} / class {cls} out of range")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((cls & 1) << 4)
        | ((cls & 2) << 7)
    )


def split_message_type(mtype: int) -> tuple[int, int]:
    """Inverse of :func:`message_type`: ``(method, class)``."""
    method = (mtype & 0x000F) | ((mtype >> 1) & 0x0070) | ((mtype >> 2) & 0x0F80)
    cls = ((mtype >> 4) & 1) | ((mtype >> 7) & 2)
    return method, cls


def is_stun(data: bytes) -> bool:
    """Cheap demultiplexing test (RFC 8489 §6.3, RFC 7983): two zero bits, the magic
    cookie, a 4-aligned length matching the datagram.  A full parse may still fail."""
    if len(data) < HEADER_LENGTH or data[0] & 0xC0:
        return False
    length = (data[2] << 8) | data[3]
    return length % 4 == 0 and HEADER_LENGTH + length == len(data) and data[4:8] == _COOKIE_BYTES


def frame_length(buf: bytes) -> int | None:
    """For STUN over a stream (RFC 8489 §6.2.2): the total length of the message at the
    start of ``buf``, or ``None`` when fewer than 20 bytes are buffered.  Raises
    :class:`StunError` when the header is not a STUN header."""
    if len(buf) < HEADER_LENGTH:
        return None
    if buf[0] & 0xC0 or bytes(buf[4:8]) != _COOKIE_BYTES:
        raise StunError("not a STUN header")
    length = (buf[2] << 8) | buf[3]
    if length % 4:
        raise StunError("STUN message length is not a multiple of 4")
    return HEADER_LENGTH + length


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


class StunMessage:
    """A parsed (or to-be-encoded) STUN message.

    ``attributes`` is the list of ``(type, value)`` pairs in wire order, up to and
    including the integrity and fingerprint attributes; ``ignored`` holds attributes
    that followed an integrity attribute and so must be ignored (§14.5).  ``raw`` is the
    datagram the message was parsed from (``b""`` when built locally).
    """

    __slots__ = (
        "method", "msg_class", "transaction_id", "attributes", "ignored", "raw",
        "_mi_offset", "_mi256_offset", "_mi256_len",
    )

    def __init__(
        self,
        method: int,
        msg_class: int,
        transaction_id: bytes,
        attributes: list[tuple[int, bytes]] | None = None,
    ) -> None:
        if len(transaction_id) != 12:
            raise LocalProtocolError("STUN transaction id must be 12 bytes")
        self.method = method
        self.msg_class = msg_class
        self.transaction_id = bytes(transaction_id)
        self.attributes: list[tuple[int, bytes]] = list(attributes or ())
        self.ignored: list[tuple[int, bytes]] = []
        self.raw = b""
        self._mi_offset = -1
        self._mi256_offset = -1
        self._mi256_len = 0

    def __repr__(self) -> str:
        types = ",".join(f"{t:#06x}" for t, _ in self.attributes)
        return (
            f"StunMessage(method={self.method:#x}, class={self.msg_class}, "
            f"txid={self.transaction_id.hex()}, attributes=[{types}])"
        )

    def get(self, attr_type: int) -> bytes | None:
        """Value of the first attribute of ``attr_type`` (§14: only the first counts)."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    def get_all(self, attr_type: int) -> list[bytes]:
        return [v for t, v in self.attributes if t == attr_type]

    def has(self, attr_type: int) -> bool:
        return self.get(attr_type) is not None

    # ---- typed views -----------------------------------------------------------
    def mapped_address(self) -> tuple[str, int] | None:
        """XOR-MAPPED-ADDRESS, else the RFC 3489 MAPPED-ADDRESS (§14.1), else None."""
        v = self.get(Attr.XOR_MAPPED_ADDRESS)
        if v is not None:
            return decode_xor_address(v, self.transaction_id)
        v = self.get(Attr.MAPPED_ADDRESS)
        if v is not None:
            return decode_address(v)
        return None

    def address(self, attr_type: int) -> tuple[str, int] | None:
        """A (non-XOR) address attribute: RESPONSE-ORIGIN, OTHER-ADDRESS, ALTERNATE-SERVER."""
        v = self.get(attr_type)
        return None if v is None else decode_address(v)

    def xor_address(self, attr_type: int) -> tuple[str, int] | None:
        """An XOR address attribute: XOR-MAPPED/RELAYED/PEER-ADDRESS."""
        v = self.get(attr_type)
        return None if v is None else decode_xor_address(v, self.transaction_id)

    def error_code(self) -> tuple[int, str] | None:
        v = self.get(Attr.ERROR_CODE)
        return None if v is None else decode_error_code(v)

    def text(self, attr_type: int) -> str | None:
        v = self.get(attr_type)
        return None if v is None else decode_text(v, attr_type)

    # ---- integrity ---------------------------------------------------------------
    @property
    def has_integrity(self) -> bool:
        return self._mi_offset >= 0

    @property
    def has_integrity_sha256(self) -> bool:
        return self._mi256_offset >= 0

    def verify_integrity(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY (HMAC-SHA1, §14.5) with ``key``; False when absent."""
        if self._mi_offset < 0:
            return False
        off = self._mi_offset
        expect = self.raw[off + 4:off + 24]
        mac = hmac.new(key, _with_length(self.raw[:off], off - HEADER_LENGTH + 24), "sha1").digest()
        return hmac.compare_digest(mac, expect)

    def verify_integrity_sha256(self, key: bytes) -> bool:
        """Check MESSAGE-INTEGRITY-SHA256 (§14.6, possibly truncated to 16..32 bytes)."""
        if self._mi256_offset < 0:
            return False
        off, n = self._mi256_offset, self._mi256_len
        expect = self.raw[off + 4:off + 4 + n]
        mac = hmac.new(key, _with_length(self.raw[:off], off - HEADER_LENGTH + 4 + n), "sha256").digest()
        return hmac.compare_digest(mac[:n], expect)

    def verify(self, key: bytes) -> bool:
        """Check whichever integrity attribute the message carries (SHA-256 preferred,
        §9.1.4); False when it carries none or the check fails."""
        if self._mi256_offset >= 0:
            return self.verify_integrity_sha256(key)
        return self.verify_integrity(key)


def _with_length(prefix: bytes, length: int) -> bytes:
    return prefix[:2] + struct.pack("!H", length) + prefix[4:]


def parse_message(data: bytes) -> StunMessage:
    """Parse one STUN datagram.  Raises :class:`StunError` (only) if it is not exactly
    one well-formed STUN message.  Padding bytes are ignored, whatever their value."""
    try:
        data = bytes(data)
    except (TypeError, ValueError) as exc:
        raise StunError("STUN input is not bytes") from exc
    n = len(data)
    if n < HEADER_LENGTH:
        raise StunError("datagram shorter than a STUN header")
    if n > HEADER_LENGTH + MAX_MESSAGE_LENGTH:
        raise StunError("datagram longer than any STUN message")
    mtype, length, cookie, txid = _HDR.unpack_from(data, 0)
    if mtype & 0xC000:
        raise StunError("first two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunError("bad STUN magic cookie")
    if length % 4:
        raise StunError("STUN message length is not a multiple of 4")
    if HEADER_LENGTH + length != n:
        raise StunError("STUN message length does not match the datagram")
    method, cls = split_message_type(mtype)
    msg = StunMessage(method, cls, txid)
    msg.raw = data
    attrs = msg.attributes
    off = HEADER_LENGTH
    # 0: normal; 1: after MESSAGE-INTEGRITY; 2: after MESSAGE-INTEGRITY-SHA256
    phase = 0
    while off < n:
        if n - off < 4:
            raise StunError("truncated STUN attribute header")
        atype, alen = _ATTR_HDR.unpack_from(data, off)
        vstart = off + 4
        vend = vstart + alen
        nxt = vend + _pad(alen)
        if nxt > n:
            raise StunError(f"STUN attribute {atype:#06x} runs past the end of the message")
        value = data[vstart:vend]
        if atype == Attr.FINGERPRINT:
            if alen != 4:
                raise StunError("FINGERPRINT must be 4 bytes")
            if nxt != n:
                raise StunError("FINGERPRINT must be the last attribute")
            crc = (zlib.crc32(_with_length(data[:off], off - HEADER_LENGTH + 8)) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            if struct.unpack("!I", value)[0] != crc:
                raise StunError("FINGERPRINT mismatch")
            attrs.append((atype, value))
        elif atype == Attr.MESSAGE_INTEGRITY and phase == 0:
            if alen != 20:
                raise StunError("MESSAGE-INTEGRITY must be 20 bytes")
            msg._mi_offset = off
            attrs.append((atype, value))
            phase = 1
        elif atype == Attr.MESSAGE_INTEGRITY_SHA256 and phase < 2:
            if alen < 16 or alen > 32 or alen % 4:
                raise StunError("MESSAGE-INTEGRITY-SHA256 must be 16..32 bytes, a multiple of 4")
            msg._mi256_offset = off
            msg._mi256_len = alen
            attrs.append((atype, value))
            phase = 2
        elif phase:
            msg.ignored.append((atype, value))
        else:
            attrs.append((atype, value))
        off = nxt
    return msg


def encode_message(
    method: int,
    msg_class: int,
    transaction_id: bytes,
    attributes: list[tuple[int, bytes]] | tuple = (),
    *,
    integrity_key: bytes | None = None,
    integrity_sha256_key: bytes | None = None,
    fingerprint: bool = False,
    pad_byte: int = 0,
) -> bytes:
    """Encode a message.  ``attributes`` must not contain the integrity or fingerprint
    attributes: pass ``integrity_key`` / ``integrity_sha256_key`` / ``fingerprint`` and
    they are appended in the order §14.5-§14.7 require, each computed over the message
    with the length field covering up to and including that attribute.  ``pad_byte``
    fills the 4-byte alignment padding (RFC 5769 uses spaces in places)."""
    if len(transaction_id) != 12:
        raise LocalProtocolError("STUN transaction id must be 12 bytes")
    pad = bytes([pad_byte]) * 3
    parts = []
    for atype, value in attributes:
        if atype in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT):
            raise LocalProtocolError("integrity/fingerprint attributes are added by encode_message")
        if not 0 <= atype <= 0xFFFF or len(value) > 0xFFFF:
            raise LocalProtocolError("STUN attribute type or length out of range")
        parts.append(_ATTR_HDR.pack(atype, len(value)) + bytes(value) + pad[:_pad(len(value))])
    body = b"".join(parts)
    mtype = message_type(method, msg_class)
    tid = bytes(transaction_id)

    def header(length: int) -> bytes:
        if length > MAX_MESSAGE_LENGTH:
            raise LocalProtocolError("STUN message too long")
        return _HDR.pack(mtype, length, MAGIC_COOKIE, tid)

    if integrity_key is not None:
        mac = hmac.new(integrity_key, header(len(body) + 24) + body, "sha1").digest()
        body += _ATTR_HDR.pack(Attr.MESSAGE_INTEGRITY, 20) + mac
    if integrity_sha256_key is not None:
        mac = hmac.new(integrity_sha256_key, header(len(body) + 36) + body, "sha256").digest()
        body += _ATTR_HDR.pack(Attr.MESSAGE_INTEGRITY_SHA256, 32) + mac
    if fingerprint:
        crc = (zlib.crc32(header(len(body) + 8) + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        body += _ATTR_HDR.pack(Attr.FINGERPRINT, 4) + struct.pack("!I", crc)
    return header(len(body)) + body


# ---- attribute values ---------------------------------------------------------------

def _pack_ip(host: str) -> tuple[int, bytes]:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError as exc:
        raise LocalProtocolError(f"not an IP address: {host!r}") from exc
    return (1, ip.packed) if ip.version == 4 else (2, ip.packed)


def encode_address(host: str, port: int) -> bytes:
    """MAPPED-ADDRESS-style value (§14.1): 0, family, port, address."""
    family, packed = _pack_ip(host)
    return struct.pack("!BBH", 0, family, port) + packed


def _split_address(value: bytes) -> tuple[int, int, bytes]:
    if len(value) < 4:
        raise StunError("address attribute shorter than 4 bytes")
    family = value[1]
    port = (value[2] << 8) | value[3]
    if family == 1:
        if len(value) != 8:
            raise StunError("IPv4 address attribute must be 8 bytes")
    elif family == 2:
        if len(value) != 20:
            raise StunError("IPv6 address attribute must be 20 bytes")
    else:
        raise StunError(f"unknown address family {family}")
    return family, port, value[4:]


def _ip_text(family: int, packed: bytes) -> str:
    return str(ipaddress.IPv4Address(packed) if family == 1 else ipaddress.IPv6Address(packed))


def decode_address(value: bytes) -> tuple[str, int]:
    family, port, packed = _split_address(bytes(value))
    return _ip_text(family, packed), port


def encode_xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED-ADDRESS-style value (§14.2): port xor the cookie's top 16 bits,
    address xor the cookie (IPv4) or the cookie and transaction id (IPv6)."""
    family, packed = _pack_ip(host)
    mask = _COOKIE_BYTES + bytes(transaction_id)
    xaddr = bytes(a ^ b for a, b in zip(packed, mask))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + xaddr


def decode_xor_address(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    family, xport, xaddr = _split_address(bytes(value))
    mask = _COOKIE_BYTES + bytes(transaction_id)
    packed = bytes(a ^ b for a, b in zip(xaddr, mask))
    return _ip_text(family, packed), xport ^ (MAGIC_COOKIE >> 16)


def encode_error_code(code: int, reason: str = "") -> bytes:
    """ERROR-CODE (§14.8): class (hundreds) and number, then a UTF-8 reason."""
    if not 300 <= code <= 699:
        raise LocalProtocolError(f"STUN error code {code} outside 300..699")
    phrase = reason.encode("utf-8")
    if len(phrase) > 763:  # §14.8: fewer than 128 characters, at most 763 bytes
        raise LocalProtocolError("ERROR-CODE reason phrase too long")
    return struct.pack("!HBB", 0, code // 100, code % 100) + phrase


def decode_error_code(value: bytes) -> tuple[int, str]:
    value = bytes(value)
    if len(value) < 4:
        raise StunError("ERROR-CODE shorter than 4 bytes")
    cls = value[2] & 0x07
    number = value[3]
    if not 3 <= cls <= 6 or number > 99:
        raise StunError("ERROR-CODE class/number out of range")
    if len(value) > 4 + 763:
        raise StunError("ERROR-CODE reason phrase too long")
    return cls * 100 + number, value[4:].decode("utf-8", "replace")


def encode_unknown_attributes(types: list[int] | tuple) -> bytes:
    return b"".join(struct.pack("!H", t) for t in types)


def decode_unknown_attributes(value: bytes) -> list[int]:
    value = bytes(value)
    if len(value) % 2:
        raise StunError("UNKNOWN-ATTRIBUTES length must be even")
    return [int.from_bytes(value[i:i + 2], "big") for i in range(0, len(value), 2)]


def encode_change_request(change_ip: bool, change_port: bool) -> bytes:
    """CHANGE-REQUEST (RFC 5780 §7.2): flag A 0x4 change IP, flag B 0x2 change port."""
    return struct.pack("!I", (0x4 if change_ip else 0) | (0x2 if change_port else 0))


def decode_change_request(value: bytes) -> tuple[bool, bool]:
    flags = decode_u32(value)
    return bool(flags & 0x4), bool(flags & 0x2)


def encode_u32(n: int) -> bytes:
    return struct.pack("!I", n)


def decode_u32(value: bytes) -> int:
    if len(value) != 4:
        raise StunError("32-bit attribute must be 4 bytes")
    return struct.unpack("!I", bytes(value))[0]


def encode_requested_transport(protocol: int = 17) -> bytes:
    """REQUESTED-TRANSPORT (RFC 8656 §18.7): protocol number (17 = UDP) + 3 RFFU bytes."""
    return bytes([protocol, 0, 0, 0])


def encode_password_algorithm(algorithm: int, params: bytes = b"") -> bytes:
    """PASSWORD-ALGORITHM (§14.12); one entry of PASSWORD-ALGORITHMS (§14.11)."""
    return struct.pack("!HH", algorithm, len(params)) + params + b"\0" * _pad(len(params))


def decode_password_algorithms(value: bytes) -> list[tuple[int, bytes]]:
    """PASSWORD-ALGORITHMS (a list) or PASSWORD-ALGORITHM (one entry): [(alg, params)]."""
    value = bytes(value)
    out = []
    off = 0
    while off < len(value):
        if len(value) - off < 4:
            raise StunError("truncated PASSWORD-ALGORITHM entry")
        alg, plen = struct.unpack_from("!HH", value, off)
        end = off + 4 + plen
        if end > len(value):
            raise StunError("PASSWORD-ALGORITHM parameters run past the attribute")
        out.append((alg, value[off + 4:end]))
        off = end + _pad(plen)
    return out


def decode_text(value: bytes, attr_type: int = Attr.SOFTWARE) -> str:
    """A UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE ...), length-checked."""
    limit = _TEXT_LIMITS.get(attr_type, 763)
    if len(value) > limit:
        raise StunError(f"attribute {attr_type:#06x} longer than {limit} bytes")
    try:
        return bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StunError(f"attribute {attr_type:#06x} is not UTF-8") from exc


# ---- credentials (§9) -----------------------------------------------------------------

def opaque_string(text: str) -> str:
    """The PRECIS OpaqueString profile (RFC 8265 §4.2) as STUN uses it for passwords and
    realms: non-ASCII spaces become U+0020, NFC normalisation, control characters and
    empty strings rejected.  (The full PRECIS FreeformClass derivation is not
    implemented; this covers the mapping and normalisation steps that change bytes.)"""
    mapped = "".join(" " if unicodedata.category(ch) == "Zs" else ch for ch in text)
    out = unicodedata.normalize("NFC", mapped)
    if not out or any(unicodedata.category(ch) == "Cc" for ch in out):
        raise LocalProtocolError("credential string is empty or contains control characters")
    return out


def short_term_key(password: str) -> bytes:
    """§9.1.1: key = OpaqueString(password)."""
    return opaque_string(password).encode("utf-8")


def long_term_key(username: str, realm: str, password: str,
                  algorithm: int = PASSWORD_ALGORITHM_MD5) -> bytes:
    """§9.2.2: key = H(username ":" OpaqueString(realm) ":" OpaqueString(password)),
    H = MD5 (16 bytes) or SHA-256 (32 bytes) per PASSWORD-ALGORITHM."""
    material = f"{username}:{opaque_string(realm)}:{opaque_string(password)}".encode("utf-8")
    if algorithm == PASSWORD_ALGORITHM_MD5:
        return hashlib.md5(material).digest()
    if algorithm == PASSWORD_ALGORITHM_SHA256:
        return hashlib.sha256(material).digest()
    raise LocalProtocolError(f"unknown password algorithm {algorithm:#x}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH (§14.4): SHA-256(username ":" OpaqueString(realm))."""
    return hashlib.sha256(f"{username}:{opaque_string(realm)}".encode("utf-8")).digest()


# ---- comprehension rules and responses -------------------------------------------------

def is_comprehension_required(attr_type: int) -> bool:
    """§14: 0x0000-0x7FFF must be understood; 0x8000-0xFFFF may be ignored."""
    return attr_type < 0x8000


def unknown_comprehension_required(msg: StunMessage, known: frozenset = KNOWN_ATTRIBUTES) -> list[int]:
    """Comprehension-required attribute types in ``msg`` not in ``known`` (each once, in
    wire order).  For a request, answer 420 listing them; discard a response that has any."""
    out: list[int] = []
    for t, _ in msg.attributes:
        if t < 0x8000 and t not in known and t not in out:
            out.append(t)
    return out


def error_response(request: StunMessage, code: int, reason: str,
                   extra: list[tuple[int, bytes]] | tuple = (), *,
                   software: str | None = None, fingerprint: bool = True) -> bytes:
    """An error response to ``request`` (§6.3.1.1); ``extra`` carries e.g.
    UNKNOWN-ATTRIBUTES for 420."""
    attrs = [(Attr.ERROR_CODE, encode_error_code(code, reason))] + list(extra)
    if software:
        attrs.append((Attr.SOFTWARE, software.encode("utf-8")))
    return encode_message(request.method, CLASS_ERROR, request.transaction_id, attrs,
                          fingerprint=fingerprint)


def binding_response(
    data: bytes,
    source: tuple[str, int],
    local: tuple[str, int],
    *,
    other_address: tuple[str, int] | None = None,
    software: str | None = None,
) -> tuple[bytes, tuple[str, int]] | None:
    """A minimal stateless Binding server (§6.3, RFC 5780 §6) listening on ``local``:
    ``(response, send_from)`` for the request in ``data`` from ``source``, or ``None``
    when the datagram is not a Binding request and must be silently dropped.

    With ``other_address`` (the server's alternate IP and port) the RFC 5780 attributes
    are added and CHANGE-REQUEST is honoured: ``send_from`` then takes the alternate IP
    and/or port, and RESPONSE-ORIGIN says which.  Unknown comprehension-required
    attributes give 420 with UNKNOWN-ATTRIBUTES; so does CHANGE-REQUEST when there is no
    alternate address (RFC 5780 §6.1)."""
    try:
        req = parse_message(data)
    except StunError:
        return None
    if req.msg_class != CLASS_REQUEST or req.method != METHOD_BINDING:
        return None
    known = KNOWN_ATTRIBUTES if other_address is not None else KNOWN_ATTRIBUTES - {Attr.CHANGE_REQUEST}
    unknown = unknown_comprehension_required(req, known)
    if unknown:
        return error_response(req, 420, "Unknown Attribute",
                              [(Attr.UNKNOWN_ATTRIBUTES, encode_unknown_attributes(unknown))],
                              software=software), local
    send_from = local
    cr = req.get(Attr.CHANGE_REQUEST)
    if cr is not None and other_address is not None:
        try:
            change_ip, change_port = decode_change_request(cr)
        except StunError:
            return error_response(req, 400, "Bad Request", software=software), local
        send_from = (other_address[0] if change_ip else local[0],
                     other_address[1] if change_port else local[1])
    attrs = [(Attr.XOR_MAPPED_ADDRESS, encode_xor_address(source[0], source[1], req.transaction_id))]
    if other_address is not None:
        attrs.append((Attr.RESPONSE_ORIGIN, encode_address(*send_from)))
        attrs.append((Attr.OTHER_ADDRESS, encode_address(*other_address)))
    if software:
        attrs.append((Attr.SOFTWARE, software.encode("utf-8")))
    return encode_message(METHOD_BINDING, CLASS_SUCCESS, req.transaction_id, attrs,
                          fingerprint=True), send_from
