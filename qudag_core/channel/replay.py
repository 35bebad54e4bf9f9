"""Anti-replay sliding window for datagram counters (RFC 6479 §2, as in WireGuard).

The bitmap is a ring of 64-bit words.  Advancing the window clears whole words instead
of shifting the bitmap, so a jump costs at most ``words`` stores and an in-window packet
costs one word test.  One word is kept as slack (RFC 6479 §2): a window of ``bits``
bits remembers the ``bits - 64`` counters below the highest seen, all of them exactly.

The check and the update are separate calls on purpose: ``check`` runs before the AEAD
(cheap rejection of replays), ``update`` only after the packet authenticated, so a
forged packet can never move the window.
"""
from __future__ import annotations

from qudag_core.channel.errors import PacketTooOld, ReplayedPacket

__all__ = ["ReplayWindow"]

_WORD_BITS = 64
_WORD_MASK = (1 << 64) - 1


class ReplayWindow:
    """Remembers which counters were accepted; ``bits`` is a multiple of 64, >= 128."""

    __slots__ = ("_words", "_nwords", "_top", "_any", "size")

    def __init__(self, bits: int = 2048) -> None:
        if bits < 128 or bits % _WORD_BITS:
            raise ValueError("replay window must be a multiple of 64 bits and at least 128")
        self._nwords = bits // _WORD_BITS
        self._words = [0] * self._nwords
        self._top = 0
        self._any = False
        self.size = bits - _WORD_BITS
        """How far below the highest accepted counter a packet may still arrive."""

    @property
    def highest(self) -> int | None:
        """The highest counter accepted so far (None before the first)."""
        return self._top if self._any else None

    def check(self, counter: int) -> None:
        """Raise ``ReplayedPacket``/``PacketTooOld`` unless ``counter`` may be accepted."""
        if not self._any or counter > self._top:
            return
        if counter + self.size <= self._top:
            raise PacketTooOld(f"counter {counter} is behind the replay window")
        word = self._words[(counter >> 6) % self._nwords]
        if (word >> (counter & 63)) & 1:
            raise ReplayedPacket(f"counter {counter} was already received")

    def update(self, counter: int) -> None:
        """Record ``counter`` as accepted (after ``check`` passed and the AEAD opened)."""
        index = counter >> 6
        if not self._any or counter > self._top:
            if self._any:
                current = self._top >> 6
                diff = index - current
            else:
                current = index - 1
                diff = 1
            if diff > self._nwords:
                diff = self._nwords
            for i in range(1, diff + 1):
                self._words[(current + i) % self._nwords] = 0
            self._top = counter
            self._any = True
        slot = index % self._nwords
        self._words[slot] = (self._words[slot] | (1 << (counter & 63))) & _WORD_MASK
