"""Peer reputation scores, after QuDAG's peer scoring, sans-IO.

Arithmetic (all parameters in ``ReputationConfig``):

* a peer first seen scores ``initial`` (50); scores are clamped to ``0..100``;
* success: ``+5``, minus a latency penalty of ``1`` per full ``100 ms`` above
  ``latency_threshold`` (200 ms), at most ``max_latency_penalty`` (10) -- so a very slow
  success can cost up to 5 points;
* failure (timeout, error, bad answer): ``-10``;
* decay: between events a score relaxes exponentially toward ``initial`` with
  ``half_life`` (1 h): ``50 + (s - 50) * 2 ** (-dt / half_life)``, applied lazily with
  the ``now`` passed in (a clock going backwards decays nothing);
* exclusion: a peer scoring below ``exclude_below`` (10) is excluded from selection;
  decay lets it back in after a while (from 0 to 10 takes ~19 min with the defaults).

Selection is weighted random (weight = score, excluded peers weigh 0) with the injected
``rng``; lookups use ``score``/``is_excluded`` as hooks (``lookup.Lookup(score=...,
excluded=...)``) and relay selection uses ``choose``.

Design decision a reader would ask about: the table is bounded (``max_peers``); when
full, the entry evicted is, among the ``_EVICT_WINDOW`` least recently updated ones, the
one whose score is closest to neutral -- so a flood of new identities pushes out
uninteresting peers before it can make us forget the ones we learned to distrust.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from typing import Callable, Hashable, Iterable

__all__ = ["ReputationConfig", "Reputation"]

_EVICT_WINDOW = 8


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class ReputationConfig:
    initial: float = 50.0
    success: float = 5.0
    failure: float = -10.0
    latency_threshold: float = 0.2
    latency_step: float = 0.1
    latency_penalty_per_step: float = 1.0
    max_latency_penalty: float = 10.0
    half_life: float = 3600.0
    exclude_below: float = 10.0
    minimum: float = 0.0
    maximum: float = 100.0
    max_peers: int = 10_000


class Reputation:
    """Scores keyed by any hashable peer key (usually the 20-byte node id)."""

    def __init__(self, config: ReputationConfig | None = None) -> None:
        self.config = config if config is not None else ReputationConfig()
        if self.config.max_peers < 1 or self.config.half_life <= 0:
            raise ValueError("max_peers and half_life must be positive")
        self._scores: OrderedDict[Hashable, list] = OrderedDict()  # key -> [score, updated_at]

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, peer: object) -> bool:
        return peer in self._scores

    def latency_penalty(self, latency: float | None) -> float:
        cfg = self.config
        if latency is None or not latency > cfg.latency_threshold:
            return 0.0
        steps = math.floor((latency - cfg.latency_threshold) / cfg.latency_step + 1e-9)
        return min(cfg.max_latency_penalty, steps * cfg.latency_penalty_per_step)

    def score(self, peer: Hashable, now: float | None = None) -> float:
        """The current score (``initial`` for unknown peers); with ``now``, decayed."""
        e = self._scores.get(peer)
        if e is None:
            return self.config.initial
        if now is None:
            return e[0]
        return self._decayed(e, now)

    def is_excluded(self, peer: Hashable, now: float | None = None) -> bool:
        return self.score(peer, now) < self.config.exclude_below

    def record_success(self, peer: Hashable, now: float, latency: float | None = None) -> float:
        return self._apply(peer, now, self.config.success - self.latency_penalty(latency))

    def record_failure(self, peer: Hashable, now: float) -> float:
        return self._apply(peer, now, self.config.failure)

    def forget(self, peer: Hashable) -> bool:
        return self._scores.pop(peer, None) is not None

    def choose(self, candidates: Iterable[Hashable], rng: Callable[[int], bytes], count: int = 1,
               now: float | None = None) -> list:
        """Up to ``count`` distinct candidates, drawn without replacement with
        probability proportional to their score; excluded peers are never drawn."""
        pool = []
        seen = set()
        for c in candidates:
            if c in seen:
                continue
            seen.add(c)
            s = self.score(c, now)
            if s >= self.config.exclude_below and s > 0:
                pool.append((c, s))
        out = []
        while pool and len(out) < count:
            total = sum(s for _, s in pool)
            r = int.from_bytes(rng(8), "big") / 2.0 ** 64 * total
            acc = 0.0
            pick = len(pool) - 1
            for i, (_, s) in enumerate(pool):
                acc += s
                if r < acc:
                    pick = i
                    break
            out.append(pool.pop(pick)[0])
        return out

    # -- persistence --------------------------------------------------------------
    def snapshot(self) -> list[tuple]:
        """``[(peer, score, updated_at)]``, least recently updated first (undecayed
        scores; ``restore`` applies the decay since ``updated_at``)."""
        return [(k, e[0], e[1]) for k, e in self._scores.items()]

    def restore(self, entries: Iterable[tuple], now: float) -> int:
        """Reload a ``snapshot()`` (oldest first); ``updated_at`` is clamped to ``now``,
        scores to the configured range, malformed entries and peers already known are
        skipped.  Bounded like every other insert.  Returns how many were loaded."""
        cfg = self.config
        count = 0
        for ent in entries:
            try:
                peer, score, updated = ent
                score = float(score)
                updated = float(updated)
                hash(peer)
            except (TypeError, ValueError):
                continue
            if peer in self._scores or math.isnan(score) or math.isnan(updated):
                continue
            self._make_room()
            self._scores[peer] = [min(cfg.maximum, max(cfg.minimum, score)), min(updated, now)]
            count += 1
        return count

    # -- internals ----------------------------------------------------------------
    def _decayed(self, e: list, now: float) -> float:
        dt = now - e[1]
        if dt <= 0:
            return e[0]
        base = self.config.initial
        return base + (e[0] - base) * 2.0 ** (-dt / self.config.half_life)

    def _apply(self, peer: Hashable, now: float, delta: float) -> float:
        cfg = self.config
        e = self._scores.get(peer)
        if e is None:
            self._make_room()
            e = [cfg.initial, now]
            self._scores[peer] = e
        else:
            self._scores.move_to_end(peer)
        s = self._decayed(e, now) + delta
        s = min(cfg.maximum, max(cfg.minimum, s))
        e[0] = s
        e[1] = max(e[1], now)
        return s

    def _make_room(self) -> None:
        if len(self._scores) < self.config.max_peers:
            return
        base = self.config.initial
        best = None
        best_d = 0.0
        for i, (k, e) in enumerate(self._scores.items()):
            if i >= _EVICT_WINDOW:
                break
            d = abs(e[0] - base)
            if best is None or d < best_d:
                best, best_d = k, d
        del self._scores[best]
