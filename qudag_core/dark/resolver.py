"""Sans-IO private resolver for dark addresses (docs/dark.md §6).

Driving API (every call returns a list of ``events.Event``)::

    resolve(address, now)                        -> [FetchDescriptors ... | Resolved | ResolveFailed]
    on_fetch_result(query_id, [bytes...], now)   -> [...]
    on_fetch_failed(query_id, now)               -> [...]
    get_timer() -> float | None;  handle_timer(now) -> [...]   (random start delay, fetch timeouts)

For each lookup the resolver tries the blinded indices of ``lookup_periods(now)`` in
order.  Every descriptor returned is checked cheapest first: parse, index and period
equal to what was asked (else ``WrongIndex``), AEAD open under the address key (a
forgery by someone without the address, or a descriptor of another address, fails here
and is skipped), the period-key signature, the identity's certification of the period
key, expiry, the certificates inside, and finally the revision against the highest seen
for this address (lower = ``Rollback``).  Of the valid descriptors the highest revision
wins; a tombstone wins like any other and yields ``Unpublished``.

Decision a reader asks about: which identity the link handshake must prove.  The
endpoint's ``certificate`` is trusted because the address's identity key certified the
period key which signed the descriptor that carries it.  For a node's long-term address
that certificate's identity *is* the address identity (``DarkEndpoint.is_long_term``);
for an ephemeral address it is the node's long-term certificate, vouched for by the
ephemeral key inside the encrypted layer.  Either way ``connect(peer_certificate=
endpoint.certificate, expected_peer_id=endpoint.expected_peer_id)`` makes the handshake
prove the peer holds that certificate's keys.

Privacy options: ``dummies`` random-index fetches per real lookup (shuffled among the real
one, same shape), a random ``max_delay`` before the first fetch (``get_timer``/
``handle_timer``), and ``via_circuit`` set on every fetch for the adapter to honour.
Verification results are cached by BLAKE3 of the descriptor bytes *and* the address, so
a mutated descriptor never hits a cached verdict.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional, Sequence

from qudag_core.crypto.hashing import blake3_hash
from qudag_core.dark.address import DarkAddress
from qudag_core.dark.descriptor import (
    INDEX_LEN,
    KIND_TOMBSTONE,
    DescriptorBadSignature,
    DescriptorDecryptFailed,
    DescriptorMalformed,
    DescriptorWrongIdentity,
    OuterDescriptor,
    descriptor_index,
    lookup_periods,
)
from qudag_core.dark.events import DarkEndpoint, Event, FetchDescriptors, Resolved, ResolveFailed
from qudag_core.errors import LocalProtocolError, RemoteProtocolError
from qudag_core.identity import CertificateError, CertificateExpired

__all__ = [
    "Resolver",
    "ResolveError",
    "NotFound",
    "Unpublished",
    "ResolveExpired",
    "InvalidDescriptorSignature",
    "Rollback",
    "WrongIndex",
]

#: Descriptors looked at per fetch answer (a store keeps at most 8 per index).
MAX_DESCRIPTORS_PER_ANSWER = 16


class ResolveError(RemoteProtocolError):
    """A dark address could not be resolved."""

    error_code = 0x70


class NotFound(ResolveError):
    """No valid descriptor at any of the indices tried."""

    error_code = 0x71


class Unpublished(NotFound):
    """The newest valid descriptor is a tombstone: the service unpublished itself."""

    error_code = 0x72


class ResolveExpired(ResolveError):
    """The only valid descriptors (or their certificates) have expired."""

    error_code = 0x73


class InvalidDescriptorSignature(ResolveError):
    """Descriptors decrypted but their signatures, certification, identity key or
    certificates did not verify (or were malformed)."""

    error_code = 0x74


class Rollback(ResolveError):
    """Valid descriptors, but with a revision lower than one already seen."""

    error_code = 0x75


class WrongIndex(ResolveError):
    """A descriptor was served for a different index or period than requested."""

    error_code = 0x76


# Which error to report when nothing valid came back: the most specific one.
_PRIORITY = {Rollback: 5, ResolveExpired: 4, InvalidDescriptorSignature: 3, WrongIndex: 2, NotFound: 1}


class _Lookup:
    __slots__ = ("address", "periods", "pos", "error", "fetched_ok", "fire_at")

    def __init__(self, address: DarkAddress, periods: list, fire_at: float) -> None:
        self.address = address
        self.periods = periods
        self.pos = 0
        self.error: Optional[ResolveError] = None
        self.fetched_ok = False
        self.fire_at = fire_at

    def note(self, err: ResolveError) -> None:
        if self.error is None or _PRIORITY[type(err)] > _PRIORITY[type(self.error)]:
            self.error = err


class Resolver:
    """Resolve dark addresses through any DHT, with verification, caching and privacy."""

    def __init__(
        self,
        rng: Callable[[int], bytes],
        *,
        cache_size: int = 256,
        cache_ttl: float = 600.0,
        negative_ttl: float = 60.0,
        dummies: int = 0,
        max_delay: float = 0.0,
        via_circuit: bool = False,
        max_seen: int = 4096,
        fetch_timeout: float = 15.0,
    ) -> None:
        if cache_size < 1 or cache_ttl <= 0 or negative_ttl < 0 or dummies < 0 or max_delay < 0 or fetch_timeout <= 0:
            raise ValueError("bad resolver parameters")
        self.rng = rng
        self.cache_size = cache_size
        self.cache_ttl = cache_ttl
        self.negative_ttl = negative_ttl
        self.dummies = dummies
        self.max_delay = max_delay
        self.via_circuit = via_circuit
        self.max_seen = max_seen
        self.fetch_timeout = fetch_timeout
        self._deadlines: dict = {}  # query_id -> time after which it counts as failed
        self._cache: OrderedDict = OrderedDict()  # address -> (valid_until, Event)
        self._seen: OrderedDict = OrderedDict()  # address raw -> highest revision
        self._verified: OrderedDict = OrderedDict()  # blake3(bytes)|address -> (outer, inner)
        self._lookups: dict = {}  # address -> _Lookup
        self._queries: dict = {}  # query_id -> (_Lookup, index, period) | None (dummy)
        self._delayed: list = []  # _Lookup waiting for its fire_at
        self.cache_hits = 0
        self.cache_misses = 0  # resolve() calls not answered from the cache
        self.signature_checks = 0

    # ------------------------------------------------------------------ driving API
    def resolve(self, address: DarkAddress, now: float) -> list:
        if not isinstance(address, DarkAddress):
            raise LocalProtocolError("resolve() takes a DarkAddress (resolve aliases first)")
        hit = self._cache.get(address)
        if hit is not None:
            valid_until, event = hit
            if now < valid_until:
                self._cache.move_to_end(address)
                self.cache_hits += 1
                if isinstance(event, Resolved):
                    return [Resolved(address=address, endpoint=event.endpoint, from_cache=True)]
                return [ResolveFailed(address=address, error=event.error, from_cache=True)]
            del self._cache[address]
        self.cache_misses += 1
        if address in self._lookups:
            return []  # already under way; its result will be reported once
        delay = self.max_delay * int.from_bytes(self.rng(4), "big") / 2**32 if self.max_delay else 0.0
        lookup = _Lookup(address, lookup_periods(now), now + delay)
        self._lookups[address] = lookup
        if delay > 0:
            self._delayed.append(lookup)
            return []
        return self._fetch(lookup, now)

    def get_timer(self) -> Optional[float]:
        """The next delayed lookup start or fetch deadline."""
        return min([lk.fire_at for lk in self._delayed] + list(self._deadlines.values()), default=None)

    def handle_timer(self, now: float) -> list:
        """Start delayed lookups that are due; fetches unanswered after ``fetch_timeout``
        count as failed (the lookup moves on to its next period, dummies are forgotten)."""
        out: list = []
        ready = [lk for lk in self._delayed if lk.fire_at <= now]
        self._delayed = [lk for lk in self._delayed if lk.fire_at > now]
        for lk in ready:
            out += self._fetch(lk, now)
        for qid in [q for q, t in self._deadlines.items() if t <= now]:
            out += self.on_fetch_failed(qid, now)
        return out

    def on_fetch_result(self, query_id: int, descriptors: Sequence[bytes], now: float) -> list:
        self._deadlines.pop(query_id, None)
        q = self._queries.pop(query_id, None)
        if q is None:
            return []  # a dummy, or an answer we no longer wait for
        lookup, index, period = q
        lookup.fetched_ok = True
        best = None
        for data in list(descriptors)[:MAX_DESCRIPTORS_PER_ANSWER]:
            if not isinstance(data, (bytes, bytearray, memoryview)):
                continue  # the adapter passes DHT values through; anything else is dropped
            try:
                cand = self._check(lookup.address, bytes(data), index, period, now)
            except ResolveError as err:
                lookup.note(err)
                continue
            if cand is not None and (best is None or cand[0].revision > best[0].revision):
                best = cand
        if best is not None:
            return self._finish_ok(lookup, best, now)
        return self._next_period(lookup, now)

    def on_fetch_failed(self, query_id: int, now: float) -> list:
        self._deadlines.pop(query_id, None)
        q = self._queries.pop(query_id, None)
        if q is None:
            return []
        return self._next_period(q[0], now)

    # ------------------------------------------------------------------ internals
    def _qid(self) -> int:
        while True:
            qid = int.from_bytes(self.rng(8), "big")
            if qid not in self._queries:
                return qid

    def _fetch(self, lookup: _Lookup, now: float) -> list:
        period = lookup.periods[lookup.pos]
        index = descriptor_index(lookup.address, period)
        qid = self._qid()
        self._queries[qid] = (lookup, index, period)
        self._deadlines[qid] = now + self.fetch_timeout
        out = [FetchDescriptors(index=index, query_id=qid, via_circuit=self.via_circuit)]
        # Dummies with every real fetch: random indices, same shape, shuffled in.
        for _ in range(self.dummies):
            qid = self._qid()
            self._queries[qid] = None
            self._deadlines[qid] = now + self.fetch_timeout
            dummy = FetchDescriptors(index=self.rng(INDEX_LEN), query_id=qid, via_circuit=self.via_circuit)
            out.insert(int.from_bytes(self.rng(2), "big") % (len(out) + 1), dummy)
        return out

    def _next_period(self, lookup: _Lookup, now: float) -> list:
        lookup.pos += 1
        if lookup.pos < len(lookup.periods):
            return self._fetch(lookup, now)
        del self._lookups[lookup.address]
        err = lookup.error or NotFound(f"no descriptor for {lookup.address}")
        if not lookup.fetched_ok:
            err = NotFound(f"every fetch for {lookup.address} failed")
        elif type(err) is NotFound and self.negative_ttl > 0:
            self._remember(lookup.address, now + self.negative_ttl, ResolveFailed(address=lookup.address, error=err))
        return [ResolveFailed(address=lookup.address, error=err)]

    def _check(self, address: DarkAddress, data: bytes, index: bytes, period: int, now: float):
        """Return ``(outer, inner, svc_cert, relays)`` for a valid descriptor, None for one
        that is simply not this address's (doesn't decrypt), or raise ``ResolveError``."""
        try:
            outer = OuterDescriptor.from_bytes(data)
        except DescriptorMalformed as exc:
            raise InvalidDescriptorSignature(f"malformed descriptor: {exc}") from None
        if outer.index != index or outer.period != period:
            raise WrongIndex("descriptor served for another index or period than requested")
        key = blake3_hash(data, 32) + address.raw
        cached = self._verified.get(key)
        if cached is not None:
            inner = cached
            self._verified.move_to_end(key)
        else:
            try:
                inner = outer.open(address)
            except DescriptorDecryptFailed:
                return None
            except (DescriptorMalformed, DescriptorWrongIdentity) as exc:
                raise InvalidDescriptorSignature(str(exc)) from None
            try:
                self.signature_checks += 1
                outer.verify()
                self.signature_checks += 1
                outer.verify_certification(inner)
            except DescriptorBadSignature as exc:
                raise InvalidDescriptorSignature(str(exc)) from None
            self._verified[key] = inner
            while len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
        if inner.expires_at <= now:
            raise ResolveExpired(f"descriptor expired at {inner.expires_at}")
        try:
            svc, relays = inner.certificates(now) if inner.kind != KIND_TOMBSTONE else (None, [])
        except CertificateError as exc:
            if isinstance(exc, CertificateExpired):
                raise ResolveExpired(f"service certificate: {exc}") from None
            raise InvalidDescriptorSignature(f"certificate in descriptor: {exc}") from None
        if inner.kind != KIND_TOMBSTONE and svc is None and not relays:
            raise InvalidDescriptorSignature("descriptor names neither a certificate nor intro relays")
        seen = self._seen.get(address.raw)
        if seen is not None and outer.revision < seen:
            raise Rollback(f"revision {outer.revision} is below {seen} seen before")
        return outer, inner, svc, relays

    def _finish_ok(self, lookup: _Lookup, best, now: float) -> list:
        outer, inner, svc, relays = best
        address = lookup.address
        del self._lookups[address]
        self._seen[address.raw] = outer.revision
        self._seen.move_to_end(address.raw)
        while len(self._seen) > self.max_seen:
            self._seen.popitem(last=False)
        if inner.kind == KIND_TOMBSTONE:
            ev = ResolveFailed(address=address, error=Unpublished(f"{address} was unpublished"))
            if self.negative_ttl > 0:
                self._remember(address, now + self.negative_ttl, ev)
            return [ev]
        endpoint = DarkEndpoint(address=address, certificate=svc, intro_relays=tuple(relays), revision=outer.revision, expires_at=inner.expires_at)
        ev = Resolved(address=address, endpoint=endpoint)
        until = min(now + self.cache_ttl, inner.expires_at, svc.expires_at if svc is not None else inner.expires_at)
        self._remember(address, until, ev)
        return [ev]

    def _remember(self, address: DarkAddress, until: float, event: Event) -> None:
        self._cache[address] = (until, event)
        self._cache.move_to_end(address)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    @property
    def pending(self) -> int:
        """Lookups under way (delayed or fetching)."""
        return len(self._lookups)
