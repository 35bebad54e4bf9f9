"""Traffic mixer: random per-cell delays, cover cells, optional constant rate (sans-IO).

docs/onion.md §4.  Each pushed cell draws a delay from an exponential distribution (mean
``mean_delay``; a Poisson mix in the sense of Loopix/Stop-and-Go mixes) using the injected
``rng``; its release time is ``max(now + delay, release of the previous cell of the same
circuit)``.  The decision a reader asks about: cells of one circuit are **never reordered**,
because relay crypto chains each cell's tag into the next (relaycrypto.py) — a reordered
cell would be indistinguishable from a tagging attack and kill the circuit.  Mixing happens
across circuits.

* ``batch_interval``: release only on ticks ``k * batch_interval`` (a timed pool).
* ``cover_rate``: cover cells at Poisson rate, made by ``cover_factory(now) -> (circuit,
  cell)`` (e.g. a DROP relay cell, or a link PADDING cell) and queued like any other cell,
  so they obey the same per-circuit order.
* ``constant_rate``: exactly one cell per ``1/constant_rate`` seconds leaves: a due cell if
  there is one, else a cover cell.
* Bounded queue: ``push`` returns ``False`` when ``max_queue`` cells wait (``is_writable``
  says so beforehand); ``push_strict`` raises ``MixerFull`` instead.

Driving API: ``push(circuit, cell, now)``, ``cells_to_send(now) -> list[(circuit, cell)]``,
``get_timer()``, ``handle_timer(now)``.
"""
from __future__ import annotations

import heapq
import math

from qudag_core.errors import LocalProtocolError

__all__ = ["MixerFull", "Mixer", "exponential_sample"]


class MixerFull(LocalProtocolError):
    """The mixer queue is full: stop reading from the source until ``is_writable``."""


def exponential_sample(rng, mean: float) -> float:
    """Inverse-transform sample of Exp(mean): ``-mean * ln(1 - u)``, u = k / 2^53 from 53
    random bits, so ``1 - u`` is in [2^-53, 1] exactly and the result finite, >= 0."""
    u = (int.from_bytes(rng(7), "big") >> 3) / float(1 << 53)
    return -mean * math.log1p(-u)


class Mixer:
    def __init__(
        self,
        *,
        rng,
        mean_delay: float = 0.05,
        max_queue: int = 4096,
        batch_interval: float | None = None,
        cover_rate: float = 0.0,
        constant_rate: float | None = None,
        cover_factory=None,
        now: float = 0.0,
    ) -> None:
        if mean_delay < 0 or max_queue < 1:
            raise LocalProtocolError("mean_delay >= 0 and max_queue >= 1 required")
        if (cover_rate > 0 or constant_rate) and cover_factory is None:
            raise LocalProtocolError("cover traffic needs a cover_factory")
        self._rng = rng
        self._mean = mean_delay
        self._max = max_queue
        self._batch = batch_interval
        self._cover_rate = cover_rate
        self._rate = constant_rate
        self._cover_factory = cover_factory
        self._heap: list = []  # (release, seq, circuit, cell)
        self._seq = 0
        self._last: dict = {}  # circuit -> (release, seq) of its newest queued cell
        self._next_cover = now + exponential_sample(rng, 1.0 / cover_rate) if cover_rate > 0 else None
        self._next_tick = now + 1.0 / constant_rate if constant_rate else None
        self.cover_sent = 0

    def __len__(self) -> int:
        return len(self._heap)

    @property
    def is_writable(self) -> bool:
        return len(self._heap) < self._max

    def push(self, circuit, cell: bytes, now: float) -> bool:
        """Queue ``cell`` for ``circuit``; ``False`` (nothing queued) if the queue is full."""
        if len(self._heap) >= self._max:
            return False
        self._enqueue(circuit, cell, now + exponential_sample(self._rng, self._mean))
        return True

    def push_strict(self, circuit, cell: bytes, now: float) -> None:
        if not self.push(circuit, cell, now):
            raise MixerFull(f"mixer queue full ({self._max} cells)")

    def _enqueue(self, circuit, cell, release: float) -> None:
        prev = self._last.get(circuit)
        if prev is not None and prev[0] > release:
            release = prev[0]  # FIFO within a circuit: never overtake the previous cell
        self._seq += 1
        heapq.heappush(self._heap, (release, self._seq, circuit, cell))
        self._last[circuit] = (release, self._seq)

    def _due_limit(self, now: float) -> float:
        if self._batch:
            return math.floor(now / self._batch) * self._batch
        return now

    def _pop(self):
        release, seq, circuit, cell = heapq.heappop(self._heap)
        if self._last.get(circuit, (None, None))[1] == seq:
            del self._last[circuit]
        return circuit, cell

    def handle_timer(self, now: float) -> None:
        """Generate cover cells that are due (Poisson cover mode)."""
        while self._next_cover is not None and self._next_cover <= now:
            if len(self._heap) < self._max:
                made = self._cover_factory(self._next_cover)
                if made is not None:
                    self._enqueue(made[0], made[1], self._next_cover)
                    self.cover_sent += 1
            self._next_cover += exponential_sample(self._rng, 1.0 / self._cover_rate)

    def cells_to_send(self, now: float) -> list:
        """The cells whose release time has come, oldest release first."""
        self.handle_timer(now)
        out = []
        if self._rate:
            while self._next_tick is not None and self._next_tick <= now:
                tick = self._next_tick
                if self._heap and self._heap[0][0] <= tick:
                    out.append(self._pop())
                else:
                    made = self._cover_factory(tick)
                    if made is not None:
                        out.append(made)
                        self.cover_sent += 1
                self._next_tick = tick + 1.0 / self._rate
            return out
        limit = self._due_limit(now)
        while self._heap and self._heap[0][0] <= limit:
            out.append(self._pop())
        return out

    def get_timer(self) -> float | None:
        ts = []
        if self._rate:
            ts.append(self._next_tick)
        elif self._heap:
            first = self._heap[0][0]
            if self._batch:
                first = math.ceil(first / self._batch) * self._batch
            ts.append(first)
        if self._next_cover is not None:
            ts.append(self._next_cover)
        return min(ts) if ts else None
