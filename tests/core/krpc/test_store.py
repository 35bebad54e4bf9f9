"""Record store (BEP 44 put rules, qudag signed-record revisions, Kademlia expiry and
republish), quotas and eviction with an injected clock; the quorum-read helper."""
from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.errors import RemoteProtocolError
from qudag_core.krpc.store import (
    CasMismatch,
    KindConflict,
    QuotaExceeded,
    Record,
    RecordKind,
    RecordStore,
    SaltTooBig,
    SeqConflict,
    SeqTooLow,
    StoreConfig,
    StoreError,
    ValueTooBig,
    select_record,
)

H = 3600.0


def tgt(i: int) -> bytes:
    return hashlib.sha1(b"t%d" % i).digest()


def test_bep44_mutable_seq_rules():
    s = RecordStore()
    t = tgt(1)
    s.put_mutable(t, b"v1", 1, 0.0, pubkey=b"k" * 32, signature=b"s" * 64)
    with pytest.raises(SeqTooLow) as e:
        s.put_mutable(t, b"v0", 0, 1.0)
    assert e.value.error_code == 302
    with pytest.raises(SeqConflict) as e:
        s.put_mutable(t, b"other", 1, 1.0)
    assert e.value.error_code == 302
    with pytest.raises(CasMismatch) as e:
        s.put_mutable(t, b"v2", 2, 1.0, cas=0)
    assert e.value.error_code == 301
    assert s.put_mutable(t, b"v2", 2, 1.0, cas=1).value == b"v2"
    assert s.get(t, 2.0).seq == 2
    # Equal seq and value: a refresh that keeps the record alive another 24 h.
    s.put_mutable(t, b"v2", 2, 20 * H)
    assert s.get(t, 43 * H) is not None
    assert s.get(t, 44 * H) is None


def test_size_limits_bep44():
    s = RecordStore()
    with pytest.raises(ValueTooBig) as e:
        s.put_mutable(tgt(1), b"x" * 1001, 1, 0.0)
    assert e.value.error_code == 205
    with pytest.raises(SaltTooBig) as e:
        s.put_mutable(tgt(1), b"x", 1, 0.0, salt=b"s" * 65)
    assert e.value.error_code == 207
    with pytest.raises(ValueTooBig):
        s.put_immutable(tgt(2), b"x" * 1001, 0.0)
    assert s.put_mutable(tgt(1), b"x" * 1000, 1, 0.0, salt=b"s" * 64).salt == b"s" * 64
    with pytest.raises(StoreError) as e:
        s.put_mutable(tgt(3), b"x", -1, 0.0)
    assert e.value.error_code == 203
    assert issubclass(StoreError, RemoteProtocolError)


def test_signed_record_revisions():
    s = RecordStore()
    t = tgt(5)
    big = b"d" * 5000  # qudag records carry ML-DSA material: over the BEP 44 limit
    s.put_signed(t, big, 3, 0.0, pubkey=b"p" * 1952, signature=b"s" * 3309)
    with pytest.raises(SeqTooLow):
        s.put_signed(t, big, 2, 1.0)
    with pytest.raises(SeqConflict):
        s.put_signed(t, b"x", 3, 1.0)
    assert s.put_signed(t, b"newer", 4, 1.0).seq == 4
    with pytest.raises(KindConflict):
        s.put_mutable(t, b"m", 9, 1.0)
    with pytest.raises(ValueTooBig):
        s.put_signed(tgt(6), b"x" * 20000, 1, 0.0)


def test_immutable_items():
    s = RecordStore()
    t = tgt(7)
    s.put_immutable(t, b"data", 0.0)
    s.put_immutable(t, b"data", 10 * H)  # refresh
    assert s.get(t, 33 * H).value == b"data" and s.get(t, 33 * H).kind is RecordKind.IMMUTABLE
    with pytest.raises(KindConflict):
        s.put_immutable(t, b"different", 11 * H)
    with pytest.raises(KindConflict):
        s.put_mutable(t, b"m", 1, 11 * H)


def test_ttl_and_republish():
    s = RecordStore()
    s.put_mutable(tgt(1), b"a", 1, 0.0)
    s.put_mutable(tgt(2), b"b", 1, 6 * H)
    s.put_mutable(tgt(3), b"mine", 1, 0.0, local=True)
    assert s.due_republish(12 * H - 1) == []
    due = s.due_republish(12 * H)
    assert [r.target for r in due] == [tgt(1), tgt(3)]
    for r in due:
        s.mark_republished(r.target, 12 * H)
    assert [r.target for r in s.due_republish(18 * H)] == [tgt(2)]
    assert s.next_deadline() == 18 * H
    # Someone else storing the record pushes our republish back (Kademlia §2.5).
    s.put_mutable(tgt(2), b"b", 1, 17 * H)
    assert s.due_republish(18 * H) == []
    assert s.expire(24 * H) == 1  # tgt(1) expired; ours (local) never does
    assert tgt(1) not in s and s.get(tgt(3), 100 * H) is not None
    assert len(s.due_republish(100 * H, limit=1)) == 1


