"""Kademlia routing table: BEP 5 "Routing Table" rules over 160-bit ids, sans-IO.

Implements BEP 5 node states (good / questionable / bad), bucket "last changed"
freshness and 15-minute refresh, replace-bad / ping-questionable / keep-good on a full
bucket, per-bucket replacement caches (Kademlia paper §4.1) and IP-diversity limits
(at most ``per_bucket`` nodes per /24 or /48 in one bucket and ``per_table`` in the table,
after libtorrent's ``restrict_routing_ips``).

Design decision a reader would ask about: the table uses a **fixed layout of 160
buckets** indexed by the length of the prefix a node id shares with our own id (created
lazily), instead of BEP 5's split-on-demand tree.  A BEP 5 tree only ever splits the
bucket holding our own id, so its buckets are exactly "shares i bits with us" for
i < depth plus one catch-all bucket; the fixed layout has the same buckets and simply
never merges the deep ones, i.e. it is the tree after every possible split of our own
bucket.  That removes all splitting code, makes the bucket index one ``bit_length``,
keeps memory bounded by 160 x k entries (only about log2(N) + a few buckets are ever
populated).  ``closest()`` does not walk buckets: every id in the table is also packed in
one array, and the k nearest are selected over it in one pass with a bounded heap (C
kernel ``csrc/kademlia.c``; ``closest_indices_py`` is its pure reference).

The table never reads a clock or draws randomness: every mutating call takes ``now``
(seconds, any monotonic origin) and ``due_refreshes`` takes ``rng(n) -> bytes``.  It
never sends anything either: when a full bucket needs questionable nodes checked,
``add_or_update`` returns the pings to send in ``AddResult.pings``; the caller reports
the answer with ``add_or_update(..., responded=True)`` or ``mark_failed``.
"""
from __future__ import annotations

import dataclasses
import enum
import heapq
import ipaddress
import socket
from collections import OrderedDict
from typing import Callable, Iterable, Iterator

__all__ = [
    "ID_BITS",
    "ID_BYTES",
    "Address",
    "DiversityConfig",
    "RoutingConfig",
    "NodeState",
    "Outcome",
    "AddResult",
    "Node",
    "RoutingTable",
    "address_prefix",
    "distance",
]

ID_BITS = 160
ID_BYTES = 20
_ID_MASK = (1 << ID_BITS) - 1

Address = tuple  # (host: str, port: int); an alias for documentation only


def distance(a: bytes, b: bytes) -> int:
    """XOR distance between two 20-byte ids as an integer."""
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def closest_indices_py(ids: bytes | bytearray, target: bytes, count: int) -> list[int]:
    """Indices into ``ids`` (packed 20-byte ids) of the ``count`` ids nearest to
    ``target`` by XOR distance, nearest first: the reference for the C kernel
    ``qudag_core._kademlia.closest_indices`` (same contract, same errors)."""
    if len(ids) % ID_BYTES or len(target) != ID_BYTES:
        raise ValueError("ids must be packed 20-byte ids and target 20 bytes")
    t = int.from_bytes(target, "big")
    n = len(ids) // ID_BYTES
    keys = [int.from_bytes(ids[ID_BYTES * i:ID_BYTES * (i + 1)], "big") ^ t for i in range(n)]
    return heapq.nsmallest(max(0, min(count, n)), range(n), key=keys.__getitem__)


try:
    from qudag_core._kademlia import closest_indices as _closest_indices
