"""DHT record store: BEP 44 immutable and mutable items plus qudag signed records,
with Kademlia expiry/republish bookkeeping (Maymounkov-Mazieres §2.5), sans-IO.

Rules enforced (BEP 44 "put message" / "errors"):

* mutable: a ``seq`` lower than the stored one is rejected (302); an equal ``seq`` with
  the same value refreshes the record, with a different value is rejected (302); a
  ``cas`` that does not equal the stored ``seq`` is rejected (301); ``v`` over
  ``max_value_bytes`` (205) and ``salt`` over 64 bytes (207) are rejected.
* qudag signed records: a higher ``revision`` replaces, a lower one is rejected (302),
  an equal one behaves like an equal BEP 44 ``seq``.
* immutable: keyed by target; a second put of the same value refreshes it.

Design decision a reader would ask about: **the store never verifies signatures or
target hashes.**  The KRPC layer parses the message, checks the BEP 44 ed25519/ML-DSA
signature (or ``target == H(v)`` for immutable items) and only then calls ``put_*``; the
store keeps values opaquely and enforces ordering, size and quota rules on the parsed
``seq``/``revision``.  Every stored record lives ``ttl`` (24 h) after its last put and is
due a republish ``republish_interval`` (12 h) after it; a put from the network pushes
both back, which is Kademlia's "don't republish what someone just stored" optimisation.
Records we ``put(..., local=True)`` never expire until ``remove``; we keep republishing.

Persistence hook: ``listener`` (default None) is told of every change *before* it is
applied in memory -- ``record_stored(record, stored_at, local, source_ip)`` on an insert,
replace or refresh, ``record_removed(target)`` on a delete (expiry, eviction, ``remove``).
A listener that raises a ``StoreError`` from ``record_stored`` refuses the put and
leaves the store unchanged, so a write-through database (``qudag_io.persist``) commits
a record before the KRPC reply acknowledging it is built.  ``entries()`` and
``restore()`` enumerate and reload records with their storage times.

Memory is bounded by ``max_records`` and ``max_bytes`` (eviction: expired records first,
then least recently stored, which with one TTL for all is the same order) and by a
per-source-IP record quota.  Errors raised are ``StoreError`` subclasses whose
``error_code`` is the KRPC error code to answer with.
"""
from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from typing import Callable, Iterable

from qudag_core.errors import RemoteProtocolError

__all__ = [
    "RecordKind",
    "Record",
    "StoreConfig",
    "RecordStore",
    "Selection",
    "select_record",
    "StoreError",
    "ValueTooBig",
    "SaltTooBig",
    "CasMismatch",
    "SeqTooLow",
    "SeqConflict",
    "KindConflict",
    "QuotaExceeded",
]

_PER_RECORD_OVERHEAD = 96  # rough bookkeeping cost counted against max_bytes


class StoreError(RemoteProtocolError):
    """A put was refused; ``error_code`` is the KRPC error to reply with."""

    error_code = 201


class ValueTooBig(StoreError):
    error_code = 205


class SaltTooBig(StoreError):
    error_code = 207


class CasMismatch(StoreError):
    error_code = 301


class SeqTooLow(StoreError):
    error_code = 302


class SeqConflict(StoreError):
    """Equal seq/revision with a different value."""

    error_code = 302


class KindConflict(StoreError):
    """The target already holds a record of another kind (or another immutable value)."""

    error_code = 201


class QuotaExceeded(StoreError):
    """The source IP holds its quota of records (202: the server declines)."""

    error_code = 202