def test_per_ip_quota():
    s = RecordStore(StoreConfig(per_ip_records=3))
    for i in range(3):
        s.put_mutable(tgt(i), b"v", 1, 0.0, source_ip="192.0.2.1")
    with pytest.raises(QuotaExceeded) as e:
        s.put_mutable(tgt(9), b"v", 1, 0.0, source_ip="192.0.2.1")
    assert e.value.error_code == 202
    # Updating an existing record is not a new record for the quota.
    s.put_mutable(tgt(0), b"v2", 2, 1.0, source_ip="192.0.2.1")
    s.put_mutable(tgt(9), b"v", 1, 0.0, source_ip="192.0.2.2")
    assert s.count_for("192.0.2.1") == 3 and s.count_for("192.0.2.2") == 1
    # A record taken over by another source moves in the accounting.
    s.put_mutable(tgt(1), b"v2", 2, 2.0, source_ip="192.0.2.2")
    assert s.count_for("192.0.2.1") == 2 and s.count_for("192.0.2.2") == 2
    s.remove(tgt(0))
    assert s.count_for("192.0.2.1") == 1


def test_eviction_expired_first_then_oldest():
    s = RecordStore(StoreConfig(max_records=3, per_ip_records=100))
    s.put_mutable(tgt(1), b"a", 1, 0.0)
    s.put_mutable(tgt(2), b"b", 1, 10 * H)
    s.put_mutable(tgt(3), b"c", 1, 11 * H)
    s.put_mutable(tgt(1), b"a", 1, 12 * H)  # refreshed: now the newest
    s.put_mutable(tgt(4), b"d", 1, 13 * H)  # evicts the least recently stored: tgt(2)
    assert tgt(2) not in s and len(s) == 3 and s.evictions == 1
    s.put_mutable(tgt(5), b"e", 1, 35 * H)  # tgt(3) has expired: it goes without an eviction
    assert tgt(3) not in s and s.evictions == 1


def test_byte_budget():
    cfg = StoreConfig(max_bytes=3 * (500 + 20 + 96), per_ip_records=100)
    s = RecordStore(cfg)
    for i in range(10):
        s.put_mutable(tgt(i), bytes([i]) * 500, 1, float(i))
        assert s.bytes_used <= cfg.max_bytes
    assert len(s) == 3 and [r.target for r in s.records()] == [tgt(7), tgt(8), tgt(9)]
    # Growing a record in place also evicts others, never the record itself.
    s.put_mutable(tgt(9), b"z" * 900, 2, 20.0)
    assert tgt(9) in s and s.bytes_used <= cfg.max_bytes


def test_local_records_are_not_evicted():
    s = RecordStore(StoreConfig(max_records=2))
    s.put_mutable(tgt(1), b"a", 1, 0.0, local=True)
    s.put_mutable(tgt(2), b"b", 1, 1.0, local=True)
    with pytest.raises(QuotaExceeded):
        s.put_mutable(tgt(3), b"c", 1, 2.0)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 5), st.binary(max_size=40),
                          st.sampled_from(["192.0.2.1", "192.0.2.2", "198.51.100.7", None]),
                          st.floats(0, 4 * H), st.sampled_from(["m", "s", "i", "rm"])), max_size=60))
def test_random_puts_keep_bounds_and_ordering(ops):
    cfg = StoreConfig(max_records=6, max_bytes=6 * 200, per_ip_records=3)
    s = RecordStore(cfg)
    now = 0.0
    accepted: dict = {}
    for i, seq, val, ip, dt, kind in ops:
        now += dt
        t = tgt(i)
        before = s.get(t, now)
        try:
            if kind == "m":
                r = s.put_mutable(t, val, seq, now, source_ip=ip)
            elif kind == "s":
                r = s.put_signed(t, val, seq, now, source_ip=ip)
            elif kind == "i":
                r = s.put_immutable(t, val, now, source_ip=ip)
            else:
                s.remove(t)
                continue
        except StoreError:
            after = s.get(t, now)
            assert after is before or after is None  # a rejected put changes nothing
            continue
        if before is not None and before.seq is not None and r.seq is not None:
            assert r.seq >= before.seq
        accepted[t] = r
        assert len(s) <= cfg.max_records and s.bytes_used <= cfg.max_bytes
        counts: dict = {}
        for e in s._entries.values():
            if e.source is not None:
                counts[e.source] = counts.get(e.source, 0) + 1
        assert counts == s._per_ip and all(c <= cfg.per_ip_records for c in counts.values())
        assert s.bytes_used == sum(e.nbytes for e in s._entries.values())


def rec(seq, value, ok=True):
    return Record(target=tgt(0), kind=RecordKind.MUTABLE, value=value, seq=seq,
                  signature=b"good" if ok else b"bad")


def test_select_record_quorum():
    good = lambda r: r.signature == b"good"  # noqa: E731
    got = [rec(3, b"a"), rec(5, b"b"), rec(5, b"b"), rec(9, b"forged", ok=False), rec(4, b"c")]
    sel = select_record(got, good)
    assert sel.record.value == b"b" and sel.record.seq == 5
    assert (sel.agreement, sel.verified, sel.total, sel.conflict) == (2, 4, 5, False)
    # Equivocation at the same seq: the majority wins, the conflict is reported.
    sel = select_record([rec(5, b"x"), rec(5, b"y"), rec(5, b"y")], good)
    assert sel.record.value == b"y" and sel.conflict and sel.agreement == 2
    assert select_record([rec(1, b"q", ok=False)], good) is None
    assert select_record([], good) is None

    def raising(r):
        raise ValueError("unparseable")

    assert select_record([rec(1, b"q")], raising) is None
    imm = Record(target=tgt(0), kind=RecordKind.IMMUTABLE, value=b"i")
    assert select_record([imm, imm], lambda r: True).agreement == 2
