"""Handshake fragmentation: messages longer than one cell, split and reassembled.

Wire form of each fragment (docs/onion.md §3.2): ``total_len (u16) | offset (u16) | chunk``,
where the chunk runs to the end of the space the carrier offers or to ``total_len``,
whichever comes first.  Carriers are ordered (a link, or a circuit), so fragments must
arrive in order: ``offset`` must equal the bytes received so far.  The decision a reader
asks about: no fragment ids or reordering buffer, because nothing below us reorders; an
out-of-order fragment is therefore an error, which keeps reassembly state to one buffer.

Reassembly is capped in pieces, bytes and time (``now`` passed in).
"""
from __future__ import annotations

import struct

from qudag_core.onion.cells import CellError, DestroyReason

__all__ = ["FragmentError", "FRAG_HEADER_SIZE", "fragment", "Reassembler"]

FRAG_HEADER_SIZE = 4
_HDR = struct.Struct(">HH")


class FragmentError(CellError):
    """A fragment is malformed, out of order, over a cap or too late."""

    error_code = DestroyReason.PROTOCOL


def fragment(message: bytes, space: int) -> list[bytes]:
    """Split ``message`` into fragments of at most ``space`` bytes each (header included)."""
    if not 0 < len(message) <= 0xFFFF:
        raise ValueError("message length must be 1..65535")
    step = space - FRAG_HEADER_SIZE
    if step <= 0:
        raise ValueError("no room for a fragment")
    out = []
    for off in range(0, len(message), step):
        out.append(_HDR.pack(len(message), off) + message[off : off + step])
    return out


class Reassembler:
    """Collect one fragmented message.  ``feed(space_bytes, now)`` returns the message when
    complete, ``None`` while more fragments are expected, or raises ``FragmentError``."""

    __slots__ = ("_max_bytes", "_max_pieces", "_timeout", "_buf", "_total", "_pieces", "_deadline", "_done")

    def __init__(self, *, max_bytes: int = 4096, max_pieces: int = 8, timeout: float = 30.0) -> None:
        self._max_bytes = max_bytes
        self._max_pieces = max_pieces
        self._timeout = timeout
        self._buf = bytearray()
        self._total = -1
        self._pieces = 0
        self._deadline: float | None = None
        self._done = False

    @property
    def deadline(self) -> float | None:
        """When an incomplete message expires (for ``get_timer``); None if idle."""
        return None if self._done else self._deadline

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def expired(self, now: float) -> bool:
        return self._deadline is not None and not self._done and now > self._deadline

    def feed(self, data: bytes | bytearray | memoryview, now: float) -> bytes | None:
        if self._done:
            raise FragmentError("fragment after the message was complete")
        if len(data) < FRAG_HEADER_SIZE + 1:
            raise FragmentError("fragment too short")
        total, off = _HDR.unpack_from(data, 0)
        if self._total < 0:
            if total == 0 or total > self._max_bytes:
                raise FragmentError(f"fragmented message of {total} bytes over cap {self._max_bytes}")
            if off != 0:
                raise FragmentError("first fragment must have offset 0")
            self._total = total
            self._deadline = now + self._timeout
        elif total != self._total:
            raise FragmentError("fragment total length changed")
        if now > self._deadline:
            raise FragmentError("fragment reassembly timed out", error_code=DestroyReason.TIMEOUT)
        if off != len(self._buf):
            raise FragmentError("fragment out of order")
        self._pieces += 1
        if self._pieces > self._max_pieces:
            raise FragmentError("too many fragments")
        take = min(len(data) - FRAG_HEADER_SIZE, total - off)
        self._buf += data[FRAG_HEADER_SIZE : FRAG_HEADER_SIZE + take]
        if len(self._buf) == total:
            self._done = True
            out = bytes(self._buf)
            self._buf = bytearray()
            return out
        return None