class RecordKind(enum.Enum):
    IMMUTABLE = "immutable"
    MUTABLE = "mutable"  #: BEP 44 mutable item, ordered by ``seq``
    SIGNED = "signed"  #: qudag signed record, ordered by ``revision`` (kept in ``seq``)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """A stored item.  ``seq`` is the BEP 44 seq or the qudag revision (None for
    immutable items); ``pubkey``/``salt``/``signature`` are kept opaquely for serving
    ``get``."""

    target: bytes
    kind: RecordKind
    value: bytes
    seq: int | None = None
    pubkey: bytes = b""
    salt: bytes = b""
    signature: bytes = b""

    def size(self) -> int:
        return (len(self.value) + len(self.pubkey) + len(self.salt) + len(self.signature)
                + len(self.target) + _PER_RECORD_OVERHEAD)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StoreConfig:
    ttl: float = 24 * 3600.0
    republish_interval: float = 12 * 3600.0
    max_records: int = 10_000
    max_bytes: int = 16 * 1024 * 1024
    #: records one source IP may hold
    per_ip_records: int = 64
    #: BEP 44 limit on ``v`` (immutable and mutable items)
    max_value_bytes: int = 1000
    #: limit on qudag signed records (ML-DSA-65 keys and signatures are kilobytes)
    max_signed_bytes: int = 16 * 1024
    max_salt_bytes: int = 64


class _Entry:
    __slots__ = ("record", "stored_at", "republish_at", "source", "local", "nbytes")

    def __init__(self, record: Record, now: float, source: str | None, local: bool, interval: float) -> None:
        self.record = record
        self.stored_at = now
        self.republish_at = now + interval
        self.source = source
        self.local = local
        self.nbytes = record.size()


class RecordStore:
    """Bounded record store; see the module docstring for the rules."""

    def __init__(self, config: StoreConfig | None = None) -> None:
        self.config = config if config is not None else StoreConfig()
        if self.config.max_records < 1 or self.config.max_bytes < 1 or self.config.per_ip_records < 1:
            raise ValueError("store limits must be positive")
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()  # least recently stored first
        self._per_ip: dict[str, int] = {}
        self.bytes_used = 0
        self.evictions = 0
        #: persistence hook (see the module docstring); ``None``: no listener
        self.listener: object = None

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, target: object) -> bool:
        return target in self._entries

    # -- reads --------------------------------------------------------------------
    def get(self, target: bytes, now: float) -> Record | None:
        e = self._entries.get(target)
        if e is None:
            return None
        if self._expired(e, now):
            self._delete(target)
            return None
        return e.record

    def records(self) -> list[Record]:
        return [e.record for e in self._entries.values()]

    def entries(self) -> list[tuple]:
        """``[(record, stored_at, local, source_ip)]``, least recently stored first
        (for persistence; ``restore`` takes the same fields back)."""
        return [(e.record, e.stored_at, e.local, e.source) for e in self._entries.values()]

    def restore(self, record: Record, stored_at: float, now: float, *, local: bool = False,
                source_ip: str | None = None) -> bool:
        """Reload a record saved from ``entries()``: kept with its original
        ``stored_at`` (clamped to ``now``), so it expires when it would have.  Expired
        records, targets already present and records the limits or quotas refuse are
        skipped (returns False).  The listener is not told of the insert (the record
        came from it); evictions made to fit it are reported as usual."""
        if not isinstance(record, Record) or record.target in self._entries:
            return False
        stored_at = min(stored_at, now)
        if not local and now - stored_at >= self.config.ttl:
            return False
        try:
            self._check_quota(source_ip, None)
            self._make_room(record.size(), now, None)
        except StoreError:
            return False
        e = _Entry(record, stored_at, source_ip, local, self.config.republish_interval)
        self._entries[record.target] = e
        self.bytes_used += e.nbytes
        if source_ip is not None:
            self._per_ip[source_ip] = self._per_ip.get(source_ip, 0) + 1
        return True

    # -- writes -------------------------------------------------------------------
    def put_immutable(self, target: bytes, value: bytes, now: float, *, source_ip: str | None = None,
                      local: bool = False) -> Record:
        """Store an immutable item the caller has checked against ``target``."""
        if len(value) > self.config.max_value_bytes:
            raise ValueTooBig("value too big")
        e = self._live(target, now)
        if e is not None:
            if e.record.kind is not RecordKind.IMMUTABLE or e.record.value != value:
                raise KindConflict("target holds another record")
            self._refresh(target, e, now, source_ip, local)
            return e.record
        rec = Record(target=target, kind=RecordKind.IMMUTABLE, value=value)
        return self._insert(rec, now, source_ip, local)

    def put_mutable(self, target: bytes, value: bytes, seq: int, now: float, *, pubkey: bytes = b"",
                    salt: bytes = b"", signature: bytes = b"", cas: int | None = None,
                    source_ip: str | None = None, local: bool = False) -> Record:
        """Store a BEP 44 mutable item whose signature the caller has verified."""
        if len(value) > self.config.max_value_bytes:
            raise ValueTooBig("value too big")
        if len(salt) > self.config.max_salt_bytes:
            raise SaltTooBig("salt too big")
        return self._put_ordered(RecordKind.MUTABLE, target, value, seq, now, pubkey, salt, signature,
                                 cas, source_ip, local)

    def put_signed(self, target: bytes, value: bytes, revision: int, now: float, *, pubkey: bytes = b"",
                   signature: bytes = b"", source_ip: str | None = None, local: bool = False) -> Record:
        """Store a qudag signed record whose signature the caller has verified."""
        if len(value) + len(pubkey) + len(signature) > self.config.max_signed_bytes:
            raise ValueTooBig("record too big")
        return self._put_ordered(RecordKind.SIGNED, target, value, revision, now, pubkey, b"", signature,
                                 None, source_ip, local)

    def remove(self, target: bytes) -> bool:
        if target not in self._entries:
            return False
        self._delete(target)
        return True

    # -- maintenance --------------------------------------------------------------
    def expire(self, now: float) -> int:
        """Drop every expired record; returns how many."""
        dead = [t for t, e in self._entries.items() if self._expired(e, now)]
        for t in dead:
            self._delete(t)
        return len(dead)

    def due_republish(self, now: float, limit: int | None = None) -> list[Record]:
        """Records due a republish (to the k closest nodes, by the caller), oldest first.
        Call ``mark_republished`` after sending them."""
        out = []
        for e in self._entries.values():
            if e.republish_at <= now and not self._expired(e, now):
                out.append(e.record)
                if limit is not None and len(out) >= limit:
                    break
        return out

    def mark_republished(self, target: bytes, now: float) -> None:
        e = self._entries.get(target)
        if e is not None:
            e.republish_at = now + self.config.republish_interval

    def next_deadline(self) -> float | None:
        """The earliest expiry or republish time (for the caller's ``get_timer``)."""
        best = None
        for e in self._entries.values():
            t = e.republish_at if e.local else min(e.republish_at, e.stored_at + self.config.ttl)
            if best is None or t < best:
                best = t
        return best

    def count_for(self, source_ip: str) -> int:
        return self._per_ip.get(source_ip, 0)

    # -- internals ----------------------------------------------------------------
    def _expired(self, e: _Entry, now: float) -> bool:
        return not e.local and now - e.stored_at >= self.config.ttl

    def _live(self, target: bytes, now: float) -> _Entry | None:
        e = self._entries.get(target)
        if e is not None and self._expired(e, now):
            self._delete(target)
            return None
        return e

    def _put_ordered(self, kind: RecordKind, target: bytes, value: bytes, seq: int, now: float,
                     pubkey: bytes, salt: bytes, signature: bytes, cas: int | None,
                     source_ip: str | None, local: bool) -> Record:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise StoreError("seq must be a non-negative integer", error_code=203)
        e = self._live(target, now)
        if e is not None:
            old = e.record
            if old.kind is not kind:
                raise KindConflict("target holds another kind of record")
            assert old.seq is not None
            if cas is not None and cas != old.seq:
                raise CasMismatch("CAS mismatch")
            if seq < old.seq:
                raise SeqTooLow("sequence number less than current")
            if seq == old.seq:
                if old.value != value:
                    raise SeqConflict("same sequence number, different value")
                self._refresh(target, e, now, source_ip, local)
                return old
            rec = Record(target=target, kind=kind, value=value, seq=seq, pubkey=pubkey, salt=salt,
                         signature=signature)
            self._replace(target, e, rec, now, source_ip, local)
            return rec
        rec = Record(target=target, kind=kind, value=value, seq=seq, pubkey=pubkey, salt=salt,
                     signature=signature)
        return self._insert(rec, now, source_ip, local)

    def _check_quota(self, source_ip: str | None, previous: str | None) -> None:
        if source_ip is None or source_ip == previous:
            return
        if self._per_ip.get(source_ip, 0) >= self.config.per_ip_records:
            raise QuotaExceeded("storage quota for this address reached")

    def _make_room(self, nbytes: int, now: float, keep: bytes | None) -> None:
        """Free room for ``nbytes`` more bytes and, when ``keep`` is None, one more record."""
        cfg = self.config
        if nbytes > cfg.max_bytes:
            raise ValueTooBig("record larger than the store")
        slots = 1 if keep is None else 0
        if len(self._entries) + slots > cfg.max_records or self.bytes_used + nbytes > cfg.max_bytes:
            self.expire(now)
        while self._entries and (len(self._entries) + slots > cfg.max_records
                                 or self.bytes_used + nbytes > cfg.max_bytes):
            victim = None
            for t, e in self._entries.items():  # least recently stored first
                if t != keep and not e.local:
                    victim = t
                    break
            if victim is None:
                raise QuotaExceeded("store full of local records")
            self._delete(victim)
            self.evictions += 1

    def _insert(self, rec: Record, now: float, source_ip: str | None, local: bool) -> Record:
        self._check_quota(source_ip, None)
        nbytes = rec.size()
        self._make_room(nbytes, now, None)
        if self.listener is not None:
            self.listener.record_stored(rec, now, local, source_ip)
        self._entries[rec.target] = _Entry(rec, now, source_ip, local, self.config.republish_interval)
        self.bytes_used += nbytes
        if source_ip is not None:
            self._per_ip[source_ip] = self._per_ip.get(source_ip, 0) + 1
        return rec

    def _replace(self, target: bytes, e: _Entry, rec: Record, now: float, source_ip: str | None,
                 local: bool) -> None:
        self._check_quota(source_ip, e.source)
        grow = rec.size() - e.nbytes
        if grow > 0:
            self._make_room(grow, now, target)
        if self.listener is not None:
            self.listener.record_stored(rec, now, e.local or local,
                                        e.source if source_ip is None else source_ip)
        self.bytes_used += rec.size() - e.nbytes
        e.record = rec
        e.nbytes = rec.size()
        self._refresh(target, e, now, source_ip, local, notify=False)

    def _refresh(self, target: bytes, e: _Entry, now: float, source_ip: str | None, local: bool,
                 notify: bool = True) -> None:
        if source_ip is not None and source_ip != e.source:
            self._check_quota(source_ip, e.source)
        if notify and self.listener is not None:
            self.listener.record_stored(e.record, now, e.local or local,
                                        e.source if source_ip is None else source_ip)
        if source_ip is not None and source_ip != e.source:
            self._move_source(e, source_ip)
        e.stored_at = now
        e.republish_at = now + self.config.republish_interval
        e.local = e.local or local
        self._entries.move_to_end(target)

    def _move_source(self, e: _Entry, source_ip: str | None) -> None:
        if e.source is not None:
            c = self._per_ip[e.source] - 1
            if c:
                self._per_ip[e.source] = c
            else:
                del self._per_ip[e.source]
        e.source = source_ip
        if source_ip is not None:
            self._per_ip[source_ip] = self._per_ip.get(source_ip, 0) + 1

    def _delete(self, target: bytes) -> None:
        if self.listener is not None:
            self.listener.record_removed(target)
        e = self._entries.pop(target)
        self.bytes_used -= e.nbytes
        self._move_source(e, None)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Selection:
    """The outcome of ``select_record``."""

    #: the accepted record: highest seq/revision among those that verify
    record: object
    #: how many returned records equal the accepted one (same seq and value)
    agreement: int
    #: how many returned records verified
    verified: int
    #: how many records were given
    total: int
    #: another verified record had the same seq with a different value
    conflict: bool


def select_record(records: Iterable, verify: Callable[[object], bool]) -> Selection | None:
    """Pick the record to accept from the ones several nodes returned for one target
    (quorum read helper).  ``records`` have ``.seq`` (None for immutable) and ``.value``
    (e.g. ``Record``); ``verify(record)`` checks the signature / target hash and may
    raise or return False for bad ones.  Among verified records the highest seq wins;
    among equal seqs with different values the one most nodes agree on, then the
    smallest value (deterministic).  Returns None when nothing verifies."""
    total = 0
    good = []
    for r in records:
        total += 1
        try:
            ok = verify(r)
        except Exception:  # a verifier rejecting garbage is a "no", whatever it raises
            ok = False
        if ok:
            good.append(r)
    if not good:
        return None
    top = max(-1 if r.seq is None else r.seq for r in good)
    counts: dict[bytes, int] = {}
    first: dict[bytes, object] = {}
    for r in good:
        if (-1 if r.seq is None else r.seq) == top:
            counts[r.value] = counts.get(r.value, 0) + 1
            first.setdefault(r.value, r)
    value = min(counts, key=lambda v: (-counts[v], len(v), v))
    return Selection(record=first[value], agreement=counts[value], verified=len(good), total=total,
                     conflict=len(counts) > 1)
