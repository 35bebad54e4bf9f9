"""Handshake framing and message layouts (docs/handshake.md §2).

Every handshake message travels in a frame ``u8 type || u16 body_length || body``.
Frame types form an open set: an unknown type is not a crash but an
``UnexpectedMessage`` in whatever state meets it, and a state parses only the types it
allows, with a per-type body bound checked from the header *before* the body is
buffered (STYLE.md §3, §6).

The decision a reader asks about: the initiator's certificate is padded to one fixed
size before encryption, so every INIT of a given version list has the same length and a
passive observer learns nothing from it (docs/handshake.md §4.4).
"""
from __future__ import annotations

import struct

from qudag_core.crypto.aead import TAG_SIZE
from qudag_core.crypto.mlkem import CT_SIZE as MLKEM_CT_SIZE
from qudag_core.crypto.xwing import PK_SIZE as XWING_PK_SIZE
from qudag_core.handshake.errors import MalformedMessage, MessageTooLarge, UnexpectedMessage
from qudag_core.identity import MAX_CERT_SIZE

__all__ = [
    "FRAME_HEADER_SIZE",
    "T_CERT_REQUEST",
    "T_CERT_REPLY",
    "T_INIT",
    "T_COOKIE",
    "T_RESPONSE",
    "T_FINISH",
    "T_ALERT",
    "MAX_VERSIONS",
    "COOKIE_SIZE",
    "CONFIRM_SIZE",
    "CERT_PLAINTEXT_SIZE",
    "X25519_SIZE",
    "INIT_FIXED_SIZE",
    "ENC_CERT_SIZE",
    "RESPONSE_BODY_SIZE",
    "CERT_REQUEST_MIN",
    "CERT_REQUEST_MAX",
    "MAX_BODY",
    "frame",
    "encode_versions",
    "split_init",
    "FrameReader",
]

FRAME_HEADER_SIZE = 3
T_CERT_REQUEST = 0x01
T_CERT_REPLY = 0x02
T_INIT = 0x03
T_COOKIE = 0x04
T_RESPONSE = 0x05
T_FINISH = 0x06
T_ALERT = 0x15

MAX_VERSIONS = 8
COOKIE_SIZE = 16
CONFIRM_SIZE = 32
ALERT_BODY_SIZE = 2
# u16 certificate length || certificate || zero padding, always this long.
CERT_PLAINTEXT_SIZE = 2 + MAX_CERT_SIZE
ENC_CERT_SIZE = CERT_PLAINTEXT_SIZE + TAG_SIZE
X25519_SIZE = 32
# INIT core after the version list: ephemeral X-Wing key, ML-KEM half of ct1 (its X25519
# half is the ephemeral key's), encrypted padded certificate.
INIT_FIXED_SIZE = XWING_PK_SIZE + MLKEM_CT_SIZE + ENC_CERT_SIZE
# RESPONSE: u16 version, shared X25519 share, ML-KEM halves of ct2 and ct3, confirmation.
RESPONSE_BODY_SIZE = 2 + X25519_SIZE + 2 * MLKEM_CT_SIZE + CONFIRM_SIZE
# A CERT_REQUEST is padded so that the reply (at most one certificate) stays within
# the 3x anti-amplification budget: 3 * (3 + 2400) >= 3 + MAX_CERT_SIZE.
CERT_REQUEST_MIN = 2400
CERT_REQUEST_MAX = 4096

#: Largest body each frame type may declare.
MAX_BODY = {
    T_CERT_REQUEST: CERT_REQUEST_MAX,
    T_CERT_REPLY: MAX_CERT_SIZE,
    T_INIT: 1 + 2 * MAX_VERSIONS + INIT_FIXED_SIZE + 1 + COOKIE_SIZE,
    T_COOKIE: COOKIE_SIZE,
    T_RESPONSE: RESPONSE_BODY_SIZE,
    T_FINISH: CONFIRM_SIZE,
    T_ALERT: ALERT_BODY_SIZE,
}


def frame(ftype: int, body: bytes) -> bytes:
    return struct.pack(">BH", ftype, len(body)) + body