except ImportError:  # pure build (QUDAG_NO_EXTENSIONS=1) or no compiler
    _closest_indices = closest_indices_py


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DiversityConfig:
    """IP-diversity limits (anti-eclipse).  Default ON.

    Tests and simulations on loopback either give every node a distinct
    ``127.x.y.z`` with a distinct ``x.y`` (distinct /24s pass the default limits) or pass
    ``DiversityConfig(enabled=False)``; production code should leave it enabled.
    """

    enabled: bool = True
    #: nodes allowed per address prefix inside one bucket
    per_bucket: int = 2
    #: nodes allowed per address prefix in the whole table
    per_table: int = 10
    #: prefix length that groups IPv4 addresses (IPv4-mapped IPv6 counts as IPv4)
    v4_prefix: int = 24
    #: prefix length that groups IPv6 addresses
    v6_prefix: int = 48


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class RoutingConfig:
    """Routing-table parameters; defaults follow BEP 5 and QuDAG (k = 20)."""

    #: bucket size
    k: int = 20
    #: consecutive unanswered queries after which a node is bad (BEP 5: "multiple")
    bad_after_failures: int = 2
    #: a node that responded (or queried us, having responded once) within this is good
    good_window: float = 15 * 60.0
    #: a bucket unchanged for this long is due a refresh
    refresh_interval: float = 15 * 60.0
    #: replacement-cache entries kept per bucket
    replacement_cache_size: int = 8
    #: a questionable node pinged less than this ago is not pinged again
    ping_interval: float = 10.0
    diversity: DiversityConfig = DiversityConfig()


class NodeState(enum.Enum):
    GOOD = "good"
    QUESTIONABLE = "questionable"
    BAD = "bad"


class Outcome(enum.Enum):
    """What ``add_or_update`` did."""

    ADDED = "added"  #: inserted into a bucket with room
    UPDATED = "updated"  #: already in the table; times refreshed
    REPLACED = "replaced"  #: inserted in place of a bad node (``AddResult.evicted``)
    CACHED = "cached"  #: bucket full of good/questionable nodes: kept in the replacement cache
    REJECTED_SELF = "rejected-self"  #: our own id
    REJECTED_INVALID = "rejected-invalid"  #: id not 20 bytes / port out of range
    REJECTED_ADDRESS = "rejected-address"  #: host is not an IP literal
    REJECTED_DIVERSITY = "rejected-diversity"  #: prefix limit reached
    REJECTED_ADDR_CONFLICT = "rejected-addr-conflict"  #: known id claimed from another address
    REJECTED_ADDR_IN_USE = "rejected-addr-in-use"  #: address held by another live id


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AddResult:
    outcome: Outcome
    #: ``(node_id, addr)`` of questionable nodes the caller should ping now
    pings: tuple = ()
    #: id of the bad node removed for a REPLACED outcome
    evicted: bytes | None = None

    @property
    def inserted(self) -> bool:
        return self.outcome in (Outcome.ADDED, Outcome.REPLACED)


# Shared (frozen) result for the common case: building a dataclass per contact cost as
# much as the update itself.
_UPDATED = AddResult(outcome=Outcome.UPDATED)
_CACHED = AddResult(outcome=Outcome.CACHED)


_NO_PREFIX = object()  # memo sentinel: None is a valid answer ("not an IP literal")


