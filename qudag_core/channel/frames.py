"""Wire format of the secure channel and the AEAD backend (docs/channel.md §Wire format).

Stream frame::

    len:u32be || ChaCha20-Poly1305(key, nonce, plaintext = payload || type:u8, aad = len)

``len`` counts everything after it (payload, type byte, 16-byte tag).  The type byte
trails the payload, as the content type does in TLS 1.3's TLSInnerPlaintext (RFC 8446
§5.2): the kernel then decrypts in one block-aligned pass straight into the result.  The nonce is
``0x00000000 || counter:u64be`` with an implicit per-direction counter that starts at 0
for every key.  Datagram::

    counter:u64be || ChaCha20-Poly1305(key, nonce(counter), payload, aad = counter)

Design decision a reader would ask about: the length prefix is sent in clear and
authenticated as associated data, not encrypted.  Encrypting it (OpenSSH's
chacha20-poly1305 with a second key) hides little - TCP segment sizes show frame sizes
anyway - and costs a second cipher call per frame; what matters is that a tampered
length can never be acted on silently: it is range-checked before any buffering and a
wrong value fails the tag.

``FrameCipher`` is the C kernel (``qudag_core._aead``) when it is built, else the pure
fallback below over ``qudag_core.crypto.ChaCha20Poly1305Key``; both produce identical
bytes and open each other's frames (tests/core/channel/test_kernel.py).
"""
from __future__ import annotations

import enum
import struct

from qudag_core.crypto import ChaCha20Poly1305Key

__all__ = [
    "FrameType",
    "FrameCipher",
    "PureFrameCipher",
    "KERNEL",
    "TAG_SIZE",
    "STREAM_HEADER_SIZE",
    "DATAGRAM_HEADER_SIZE",
    "MIN_BODY_SIZE",
    "MAX_CLOSE_REASON",
    "MAX_PING_PAYLOAD",
    "nonce_for",
    "encode_close",
    "decode_close",
]

TAG_SIZE = 16
STREAM_HEADER_SIZE = 4
DATAGRAM_HEADER_SIZE = 8
MIN_BODY_SIZE = 1 + TAG_SIZE
MAX_CLOSE_REASON = 1024
MAX_PING_PAYLOAD = 64

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
_NONCE_PAD = b"\x00\x00\x00\x00"


class FrameType(enum.IntEnum):
    """The encrypted type byte of a stream frame.  Open: unknown types are reported
    (``UnknownFrameReceived``) and ignored, so later versions can add frames."""

    DATA = 0
    KEY_UPDATE = 1
    PING = 2
    PONG = 3
    CLOSE = 4
    ALERT = 5


def nonce_for(counter: int) -> bytes:
    if not 0 <= counter < 1 << 64:
        raise OverflowError("counter must fit in 64 bits")
    return _NONCE_PAD + _U64.pack(counter)


class PureFrameCipher:
    """The pure-Python twin of ``qudag_core._aead.FrameCipher`` (same API, same bytes)."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("FrameCipher key must be 32 bytes")
        self._aead = ChaCha20Poly1305Key(bytes(key))

    def __repr__(self) -> str:
        return "<PureFrameCipher chacha20-poly1305 (key hidden)>"

    def _key(self) -> ChaCha20Poly1305Key:
        if self._aead is None:
            raise ValueError("FrameCipher has been wiped")
        return self._aead

    def seal_frame(self, counter: int, frame_type: int, payload: bytes) -> bytes:
        if not 0 <= frame_type <= 255:
            raise ValueError("frame_type must fit in a byte")
        header = _U32.pack(1 + len(payload) + TAG_SIZE)
        return header + self._key().seal(nonce_for(counter), bytes(payload) + bytes((frame_type,)), header)

    def open_frame(self, counter: int, frame: bytes) -> tuple[int, bytes]:
        frame = bytes(frame)
        if len(frame) < STREAM_HEADER_SIZE + MIN_BODY_SIZE or _U32.unpack_from(frame)[0] != len(frame) - STREAM_HEADER_SIZE:
            raise ValueError("frame length does not match its header")
        pt = self._key().open(nonce_for(counter), frame[STREAM_HEADER_SIZE:], frame[:STREAM_HEADER_SIZE])
        return pt[-1], pt[:-1]

    def seal_datagram(self, counter: int, payload: bytes) -> bytes:
        nonce = nonce_for(counter)
        header = nonce[len(_NONCE_PAD):]
        return header + self._key().seal(nonce, bytes(payload), header)

    def open_datagram(self, packet: bytes) -> bytes:
        packet = bytes(packet)
        if len(packet) < DATAGRAM_HEADER_SIZE + TAG_SIZE:
            raise ValueError("datagram shorter than header and tag")
        header = packet[:DATAGRAM_HEADER_SIZE]
        return self._key().open(_NONCE_PAD + header, packet[DATAGRAM_HEADER_SIZE:], header)

    def wipe(self) -> None:
        # cryptography keeps its own copy of the key; dropping our reference is all
        # Python allows (docs/channel.md §Key erasure).
        self._aead = None


try:
    from qudag_core._aead import FrameCipher

    KERNEL = True
except ImportError:
    FrameCipher = PureFrameCipher
    KERNEL = False


def encode_close(code: int, reason: str) -> bytes:
    """CLOSE/ALERT payload: ``code:u16be || reason`` (UTF-8, cut to MAX_CLOSE_REASON)."""
    if not 0 <= code <= 0xFFFF:
        raise ValueError("close code must fit in 16 bits")
    raw = reason.encode("utf-8")[:MAX_CLOSE_REASON]
    return _U16.pack(code) + raw.decode("utf-8", "ignore").encode("utf-8")


def decode_close(payload: bytes) -> tuple[int, str] | None:
    """``(code, reason)``, or None if the payload is not a CLOSE/ALERT body."""
    if len(payload) < 2 or len(payload) > 2 + MAX_CLOSE_REASON:
        return None
    return _U16.unpack_from(payload)[0], bytes(payload[2:]).decode("utf-8", "replace")

