"""Per-source token-bucket rate limiting for incoming KRPC queries, sans-IO.

Each source gets a bucket of ``burst`` tokens refilled at ``rate`` tokens per second
(of the ``now`` passed in); a query costs one token and is dropped when none is left.

Design decision a reader would ask about: sources are keyed by IPv4 address but by
IPv6 ``/64`` (configurable), since one host commonly owns a whole /64 and could
otherwise mint a fresh bucket per packet.  The tracked set is bounded by ``max_tracked``:
the least recently seen source is forgotten first, which costs nothing for an idle
source (its bucket would be full again anyway) and only ever resets the quietest one.
"""
from __future__ import annotations

import ipaddress
from collections import OrderedDict

__all__ = ["RateLimiter", "source_key"]


def source_key(ip: str, v6_prefix: int = 64) -> str:
    """The accounting key for ``ip``: the IPv4 address, or the IPv6 ``/v6_prefix``.
    Strings that are not IP literals are used as they are."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if a.version == 6:
        if a.ipv4_mapped is not None:
            return str(a.ipv4_mapped)
        return str(ipaddress.ip_network(f"{a}/{v6_prefix}", strict=False))
    return str(a)


class RateLimiter:
    """``allow(ip, now) -> bool``; ``drops`` counts denied requests."""

    def __init__(self, rate: float, burst: float, *, max_tracked: int = 65_536, v6_prefix: int = 64) -> None:
        if rate <= 0 or burst < 1 or max_tracked < 1 or not 0 < v6_prefix <= 128:
            raise ValueError("rate > 0, burst >= 1, max_tracked >= 1, 0 < v6_prefix <= 128 required")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_tracked = max_tracked
        self.v6_prefix = v6_prefix
        self._buckets: OrderedDict[str, list] = OrderedDict()  # key -> [tokens, last]
        # ``source_key`` parses with ``ipaddress`` (pure Python, about a fifth of the cost
        # of answering a ping); memoise it per host string, bounded like the buckets.
        self._keys: dict[str, str] = {}
        self.drops = 0
        self.allowed = 0
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def _key(self, ip: str) -> str:
        key = self._keys.get(ip)
        if key is None:
            key = source_key(ip, self.v6_prefix)
            if len(self._keys) >= self.max_tracked:
                self._keys.clear()
            self._keys[ip] = key
        return key

    def allow(self, ip: str, now: float, cost: float = 1.0) -> bool:
        key = self._key(ip)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_tracked:
                self._buckets.popitem(last=False)
                self.evicted += 1
            b = [self.burst, now]
            self._buckets[key] = b
        else:
            self._buckets.move_to_end(key)
            elapsed = now - b[1]
            if elapsed > 0:
                b[0] = min(self.burst, b[0] + elapsed * self.rate)
                b[1] = now
        if b[0] >= cost:
            b[0] -= cost
            self.allowed += 1
            return True
        self.drops += 1
        return False

    def tokens(self, ip: str, now: float) -> float:
        """Tokens ``ip`` would have at ``now`` (burst for an untracked source)."""
        b = self._buckets.get(self._key(ip))
        if b is None:
            return self.burst
        return min(self.burst, b[0] + max(0.0, now - b[1]) * self.rate)

    def prune(self, now: float) -> int:
        """Forget sources whose bucket has refilled completely; returns how many."""
        full_after = self.burst / self.rate
        dead = [k for k, b in self._buckets.items() if now - b[1] >= full_after - (b[0] / self.rate)]
        for k in dead:
            del self._buckets[k]
        return len(dead)