def address_prefix(host: str, config: DiversityConfig = DiversityConfig()) -> bytes | None:
    """The diversity group of ``host`` (``b"4"``/``b"6"`` + masked address), or ``None``
    if ``host`` is not an IP literal."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.version == 4:
        return b"4" + (int(ip) >> (32 - config.v4_prefix)).to_bytes(4, "big")
    return b"6" + (int(ip) >> (128 - config.v6_prefix)).to_bytes(16, "big")


class Node:
    """One routing-table entry.  Returned by the table for reading; do not mutate."""

    __slots__ = ("node_id", "addr", "prefix", "last_response", "last_query",
                 "failures", "first_seen", "ping_sent", "compact", "slot")

    def __init__(self, node_id: bytes, addr: tuple, prefix: bytes, now: float) -> None:
        self.node_id = node_id
        self.addr = addr
        self.prefix = prefix
        #: BEP 5 compact node info (26 bytes; 38 for IPv6, BEP 32), or None if the host
        #: has no packed form (an IPv6 scope id).  Built once: every find_node reply
        #: carries k of them.
        self.compact: bytes | None = _compact_node(node_id, addr)
        self.last_response: float | None = None
        self.last_query: float | None = None
        self.failures = 0
        self.first_seen = now
        self.ping_sent: float | None = None
        #: position in the table's packed id array while in a bucket, else -1
        self.slot = -1

    def state(self, now: float, config: RoutingConfig) -> NodeState:
        if self.failures >= config.bad_after_failures:
            return NodeState.BAD
        lr = self.last_response
        if lr is not None:
            if now - lr < config.good_window:
                return NodeState.GOOD
            lq = self.last_query
            if lq is not None and now - lq < config.good_window:
                return NodeState.GOOD
        return NodeState.QUESTIONABLE

    def __repr__(self) -> str:
        return f"Node({self.node_id.hex()}, {self.addr!r}, failures={self.failures})"


class _Bucket:
    __slots__ = ("nodes", "replacements", "last_changed", "last_refreshed", "prefix_count")

    def __init__(self, now: float) -> None:
        self.nodes: list[Node] = []
        self.replacements: OrderedDict[bytes, Node] = OrderedDict()
        self.last_changed = now
        self.last_refreshed = now
        self.prefix_count: dict[bytes, int] = {}


def _compact_node(node_id: bytes, addr: tuple) -> bytes | None:
    host = addr[0]
    try:
        ip = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except (OSError, ValueError, TypeError):
        return None
    return node_id + ip + addr[1].to_bytes(2, "big")


def _valid_addr(addr: object) -> bool:
    return (isinstance(addr, tuple) and len(addr) == 2 and isinstance(addr[0], str)
            and isinstance(addr[1], int) and not isinstance(addr[1], bool) and 0 < addr[1] < 65536)


class RoutingTable:
    """BEP 5 routing table around ``own_id`` (20 bytes).

    ``now`` passed to the constructor is the creation time, the baseline for refreshes
    of buckets that have never changed.
    """

    def __init__(self, own_id: bytes, *, config: RoutingConfig | None = None, now: float = 0.0) -> None:
        if not isinstance(own_id, bytes) or len(own_id) != ID_BYTES:
            raise ValueError("own_id must be 20 bytes")
        self.own_id = own_id
        self._own = int.from_bytes(own_id, "big")
        self.config = config if config is not None else RoutingConfig()
        if self.config.k < 1:
            raise ValueError("k must be >= 1")
        self._created = now
        self._buckets: dict[int, _Bucket] = {}
        self._nodes: dict[bytes, Node] = {}
        self._by_addr: dict[tuple, bytes] = {}
        self._prefix_count: dict[bytes, int] = {}
        self._prefix_memo: dict = {}
        # Every node in a bucket, and its id packed at 20 * node.slot in ``_ids``:
        # ``closest()`` selects over the packed ids (in C when built) instead of
        # building a 160-bit integer key per node per query.
        self._ids = bytearray()
        self._slots: list[Node] = []

    # -- inspection ---------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._nodes)

    def __iter__(self) -> Iterator[Node]:
        for i in sorted(self._buckets):
            yield from list(self._buckets[i].nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def get(self, node_id: bytes) -> Node | None:
        return self._nodes.get(node_id)

    def state_of(self, node_id: bytes, now: float) -> NodeState | None:
        n = self._nodes.get(node_id)
        return None if n is None else n.state(now, self.config)

    def bucket_index(self, node_id: bytes) -> int:
        """Length of the prefix ``node_id`` shares with our id (160 for our own id)."""
        return ID_BITS - (int.from_bytes(node_id, "big") ^ self._own).bit_length()

    def bucket_sizes(self) -> dict[int, int]:
        return {i: len(b.nodes) for i, b in self._buckets.items() if b.nodes}

    def replacement_ids(self, index: int) -> list[bytes]:
        b = self._buckets.get(index)
        return [] if b is None else list(b.replacements)

    def prefix_counts(self) -> dict[bytes, int]:
        return {p: c for p, c in self._prefix_count.items() if c}

    # -- updates ------------------------------------------------------------------
    def add_or_update(self, node_id: bytes, addr: tuple, now: float, *,
                      responded: bool = False, queried_us: bool = False) -> AddResult:
        """Record contact with ``node_id`` at ``addr``.

        ``responded``: it answered a query of ours (clears its failure count);
        ``queried_us``: it sent us a query.  Neither: we only heard of it (it is inserted
        as questionable).  Returns what happened and any pings to send.
        """
        if not isinstance(node_id, bytes) or len(node_id) != ID_BYTES or not _valid_addr(addr):
            return AddResult(outcome=Outcome.REJECTED_INVALID)
        if node_id == self.own_id:
            return AddResult(outcome=Outcome.REJECTED_SELF)
        cfg = self.config
        existing = self._nodes.get(node_id)
        if existing is not None:
            if existing.addr == addr:
                self._touch(existing, now, responded, queried_us)
                return _UPDATED
            # A known id from a new address: only believed once the old entry is bad,
            # so nobody can hijack a live node's id by claiming it from elsewhere.
            if existing.state(now, cfg) is not NodeState.BAD:
                return AddResult(outcome=Outcome.REJECTED_ADDR_CONFLICT)
            self._unlink(existing)
        holder = self._by_addr.get(addr)
        if holder is not None:
            other = self._nodes[holder]
            if other.state(now, cfg) is not NodeState.BAD:
                return AddResult(outcome=Outcome.REJECTED_ADDR_IN_USE)
            self._unlink(other)
        prefix = self._prefix_of(addr[0])
        if prefix is None:
            return AddResult(outcome=Outcome.REJECTED_ADDRESS)
        index = self.bucket_index(node_id)
        bucket = self._bucket(index)
        node = bucket.replacements.pop(node_id, None)
        if node is None or node.addr != addr:
            node = Node(node_id, addr, prefix, now)
        self._touch(node, now, responded, queried_us)
        if len(bucket.nodes) < cfg.k:
            if not self._diversity_ok(bucket, prefix, None):
                return AddResult(outcome=Outcome.REJECTED_DIVERSITY)
            self._link(bucket, node, now)
            return AddResult(outcome=Outcome.ADDED)
        # Full bucket: replace a bad node, else cache the newcomer and ping questionables.
        bad = [n for n in bucket.nodes if n.failures >= cfg.bad_after_failures]
        if bad:
            victim = None
            for b in bad:
                if self._diversity_ok(bucket, prefix, b):
                    victim = b
                    break
            if victim is None:
                return AddResult(outcome=Outcome.REJECTED_DIVERSITY)
            self._unlink(victim)
            self._link(bucket, node, now)
            return AddResult(outcome=Outcome.REPLACED, evicted=victim.node_id)
        self._cache(bucket, node)
        pings = []
        for n in bucket.nodes:
            if n.state(now, cfg) is NodeState.QUESTIONABLE and (
                    n.ping_sent is None or now - n.ping_sent >= cfg.ping_interval):
                n.ping_sent = now
                pings.append((n.node_id, n.addr))
        if not pings:
            return _CACHED
        return AddResult(outcome=Outcome.CACHED, pings=tuple(pings))

    def mark_failed(self, node_id: bytes, now: float) -> Node | None:
        """A query to ``node_id`` went unanswered (or was answered wrongly).

        Once the node is bad and its bucket has a usable replacement, the replacement
        takes its place; the promoted node is returned.
        """
        node = self._nodes.get(node_id)
        if node is None:
            if isinstance(node_id, bytes) and len(node_id) == ID_BYTES and node_id != self.own_id:
                b = self._buckets.get(self.bucket_index(node_id))
                if b is not None:
                    b.replacements.pop(node_id, None)
            return None
        node.failures += 1
        node.ping_sent = None
        if node.failures < self.config.bad_after_failures:
            return None
        bucket = self._buckets[self.bucket_index(node_id)]
        return self._promote(bucket, node, now)

    def remove(self, node_id: bytes, now: float | None = None) -> bool:
        """Drop ``node_id`` from the table or its replacement cache (a replacement, if
        any, is promoted into the freed slot)."""
        node = self._nodes.get(node_id)
        if node is None:
            if isinstance(node_id, bytes) and len(node_id) == ID_BYTES and node_id != self.own_id:
                b = self._buckets.get(self.bucket_index(node_id))
                if b is not None and b.replacements.pop(node_id, None) is not None:
                    return True
            return False
        bucket = self._buckets[self.bucket_index(node_id)]
        self._unlink(node)
        self._promote(bucket, None, bucket.last_changed if now is None else now)
        return True

    # -- queries ------------------------------------------------------------------
    def closest(self, target: bytes, count: int | None = None, *, include_bad: bool = False) -> list[Node]:
        """Up to ``count`` (default k) nodes sorted by XOR distance to ``target``; bad
        nodes are left out unless ``include_bad``."""
        return self._nearest(target, self.config.k if count is None else count, include_bad)

    def compact_closest(self, target: bytes, count: int) -> tuple:
        """``(nodes, nodes6)``: the compact node info (BEP 5; BEP 32 for IPv6) of the
        ``count`` good nodes closest to ``target``, each family concatenated, closest
        first: the ``nodes``/``nodes6`` of a find_node reply, built without a list of
        nodes in between."""
        v4 = []
        v6 = []
        for node in self._nearest(target, count, False):
            c = node.compact
            if c is not None:
                (v4 if len(c) == 26 else v6).append(c)
        return b"".join(v4), b"".join(v6)

    def _nearest(self, target: bytes, count: int, include_bad: bool) -> list:
        slots = self._slots
        n = len(slots)
        if count <= 0 or n == 0:
            return []
        limit = self.config.bad_after_failures
        want = count
        while True:
            out: list[Node] = []
            for i in _closest_indices(self._ids, target, want):
                node = slots[i]
                if include_bad or node.failures < limit:
                    out.append(node)
                    if len(out) == count:
                        return out
            if want >= n:
                return out
            want = n  # bad nodes were among the nearest: select over the whole table

    def due_refreshes(self, now: float, rng: Callable[[int], bytes]) -> list[bytes]:
        """Random target ids for every bucket unchanged and unrefreshed for
        ``refresh_interval``; calling this marks them refreshed (so they are due again
        one interval later even if the lookup finds nobody).  Buckets from 0 to the
        deepest populated one are considered (the buckets a BEP 5 tree would have)."""
        if not self._nodes:
            return []
        deepest = max(i for i, b in self._buckets.items() if b.nodes)
        out = []
        for i in range(deepest + 1):
            b = self._bucket(i)
            if now - max(b.last_changed, b.last_refreshed) >= self.config.refresh_interval:
                b.last_refreshed = now
                out.append(self.random_id_in_bucket(i, rng))
        return out

    def next_refresh_time(self) -> float | None:
        """When ``due_refreshes`` will next return something (for ``get_timer``)."""
        if not self._nodes:
            return None
        deepest = max(i for i, b in self._buckets.items() if b.nodes)
        best = None
        for i in range(deepest + 1):
            b = self._buckets.get(i)
            t = (self._created if b is None else max(b.last_changed, b.last_refreshed)) + self.config.refresh_interval
            if best is None or t < best:
                best = t
        return best

    def random_id_in_bucket(self, index: int, rng: Callable[[int], bytes]) -> bytes:
        """A uniformly random id sharing exactly ``index`` leading bits with our id."""
        if not 0 <= index < ID_BITS:
            raise ValueError("bucket index out of range")
        r = int.from_bytes(rng(ID_BYTES), "big")
        flip = 1 << (ID_BITS - 1 - index)
        high = _ID_MASK ^ ((flip << 1) - 1)
        t = (self._own & high) | ((self._own ^ flip) & flip) | (r & (flip - 1))
        return t.to_bytes(ID_BYTES, "big")

    # -- persistence --------------------------------------------------------------
    def snapshot(self) -> list[tuple]:
        """``[(node_id, host, port, last_response, last_query), ...]`` for every node in
        the table, plain values only (bencode/JSON friendly after id hex-encoding)."""
        return [(n.node_id, n.addr[0], n.addr[1], n.last_response, n.last_query) for n in self]

    def restore(self, entries: Iterable[tuple], now: float) -> int:
        """Re-insert a ``snapshot()``; timestamps are clamped to ``now`` and restored nodes
        start with no failures.  Malformed entries are skipped.  Returns how many were
        inserted."""
        count = 0
        for e in entries:
            try:
                node_id, host, port, last_response, last_query = e
            except (TypeError, ValueError):
                continue
            r = self.add_or_update(node_id, (host, port), now)
            if not r.inserted:
                continue
            n = self._nodes[node_id]
            if isinstance(last_response, (int, float)):
                n.last_response = min(float(last_response), now)
            if isinstance(last_query, (int, float)):
                n.last_query = min(float(last_query), now)
            count += 1
        return count

    # -- internals ----------------------------------------------------------------
    def _prefix_of(self, host: str) -> bytes | None:
        """``address_prefix`` memoised per host string (it parses with ``ipaddress``, pure
        Python; a full bucket sees the same responders again and again).  Bounded."""
        memo = self._prefix_memo
        p = memo.get(host, _NO_PREFIX)
        if p is _NO_PREFIX:
            p = address_prefix(host, self.config.diversity)
            if len(memo) >= 4096:
                memo.clear()
            memo[host] = p
        return p

    def _bucket(self, index: int) -> _Bucket:
        b = self._buckets.get(index)
        if b is None:
            # A bucket that never held anyone counts as unchanged since table creation.
            b = _Bucket(self._created)
            self._buckets[index] = b
        return b

    def _touch(self, node: Node, now: float, responded: bool, queried_us: bool) -> None:
        if responded:
            node.last_response = now
            node.failures = 0
            node.ping_sent = None
            b = self._buckets.get(self.bucket_index(node.node_id))
            if b is not None and node.node_id in self._nodes:
                b.last_changed = now
        if queried_us:
            node.last_query = now

    def _diversity_ok(self, bucket: _Bucket, prefix: bytes, removing: Node | None) -> bool:
        d = self.config.diversity
        if not d.enabled:
            return True
        in_bucket = bucket.prefix_count.get(prefix, 0)
        in_table = self._prefix_count.get(prefix, 0)
        if removing is not None and removing.prefix == prefix:
            in_bucket -= 1
            in_table -= 1
        return in_bucket < d.per_bucket and in_table < d.per_table

    def _link(self, bucket: _Bucket, node: Node, now: float) -> None:
        bucket.nodes.append(node)
        bucket.last_changed = now
        bucket.prefix_count[node.prefix] = bucket.prefix_count.get(node.prefix, 0) + 1
        self._prefix_count[node.prefix] = self._prefix_count.get(node.prefix, 0) + 1
        self._nodes[node.node_id] = node
        self._by_addr[node.addr] = node.node_id
        node.slot = len(self._slots)
        self._slots.append(node)
        self._ids += node.node_id

    def _unlink(self, node: Node) -> None:
        bucket = self._buckets[self.bucket_index(node.node_id)]
        bucket.nodes.remove(node)
        for counts in (bucket.prefix_count, self._prefix_count):
            c = counts[node.prefix] - 1
            if c:
                counts[node.prefix] = c
            else:
                del counts[node.prefix]
        del self._nodes[node.node_id]
        if self._by_addr.get(node.addr) == node.node_id:
            del self._by_addr[node.addr]
        # swap-remove from the packed ids: the last node takes the freed slot
        i = node.slot
        last = self._slots.pop()
        if last is not node:
            self._slots[i] = last
            self._ids[ID_BYTES * i:ID_BYTES * (i + 1)] = last.node_id
            last.slot = i
        del self._ids[len(self._ids) - ID_BYTES:]
        node.slot = -1

    def _cache(self, bucket: _Bucket, node: Node) -> None:
        reps = bucket.replacements
        reps.pop(node.node_id, None)
        reps[node.node_id] = node
        while len(reps) > self.config.replacement_cache_size:
            reps.popitem(last=False)

    def _promote(self, bucket: _Bucket, bad: Node | None, now: float) -> Node | None:
        """Move the freshest usable replacement into the bucket, in place of ``bad``
        (already-unlinked slot when ``bad`` is None)."""
        for rid in reversed(list(bucket.replacements)):
            rep = bucket.replacements[rid]
            holder = self._by_addr.get(rep.addr)
            if holder is not None and holder != (bad.node_id if bad is not None else None):
                continue
            if not self._diversity_ok(bucket, rep.prefix, bad):
                continue
            del bucket.replacements[rid]
            if bad is not None:
                self._unlink(bad)
            rep.ping_sent = None
            self._link(bucket, rep, now)
            return rep
        return None
