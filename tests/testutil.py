"""Helpers shared by tests (import as ``from testutil import ...``; ``tests/`` is on
sys.path through its conftest)."""
from __future__ import annotations

import hashlib

__all__ = ["DeterministicRng"]


class DeterministicRng:
    """A counter-mode SHA-256 stream: reproducible ``rng(n) -> bytes`` for tests."""

    def __init__(self, seed: bytes = b"qudag-test") -> None:
        self._seed = seed
        self._ctr = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self._seed + self._ctr.to_bytes(8, "big")).digest()
            self._ctr += 1
        return out[:n]
