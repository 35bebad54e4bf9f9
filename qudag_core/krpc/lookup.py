"""Iterative Kademlia lookup (Maymounkov-Mazieres §2.3 "node lookup", BEP 5
``find_node``/``get_peers``, BEP 44 ``get``) as a sans-IO state machine.

The caller drives it: ``next_queries(now)`` names up to alpha nodes to query; the
caller sends ``find_node``/``get_peers``/``get`` and reports each outcome with
``on_response``, ``on_timeout`` or ``on_error``; ``get_timer()``/``handle_timer(now)``
expire queries the caller never reported.  ``done`` becomes true once the k closest
nodes still in the shortlist have all answered, or nothing is left to ask.

Design decision a reader would ask about: **responses are only trusted when they
come from exactly the (node id, address) pair this lookup queried.**  A response from a
node we did not query, from another address, echoing our own id, or naming a different
id than the one we queried at that address is dropped (the last two also count as a
failure of the queried node), and every address is queried at most once per lookup, so
a lying node cannot redirect the lookup at a victim address.  Nodes a response lists are
hearsay: they are candidates, never inserted into a routing table by this module
(only responders, via the caller, after ``on_response`` returned ``ACCEPTED``).

Failed candidates leave the shortlist (their ids stay in a "queried" set so they are
never asked twice); the shortlist keeps at most ``max_shortlist`` entries, dropping the
farthest ones not in flight, and the lookup sends at most ``max_queries`` queries.
"""
from __future__ import annotations

import bisect
import dataclasses
import enum
from typing import Callable, Iterable

__all__ = ["Lookup", "LookupResult", "Verdict"]

_PENDING = 0
_IN_FLIGHT = 1
_ANSWERED = 2


class Verdict(enum.Enum):
    """What ``Lookup.on_response`` made of a response."""

    ACCEPTED = "accepted"
    UNSOLICITED = "unsolicited"  #: no query of ours is outstanding to that address or id
    WRONG_ADDRESS = "wrong-address"  #: the id we queried, answering from another address
    WRONG_ID = "wrong-id"  #: the address we queried, answering with another id
    OWN_ID = "own-id"  #: the response claims our own node id
    DONE = "done"  #: the lookup had already finished


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class LookupResult:
    #: up to k ``(node_id, addr, token)`` that answered, closest first (token: the write
    #: token they returned, or None)
    closest: tuple
    #: ``(node_id, value)`` pairs collected from responses, in arrival order (bounded)
    values: tuple
    #: queries sent
    queries: int
    #: queries that timed out, errored or were answered wrongly
    failures: int


class _Cand:
    __slots__ = ("node_id", "addr", "dist", "state", "sent_at", "token")

    def __init__(self, node_id: bytes, addr: tuple, dist: int) -> None:
        self.node_id = node_id
        self.addr = addr
        self.dist = dist
        self.state = _PENDING
        self.sent_at = 0.0
        self.token: bytes | None = None


def _valid_node(entry: object) -> bool:
    if not isinstance(entry, tuple) or len(entry) != 2:
        return False
    nid, addr = entry
    return (isinstance(nid, bytes) and len(nid) == 20 and isinstance(addr, tuple) and len(addr) == 2
            and isinstance(addr[0], str) and isinstance(addr[1], int) and not isinstance(addr[1], bool)
            and 0 < addr[1] < 65536)