def encode_versions(versions) -> bytes:
    versions = tuple(versions)
    cached = _VERSION_FIELDS.get(versions)
    if cached is not None:
        return cached
    if not 1 <= len(versions) <= MAX_VERSIONS:
        raise ValueError(f"offer 1..{MAX_VERSIONS} versions")
    if len(set(versions)) != len(versions) or not all(isinstance(v, int) and 0 < v < 65536 for v in versions):
        raise ValueError("versions must be distinct integers in 1..65535")
    field = bytes((len(versions),)) + struct.pack(f">{len(versions)}H", *versions)
    if len(_VERSION_FIELDS) < 64:
        _VERSION_FIELDS[versions] = field
    return field


_VERSION_FIELDS: dict = {}


_VERSION_LISTS = [struct.Struct(f">{n}H") for n in range(MAX_VERSIONS + 1)]


def split_init(body: bytes) -> tuple:
    """Split an INIT body into ``(core, versions, cookie)``; ``core`` is everything the
    transcript and the cookie MAC cover.  Raises ``MalformedMessage``."""
    n = len(body)
    if n < 1:
        raise MalformedMessage("empty INIT")
    count = body[0]
    if not 1 <= count <= MAX_VERSIONS:
        raise MalformedMessage(f"INIT offers {count} versions")
    core_len = 1 + 2 * count + INIT_FIXED_SIZE
    if n < core_len + 1:
        raise MalformedMessage("INIT truncated")
    cookie_len = body[core_len]
    if cookie_len not in (0, COOKIE_SIZE) or n != core_len + 1 + cookie_len:
        raise MalformedMessage("INIT cookie field has a bad length")
    versions = _VERSION_LISTS[count].unpack_from(body, 1)
    if 0 in versions or len(set(versions)) != count:
        raise MalformedMessage("INIT version list has zero or repeated entries")
    return body[:core_len], versions, body[core_len + 1 :]


class FrameReader:
    """Reassembles frames from a byte stream.  ``next_frame(allowed)`` returns
    ``(type, body)``, ``None`` when more bytes are needed, or raises.  Only the header is
    inspected until the whole body is present, and a body larger than the current
    state allows is refused from its header."""

    __slots__ = ("_buf", "consumed")

    def __init__(self) -> None:
        self._buf = bytearray()
        #: total bytes taken out of the stream as complete frames
        self.consumed = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_frame_from(self, data: bytes, allowed: dict):
        """Fast path for the common case of an empty buffer and one whole frame in
        ``data`` (which must be ``bytes``): the body is returned as a read-only
        ``memoryview`` of ``data``, no copy.  Otherwise buffer ``data`` and return
        ``next_frame(allowed)`` (whose bodies are ``bytes``)."""
        if not self._buf and len(data) >= FRAME_HEADER_SIZE:
            ftype = data[0]
            max_body = allowed.get(ftype, -1)
            length = (data[1] << 8) | data[2]
            if max_body >= 0 and length <= max_body and len(data) == FRAME_HEADER_SIZE + length:
                self.consumed += len(data)
                if type(data) is bytes:
                    return ftype, memoryview(data)[FRAME_HEADER_SIZE:]
                return ftype, bytes(data[FRAME_HEADER_SIZE:])
        self._buf += data
        return self.next_frame(allowed)

    def buffered(self) -> int:
        return len(self._buf)

    def next_frame(self, allowed: dict):
        """``allowed`` maps the frame types this state accepts to their body bound."""
        buf = self._buf
        if not buf:
            return None
        ftype = buf[0]
        max_body = allowed.get(ftype, -1)
        if max_body < 0:
            raise UnexpectedMessage(f"frame type 0x{ftype:02x} not allowed here")
        if len(buf) < FRAME_HEADER_SIZE:
            return None
        length = (buf[1] << 8) | buf[2]
        if length > max_body:
            raise MessageTooLarge(f"frame type 0x{ftype:02x} declares {length} bytes, at most {max_body}")
        end = FRAME_HEADER_SIZE + length
        if len(buf) < end:
            return None
        body = bytes(buf[FRAME_HEADER_SIZE:end])
        del buf[:end]
        self.consumed += end
        return ftype, body

    def take_rest(self) -> bytes:
        rest = bytes(self._buf)
        self._buf.clear()
        return rest
