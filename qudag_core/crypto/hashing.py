"""BLAKE3 hashing, KDF and typed transcripts (the ``blake3`` package).

Every key qudag derives goes through ``derive_key`` with its own context string
(BLAKE3 §2.6 "derive_key" mode); a context string names exactly one use, in the form
``"qudag 2026 <component> <purpose>"``, so no two uses can share output.

``Transcript`` length-prefixes every item (u16 label length, label, u32 value length,
value) so that no two different item sequences hash alike.
"""
from __future__ import annotations

import struct

from blake3 import blake3 as _blake3

from qudag_core.errors import InvalidKey

__all__ = ["blake3_hash", "keyed_hash", "derive_key", "Transcript"]


def blake3_hash(data: bytes, length: int = 32) -> bytes:
    return _blake3(data).digest(length)


def keyed_hash(key: bytes, data: bytes, length: int = 32) -> bytes:
    if len(key) != 32:
        raise InvalidKey(f"BLAKE3 keyed_hash key must be 32 bytes, got {len(key)}")
    return _blake3(data, key=key).digest(length)


def derive_key(context: str, material: bytes, length: int = 32) -> bytes:
    """BLAKE3 ``derive_key`` with a hard-coded, use-specific ``context`` string."""
    return _blake3(material, derive_key_context=context).digest(length)


class Transcript:
    """A running BLAKE3 hash over labelled, length-prefixed items."""

    __slots__ = ("_h",)

    def __init__(self, protocol_label: bytes) -> None:
        self._h = _blake3()
        self.append(b"protocol", protocol_label)

    def append(self, label: bytes, value: bytes) -> None:
        self._h.update(struct.pack(">H", len(label)) + label + struct.pack(">I", len(value)))
        self._h.update(value)

    def digest(self) -> bytes:
        """The current 32-byte hash; appending afterwards continues the transcript."""
        return self._h.digest(32)

    def copy(self) -> "Transcript":
        t = Transcript.__new__(Transcript)
        t._h = self._h.copy()
        return t