class Lookup:
    """One iterative lookup for ``target`` (20 bytes).

    ``initial_nodes``: ``(node_id, addr)`` pairs to start from, usually
    ``RoutingTable.closest(target)``.  ``own_id`` enables the own-id check and keeps us
    out of the shortlist.  ``score(node_id) -> float`` (e.g. ``Reputation.score``)
    orders candidates at the same log-distance, higher first; ``excluded(node_id) ->
    bool`` (e.g. ``Reputation.is_excluded``) keeps nodes out entirely.
    """

    def __init__(self, target: bytes, initial_nodes: Iterable[tuple], k: int = 20, alpha: int = 3,
                 now: float = 0.0, query_timeout: float = 5.0, *, own_id: bytes | None = None,
                 max_shortlist: int | None = None, max_queries: int | None = None,
                 max_values: int = 256, max_nodes_per_response: int | None = None,
                 score: Callable[[bytes], float] | None = None,
                 excluded: Callable[[bytes], bool] | None = None) -> None:
        if not isinstance(target, bytes) or len(target) != 20:
            raise ValueError("target must be 20 bytes")
        if k < 1 or alpha < 1 or query_timeout <= 0:
            raise ValueError("k, alpha and query_timeout must be positive")
        self.target = target
        self.k = k
        self.alpha = alpha
        self.query_timeout = query_timeout
        self.started = now
        self.own_id = own_id
        self.max_shortlist = max(k + alpha, max_shortlist if max_shortlist is not None else 8 * k)
        self.max_queries = max_queries if max_queries is not None else 16 * k
        self.max_values = max_values
        self.max_nodes_per_response = max_nodes_per_response if max_nodes_per_response is not None else 2 * k
        self._score = score
        self._excluded = excluded
        self._t = int.from_bytes(target, "big")
        self._dists: list[int] = []
        self._list: list[_Cand] = []
        self._by_id: dict[bytes, _Cand] = {}
        self._addrs: set[tuple] = set()
        self._queried: set[bytes] = set()
        self._inflight: dict[tuple, _Cand] = {}
        self._values: list[tuple] = []
        self._expired: list[tuple] = []
        self.queries = 0
        self.failures = 0
        self._done = False
        for entry in initial_nodes:
            if _valid_node(entry):
                self._add(entry[0], entry[1])
        self._check_done()

    # -- driving ------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done

    def next_queries(self, now: float) -> list[tuple]:
        """``(node_id, addr)`` to query now (marked in flight at ``now``).  Also expires
        overdue queries (collect them with ``handle_timer``)."""
        self._expire(now)
        if self._done:
            return []
        slots = self.alpha - len(self._inflight)
        if slots <= 0 or self.queries >= self.max_queries:
            return []
        want = min(slots, self.max_queries - self.queries)
        eligible = []
        top = self._list
        for j in range(min(self.k, len(top))):
            c = top[j]
            if c.state == _PENDING:
                eligible.append(c)
        if self._score is not None and len(eligible) > 1:
            eligible = self._best(eligible, want)
        out = []
        for c in eligible[:want]:
            c.state = _IN_FLIGHT
            c.sent_at = now
            self._inflight[c.addr] = c
            self._queried.add(c.node_id)
            self.queries += 1
            out.append((c.node_id, c.addr))
        return out

    def on_response(self, node_id: bytes, addr: tuple, nodes: Iterable[tuple], now: float,
                    values: Iterable | None = None, *, token: bytes | None = None) -> Verdict:
        """A response arrived from ``addr`` claiming ``node_id``, listing ``nodes``
        (``(id, addr)`` pairs; malformed ones are skipped) and optionally ``values``
        (opaque: peers for ``get_peers``, a record for ``get``) and a write ``token``."""
        if self._done:
            return Verdict.DONE
        if not _valid_node((node_id, addr)):
            return Verdict.UNSOLICITED  # malformed: cannot be an answer to our query
        c = self._inflight.get(addr)
        if self.own_id is not None and node_id == self.own_id:
            if c is not None:
                self._fail(c)
            return Verdict.OWN_ID
        if c is None:
            other = self._by_id.get(node_id)
            if other is not None and other.state == _IN_FLIGHT:
                return Verdict.WRONG_ADDRESS
            return Verdict.UNSOLICITED
        if c.node_id != node_id:
            self._fail(c)
            return Verdict.WRONG_ID
        del self._inflight[addr]
        c.state = _ANSWERED
        if isinstance(token, bytes):
            c.token = token
        if values is not None:
            for v in values:
                if len(self._values) >= self.max_values:
                    break
                self._values.append((node_id, v))
        n = 0
        for entry in nodes if nodes is not None else ():
            if n >= self.max_nodes_per_response:
                break
            n += 1
            if _valid_node(entry):
                self._add(entry[0], entry[1])
        self._check_done()
        return Verdict.ACCEPTED

    def on_timeout(self, node_id: bytes, now: float) -> bool:
        """Our query to ``node_id`` timed out; False if it was not in flight."""
        c = self._by_id.get(node_id)
        if c is None or c.state != _IN_FLIGHT:
            return False
        self._fail(c)
        return True

    def on_error(self, node_id: bytes, now: float) -> bool:
        """``node_id`` answered with a KRPC error: it is no use to this lookup."""
        return self.on_timeout(node_id, now)

    def knows(self, node_id: bytes) -> bool:
        """Whether ``node_id`` is in the shortlist or was queried: listing it in a
        response again changes nothing."""
        return node_id in self._by_id or node_id in self._queried

    def get_timer(self) -> float | None:
        """The next query deadline, or None when nothing is in flight."""
        if self._done or not self._inflight:
            return None
        return min(c.sent_at for c in self._inflight.values()) + self.query_timeout

    def handle_timer(self, now: float) -> list[tuple]:
        """Expire overdue queries; returns every ``(node_id, addr)`` that expired since
        the last call (so the caller can ``RoutingTable.mark_failed`` them)."""
        self._expire(now)
        out, self._expired = self._expired, []
        return out

    @property
    def result(self) -> LookupResult:
        closest = []
        for c in self._list:
            if c.state == _ANSWERED:
                closest.append((c.node_id, c.addr, c.token))
                if len(closest) >= self.k:
                    break
        return LookupResult(closest=tuple(closest), values=tuple(self._values),
                            queries=self.queries, failures=self.failures)

    def in_flight(self) -> list[tuple]:
        return [(c.node_id, c.addr) for c in self._inflight.values()]

    # -- internals ----------------------------------------------------------------
    def _best(self, eligible: list, want: int) -> list:
        """The first ``want`` of ``eligible`` (sorted by distance) in the order
        ``(log-distance, -score, distance)``.  Same log-distance means a contiguous run
        of the distance-sorted list, so only the runs that can supply the ``want``
        best are scored (not every pending candidate on every call)."""
        score = self._score
        out: list = []
        i = 0
        n = len(eligible)
        while i < n and len(out) < want:
            bits = eligible[i].dist.bit_length()
            j = i + 1
            while j < n and eligible[j].dist.bit_length() == bits:
                j += 1
            run = eligible[i:j]
            if len(run) > 1:
                run.sort(key=lambda c: (-score(c.node_id), c.dist))
            out.extend(run)
            i = j
        return out

    def _add(self, node_id: bytes, addr: tuple) -> None:
        if node_id in self._by_id or node_id in self._queried or addr in self._addrs:
            return
        if self.own_id is not None and node_id == self.own_id:
            return
        if self._excluded is not None and self._excluded(node_id):
            return
        d = int.from_bytes(node_id, "big") ^ self._t
        i = bisect.bisect_left(self._dists, d)
        if i >= self.max_shortlist:
            return
        c = _Cand(node_id, addr, d)
        self._dists.insert(i, d)
        self._list.insert(i, c)
        self._by_id[node_id] = c
        self._addrs.add(addr)
        while len(self._list) > self.max_shortlist:
            for j in range(len(self._list) - 1, -1, -1):
                if self._list[j].state != _IN_FLIGHT:
                    self._drop(j)
                    break
            else:
                break

    def _drop(self, j: int) -> None:
        c = self._list.pop(j)
        del self._dists[j]
        del self._by_id[c.node_id]

    def _fail(self, c: _Cand) -> None:
        if self._inflight.get(c.addr) is c:
            del self._inflight[c.addr]
        self.failures += 1
        j = bisect.bisect_left(self._dists, c.dist)
        if j < len(self._list) and self._list[j] is c:
            self._drop(j)
        self._check_done()

    def _expire(self, now: float) -> None:
        if not self._inflight:
            return
        # Same expression as get_timer(), so handle_timer(get_timer()) always expires
        # something (``now - timeout`` could round the other way).
        timeout = self.query_timeout
        for c in [c for c in self._inflight.values() if c.sent_at + timeout <= now]:
            self._expired.append((c.node_id, c.addr))
            self._fail(c)

    def _check_done(self) -> None:
        if self._done:
            return
        top = self._list[:self.k]
        if top and all(c.state == _ANSWERED for c in top):
            self._done = True
        elif not self._inflight and (self.queries >= self.max_queries
                                     or not any(c.state == _PENDING for c in top)):
            self._done = True
