"""The node database (``qudag_io.persist``) without sockets: bad files give declared
errors and stay untouched, files are 0600, records are written through (committed before
the put returns) with their expiries, the database mirrors the bounded store, routing
and reputation snapshots survive a change of monotonic clock, published addresses are
kept opaquely.  The store/reputation persistence hooks are tested here too."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.krpc.reputation import Reputation
from qudag_core.krpc.routing import RoutingTable
from qudag_core.krpc.store import Record, RecordKind, RecordStore, StoreConfig, StoreError
from qudag_io.persist import (APPLICATION_ID, SCHEMA_VERSION, CorruptDatabase, DatabaseInUse, ForeignDatabase,
                              InsecureFile, NewerSchema, NodeDatabase, NotADatabase, PersistError, PublishedAddress,
                              RecordNotPersisted, TooManyAddresses)

DAY = 24 * 3600.0


class Wall:
    """A settable wall clock (the database's view of Unix time)."""

    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _populated(path, rng) -> None:
    with NodeDatabase.open(path) as db:
        store = RecordStore()
        db.attach_store(store, 0.0)
        for i in range(200):
            store.put_immutable(rng(20), b"x" * 300 + bytes([i]), 0.0, source_ip=f"10.0.{i}.1")


# ---- bad files ---------------------------------------------------------------------------


def _random_bytes(path, rng):
    path.write_bytes(rng(8192))


def _text_file(path, rng):
    path.write_bytes(b"hello, this is a config file\n" * 20)


def _truncated_half(path, rng):
    _populated(path, rng)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _truncated_header(path, rng):
    _populated(path, rng)
    path.write_bytes(path.read_bytes()[:60])


def _truncated_magic(path, rng):
    path.write_bytes(b"SQLite for")


def _damaged_pages(path, rng):
    _populated(path, rng)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for p in range(1, len(data) // page):  # every page but the first: headers garbage
        data[p * page: p * page + 16] = rng(16)
    path.write_bytes(bytes(data))


def _foreign_no_app_id(path, rng):
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE notes (body TEXT)")
    c.execute("INSERT INTO notes VALUES ('mine')")
    c.commit()
    c.close()


def _foreign_app_id(path, rng):
    c = sqlite3.connect(path)
    c.execute("PRAGMA application_id = 1196312866")  # some other application's id
    c.execute("CREATE TABLE t (a)")
    c.commit()
    c.close()


def _newer_schema(path, rng):
    NodeDatabase.open(path).close()
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.commit()
    c.close()


@pytest.mark.parametrize("make, error", [
    (_random_bytes, NotADatabase),
    (_text_file, NotADatabase),
    (_truncated_half, CorruptDatabase),
    (_truncated_header, CorruptDatabase),
    (_truncated_magic, CorruptDatabase),
    (_damaged_pages, CorruptDatabase),
    (_foreign_no_app_id, ForeignDatabase),
    (_foreign_app_id, ForeignDatabase),
    (_newer_schema, NewerSchema),
])
def test_bad_file_gives_declared_error_and_is_left_alone(tmp_path, rng, make, error):
    path = tmp_path / "node.db"
    make(path, rng)
    before = _digest(path)
    for _ in range(2):  # and again: the first attempt changed nothing
        with pytest.raises(error) as info:
            NodeDatabase.open(path)
        assert isinstance(info.value, PersistError)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg
        assert any(w in msg for w in ("move it away", "another path", "upgrade qudag", "backup"))
        assert _digest(path) == before


def test_in_use_then_free_again(tmp_path):
    path = tmp_path / "node.db"
    db = NodeDatabase.open(path)
    with pytest.raises(DatabaseInUse):
        NodeDatabase.open(path)
    db.close()
    NodeDatabase.open(path).close()


def test_files_created_0600(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "node.db"
        db = NodeDatabase.open(path)
        db.save_routing(RoutingTable(b"\1" * 20), 0.0)
        names = [p for p in tmp_path.iterdir() if p.name.startswith("node.db")]
        assert {p.name for p in names} >= {"node.db", "node.db-wal"}
        for p in names:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        db.close()
    finally:
        os.umask(old)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o666])
def test_loose_permissions_refused(tmp_path, mode):
    path = tmp_path / "node.db"
    NodeDatabase.open(path).close()
    os.chmod(path, mode)
    before = _digest(path)
    with pytest.raises(InsecureFile, match="chmod 600") as info:
        NodeDatabase.open(path)
    assert f"mode {mode:03o}" in str(info.value)
    assert _digest(path) == before and stat.S_IMODE(path.stat().st_mode) == mode
    os.chmod(path, 0o600)
    NodeDatabase.open(path).close()


def test_schema_markers_and_wal(tmp_path):
    path = tmp_path / "node.db"
    NodeDatabase.open(path).close()
    head = path.read_bytes()[:100]
    assert int.from_bytes(head[68:72], "big") == APPLICATION_ID == int.from_bytes(b"QDAG", "big")
    assert int.from_bytes(head[60:64], "big") == SCHEMA_VERSION
    assert head[18:20] == b"\x02\x02"  # WAL read/write versions
    with NodeDatabase.open(path) as db:  # reopening an existing database of ours works
        assert db.saved_node_id() is None


@pytest.mark.parametrize("sync, level", [(None, 1), ("NORMAL", 1), ("FULL", 2)])
def test_synchronous_setting(tmp_path, sync, level):
    kw = {} if sync is None else {"synchronous": sync}
    with NodeDatabase.open(tmp_path / "node.db", **kw) as db:
        assert db._conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert db._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(ValueError):
        NodeDatabase.open(tmp_path / "other.db", synchronous="OFF")
    assert not (tmp_path / "other.db").exists()


def test_empty_file_becomes_a_database(tmp_path):
    path = tmp_path / "node.db"
    path.touch(mode=0o600)
    with NodeDatabase.open(path) as db:
        assert db.record_count() == 0


# ---- records -------------------------------------------------------------------------------


def _reader(path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def test_records_are_committed_before_the_put_returns(tmp_path, rng):
    path = tmp_path / "node.db"
    wall = Wall()
    db = NodeDatabase.open(path, wall=wall)
    store = RecordStore()
    db.attach_store(store, 100.0)
    ro = _reader(path)
    try:
        t1, t2, t3 = rng(20), rng(20), rng(20)
        store.put_immutable(t1, b"5:hello", 100.0, source_ip="10.0.0.1")
        assert ro.execute("SELECT value FROM records WHERE target = ?", (t1,)).fetchone() == (b"5:hello",)
        store.put_mutable(t2, b"1:a", 3, 100.0, pubkey=b"k" * 32, salt=b"s", signature=b"g" * 64)
        store.put_mutable(t2, b"1:b", 4, 101.0, pubkey=b"k" * 32, salt=b"s", signature=b"h" * 64)
        assert ro.execute("SELECT value, seq, signature FROM records WHERE target = ?",
                          (t2,)).fetchone() == (b"1:b", 4, b"h" * 64)
        store.put_signed(t3, b"\0\1rec", 7, 102.0, pubkey=b"P" * 1952, signature=b"S" * 3309, local=True)
        row = ro.execute("SELECT kind, local, expires_at FROM records WHERE target = ?", (t3,)).fetchone()
        assert row == ("signed", 1, None)
        stored, expires = ro.execute("SELECT stored_at, expires_at FROM records WHERE target = ?",
                                     (t1,)).fetchone()
        assert stored == wall.t and expires == wall.t + DAY
    finally:
        ro.close()
        db.close()


def test_records_reload_with_their_expiry(tmp_path, rng):
    path = tmp_path / "node.db"
    wall = Wall()
    a, b, mine = rng(20), rng(20), rng(20)
    with NodeDatabase.open(path, wall=wall) as db:
        store = RecordStore()
        db.attach_store(store, 50.0)
        store.put_immutable(a, b"1:a", 50.0, source_ip="10.0.0.1")
        store.put_immutable(b, b"1:b", 60.0, source_ip="10.0.0.2")  # stored 10 s later
        store.put_immutable(mine, b"1:m", 60.0, local=True)

    # restart 23 h 59 min 55 s after a was stored, on a monotonic clock with another origin
    wall.t += DAY - 5
    with NodeDatabase.open(path, wall=wall) as db:
        store = RecordStore()
        assert db.attach_store(store, 7.0) == 3
        assert store.get(a, 7.0).value == b"1:a" and store.get(b, 7.0).value == b"1:b"
        entries = {r.target: (at, local, src) for r, at, local, src in store.entries()}
        assert entries[a] == (pytest.approx(7.0 - (DAY - 5)), False, "10.0.0.1")
        assert entries[mine][1] is True
        store.expire(12.0)  # a's 24 h are up, b has 5 s left
        assert store.get(a, 12.0) is None and store.get(b, 12.0) is not None
        db.flush()
        assert db.record_count() == 2

    wall.t += 20
    with NodeDatabase.open(path, wall=wall) as db:
        store = RecordStore()
        assert db.attach_store(store, 0.0) == 1  # b expired while we were down; ours never does
        assert store.get(mine, 0.0).value == b"1:m"
        assert db.record_count() == 1  # expired rows are deleted, not kept


def test_attach_saves_records_held_before(tmp_path, rng):
    early, saved = rng(20), rng(20)
    with NodeDatabase.open(tmp_path / "node.db") as db:
        store = RecordStore()
        db.attach_store(store, 0.0)
        store.put_immutable(saved, b"1:s", 0.0)
    with NodeDatabase.open(tmp_path / "node.db") as db:
        store = RecordStore()
        store.put_immutable(early, b"1:e", 1.0, local=True)  # before attach
        assert db.attach_store(store, 1.0) == 1
        assert db.record_count() == 2 == len(store)
    with NodeDatabase.open(tmp_path / "node.db") as db:
        store = RecordStore()
        assert db.attach_store(store, 2.0) == 2
        assert store.get(early, 2.0).value == b"1:e" and store.entries()[-1][2] is True


def test_database_mirrors_the_bounded_store(tmp_path, rng):
    cfg = StoreConfig(max_records=10)
    with NodeDatabase.open(tmp_path / "node.db") as db:
        store = RecordStore(cfg)
        db.attach_store(store, 0.0)
        for i in range(40):
            store.put_immutable(rng(20), b"i%de" % i, float(i), source_ip=f"10.0.{i}.1")
            # the eviction's delete is committed with the insert
            assert db.record_count() == len(store) == min(i + 1, 10)
        kept = {r.target for r in store.records()}
        assert store.evictions == 30
    with NodeDatabase.open(tmp_path / "node.db") as db:  # and a smaller store on reload
        small = RecordStore(StoreConfig(max_records=4))
        assert db.attach_store(small, 40.0) == 10
        assert len(small) == 4 and {r.target for r in small.records()} <= kept
        assert db.record_count() == 4


def test_failed_commit_refuses_the_put(tmp_path, rng):
    with NodeDatabase.open(tmp_path / "node.db") as db:
        store = RecordStore()
        db.attach_store(store, 0.0)
        t = rng(20)
        store.put_mutable(t, b"1:a", 1, 0.0, pubkey=b"k" * 32)
        db._conn.execute("PRAGMA query_only = 1")  # every write now fails inside SQLite
        with pytest.raises(RecordNotPersisted) as info:
            store.put_mutable(t, b"1:b", 2, 1.0, pubkey=b"k" * 32)
        assert isinstance(info.value, StoreError) and info.value.error_code == 202
        assert store.get(t, 1.0).value == b"1:a" and store.get(t, 1.0).seq == 1  # unchanged
        with pytest.raises(RecordNotPersisted):
            store.put_immutable(rng(20), b"1:c", 1.0)
        assert len(store) == 1
        db._conn.execute("PRAGMA query_only = 0")


_records = st.lists(st.tuples(st.sampled_from(["imm", "mut", "sig"]), st.binary(min_size=1, max_size=8),
                              st.binary(max_size=40), st.integers(0, 5), st.booleans(),
                              st.floats(0, 3 * DAY)),
                    max_size=25)


@settings(max_examples=30, deadline=None)
@given(ops=_records)
def test_reload_gives_back_the_same_store(tmp_path_factory, ops):
    path = tmp_path_factory.mktemp("p") / "node.db"
    wall = Wall()
    cfg = StoreConfig(max_records=12)
    with NodeDatabase.open(path, wall=wall) as db:
        store = RecordStore(cfg)
        db.attach_store(store, 0.0)
        now = 0.0
        for kind, key, value, seq, local, dt in ops:
            now = max(now, dt)
            target = hashlib.sha1(kind.encode() + key).digest()
            try:
                if kind == "imm":
                    store.put_immutable(target, value, now, local=local)
                elif kind == "mut":
                    store.put_mutable(target, value, seq, now, pubkey=key, salt=key[:2], local=local)
                else:
                    store.put_signed(target, value, seq, now, pubkey=key, signature=value[:4], local=local)
            except StoreError:
                pass
        store.expire(now)
        before = {r.target: (r, local) for r, _, local, _ in store.entries()}
    wall.t += 1.0
    with NodeDatabase.open(path, wall=wall) as db:
        again = RecordStore(cfg)
        db.attach_store(again, now + 1.0)
        after = {r.target: (r, local) for r, _, local, _ in again.entries()}
        # records whose 24 h ran out in that one second are legitimately gone
        assert set(after) <= set(before)
        for t, v in after.items():
            assert v == before[t]
        gone = set(before) - set(after)
        assert all(not before[t][1] for t in gone)


_junk = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=True),
                  st.text(max_size=8), st.binary(max_size=24))


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.tuples(*[_junk] * 11), max_size=6), rng_rows=st.lists(st.tuples(*[_junk] * 5), max_size=6),
       rep_rows=st.lists(st.tuples(*[_junk] * 3), max_size=6))
def test_tampered_rows_are_skipped_not_raised(tmp_path_factory, rows, rng_rows, rep_rows):
    """Rows of the wrong type (the file is ours and passed quick_check, but someone
    edited it) are skipped on load and never raise."""
    path = tmp_path_factory.mktemp("j") / "node.db"
    NodeDatabase.open(path).close()
    c = sqlite3.connect(path)
    for r in rows:
        c.execute("INSERT OR IGNORE INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                  (r[0] if r[0] is not None else b"\0",) + r[1:])  # NOT NULL columns may refuse
    for r in rng_rows:
        c.execute("INSERT OR IGNORE INTO routing VALUES (?,?,?,?,?)", r)
    for i, r in enumerate(rep_rows):
        c.execute("INSERT OR IGNORE INTO reputation VALUES (?,?,?,?)", r + (i,))
    c.commit()
    c.close()
    with NodeDatabase.open(path) as db:
        store, table, rep = RecordStore(), RoutingTable(b"\1" * 20), Reputation()
        db.load_routing(table, 0.0)
        db.load_reputation(rep, 0.0)
        db.attach_store(store, 0.0)
        assert db.record_count() == len(store)  # what could not be loaded is gone


# ---- routing table ---------------------------------------------------------------------------


def _table(rng, n: int = 40, now: float = 1000.0) -> RoutingTable:
    table = RoutingTable(rng(20), now=0.0)
    for i in range(n):
        nid, addr = rng(20), (f"10.{i}.{i}.1", 6881 + i)
        table.add_or_update(nid, addr, now - i, responded=True)
        if i % 3 == 0:
            table.add_or_update(nid, addr, now - i / 2, queried_us=True)
    return table


def test_routing_round_trip_across_clock_origins(tmp_path, rng):
    wall = Wall()
    table = _table(rng)
    with NodeDatabase.open(tmp_path / "node.db", wall=wall) as db:
        assert not db.has_routing()
        assert db.save_routing(table, 1000.0) == len(table)
        assert db.has_routing()
        assert db.saved_node_id() == table.own_id
    wall.t += 100.0  # the node was down for 100 s; its new monotonic clock starts near 20
    with NodeDatabase.open(tmp_path / "node.db", wall=wall) as db:
        fresh = RoutingTable(db.saved_node_id(), now=20.0)
        assert db.load_routing(fresh, 20.0) == len(table)
    old = {n.node_id: n for n in table}
    for n in fresh:
        o = old[n.node_id]
        assert n.addr == o.addr
        # the same age as before, plus the 100 s of downtime
        assert 20.0 - n.last_response == pytest.approx(1000.0 - o.last_response + 100.0)
        if o.last_query is not None:
            assert 20.0 - n.last_query == pytest.approx(1000.0 - o.last_query + 100.0)
    target = rng(20)
    assert [n.node_id for n in fresh.closest(target)] == [n.node_id for n in table.closest(target)]


def test_routing_save_replaces_the_previous_snapshot(tmp_path, rng):
    with NodeDatabase.open(tmp_path / "node.db") as db:
        db.save_routing(_table(rng, 40), 1000.0)
        small = _table(rng, 5)
        db.save_routing(small, 1000.0)
        t = RoutingTable(small.own_id, now=0.0)
        assert db.load_routing(t, 1000.0) == 5
        assert {n.node_id for n in t} == {n.node_id for n in small}


# ---- reputation --------------------------------------------------------------------------------


def test_reputation_round_trip_keeps_decay(tmp_path, rng):
    wall = Wall()
    rep = Reputation()
    good, bad = rng(20), rng(20)
    for i in range(5):
        rep.record_success(good, 10.0 + i)
        rep.record_failure(bad, 10.0 + i)
    rep.record_success("not-bytes", 10.0)  # only node-id keys are saved
    with NodeDatabase.open(tmp_path / "node.db", wall=wall) as db:
        assert db.save_reputation(rep, 14.0) == 2
    wall.t += 3600.0  # one half-life later
    with NodeDatabase.open(tmp_path / "node.db", wall=wall) as db:
        again = Reputation()
        assert db.load_reputation(again, 5.0) == 2
    assert again.score(good, 5.0) == pytest.approx(rep.score(good, 14.0 + 3600.0))
    assert again.score(bad, 5.0) == pytest.approx(rep.score(bad, 14.0 + 3600.0))
    assert "not-bytes" not in again


def test_reputation_hooks(rng):
    rep = Reputation()
    a = rng(20)
    rep.record_failure(a, 5.0)
    snap = rep.snapshot()
    assert snap == [(a, 40.0, 5.0)]
    other = Reputation()
    assert other.restore(snap + [("bad",), (b"x", "nan?", 1.0), (b"y", float("nan"), 1.0),
                                 (b"z", 500.0, 1e12)], 6.0) == 2
    assert other.score(a) == 40.0
    assert other.score(b"z") == 100.0  # clamped to the range, updated_at clamped to now
    assert other.snapshot()[-1][2] == 6.0


# ---- published addresses -------------------------------------------------------------------------


def test_published_addresses(tmp_path):
    path = tmp_path / "node.db"
    a = PublishedAddress(address="qd1abc", kind="service", created=1.0, last_published=None,
                         revision=0, blob=b"secret state")
    assert "secret" not in repr(a)
    with NodeDatabase.open(path, max_addresses=2) as db:
        db.save_address(a)
        db.save_address(PublishedAddress(address="qd1def", kind="inbox", created=2.0, last_published=3.0,
                                         revision=4, blob=b""))
        with pytest.raises(TooManyAddresses):
            db.save_address(PublishedAddress(address="qd1ghi", kind="x", created=3.0, last_published=None,
                                             revision=0, blob=b""))
        # updating an existing one is fine at the cap
        db.save_address(PublishedAddress(address="qd1abc", kind="service", created=1.0, last_published=9.0,
                                         revision=1, blob=b"secret state 2"))
    with NodeDatabase.open(path) as db:
        got = db.addresses()
        assert [x.address for x in got] == ["qd1abc", "qd1def"]
        assert got[0].revision == 1 and got[0].last_published == 9.0 and got[0].blob == b"secret state 2"
        assert db.delete_address("qd1abc") and not db.delete_address("qd1abc")
        assert [x.address for x in db.addresses()] == ["qd1def"]


# ---- store hooks ---------------------------------------------------------------------------------


class _Log:
    def __init__(self, store: RecordStore, refuse: bool = False) -> None:
        self.store = store
        self.refuse = refuse
        self.calls: list = []

    def record_stored(self, rec, stored_at, local, source):
        # called before the store applies it
        self.calls.append(("stored", rec.target, rec.value, stored_at, local, source,
                           self.store._entries.get(rec.target) is not None))
        if self.refuse:
            raise StoreError("refused by the listener")

    def record_removed(self, target):
        self.calls.append(("removed", target, target in self.store))


def test_store_listener_sees_every_change_before_it_happens(rng):
    store = RecordStore(StoreConfig(max_records=2, ttl=100.0))
    log = store.listener = _Log(store)
    a, b, c = rng(20), rng(20), rng(20)
    store.put_immutable(a, b"1:a", 1.0, source_ip="10.0.0.1")
    store.put_immutable(a, b"1:a", 2.0, source_ip="10.0.0.1")  # refresh
    store.put_mutable(b, b"1:b", 1, 3.0, local=True)
    store.put_mutable(b, b"1:c", 2, 4.0)  # replace keeps it local
    store.put_immutable(c, b"1:c", 5.0)  # evicts a
    assert log.calls == [
        ("stored", a, b"1:a", 1.0, False, "10.0.0.1", False),
        ("stored", a, b"1:a", 2.0, False, "10.0.0.1", True),
        ("stored", b, b"1:b", 3.0, True, None, False),
        ("stored", b, b"1:c", 4.0, True, None, True),
        ("removed", a, True),
        ("stored", c, b"1:c", 5.0, False, None, False),
    ]
    log.calls.clear()
    store.expire(200.0)
    assert log.calls == [("removed", c, True)]  # b is local: never expires


def test_store_listener_refusal_leaves_store_unchanged(rng):
    store = RecordStore()
    t = rng(20)
    store.put_mutable(t, b"1:a", 1, 1.0, source_ip="10.0.0.1")
    store.listener = _Log(store, refuse=True)
    for put in (lambda: store.put_mutable(t, b"1:b", 2, 2.0, source_ip="10.0.0.2"),
                lambda: store.put_mutable(t, b"1:a", 1, 2.0, source_ip="10.0.0.2"),
                lambda: store.put_immutable(rng(20), b"1:x", 2.0)):
        with pytest.raises(StoreError):
            put()
    assert store.entries() == [(store.get(t, 2.0), 1.0, False, "10.0.0.1")]
    assert store.get(t, 2.0).value == b"1:a" and store.count_for("10.0.0.2") == 0


def test_store_restore_hook(rng):
    store = RecordStore(StoreConfig(ttl=100.0, max_records=3, per_ip_records=1))
    recs = [Record(target=rng(20), kind=RecordKind.IMMUTABLE, value=b"1:%d" % i) for i in range(5)]
    assert store.restore(recs[0], 50.0, 120.0)          # 70 s old: kept
    assert not store.restore(recs[1], 10.0, 120.0)      # 110 s old: expired
    assert store.restore(recs[2], 5.0, 120.0, local=True)  # ours: never expires
    assert not store.restore(recs[0], 60.0, 120.0)      # already there
    assert store.restore(recs[3], 500.0, 120.0, source_ip="10.0.0.1")  # future time clamped
    assert not store.restore(recs[4], 120.0, 120.0, source_ip="10.0.0.1")  # quota
    assert not store.restore("garbage", 1.0, 120.0)  # type: ignore[arg-type]
    assert [(r.target, at, local) for r, at, local, _ in store.entries()] == [
        (recs[0].target, 50.0, False), (recs[2].target, 5.0, True), (recs[3].target, 120.0, False)]
    store.expire(150.0)
    assert store.get(recs[0].target, 150.0) is None and store.get(recs[3].target, 150.0) is not None


# ---- the KRPC node, sans-IO ------------------------------------------------------------------


def test_krpc_put_is_acknowledged_only_after_commit(tmp_path, rng):
    """Drive a ``KrpcNode`` with datagrams: by the time the put's reply is queued its row
    is committed (seen by another connection); when the commit fails the reply is KRPC
    error 202 and nothing is stored."""
    from qudag_core.krpc import bencode
    from qudag_core.krpc import messages as M
    from qudag_core.krpc.node import KrpcNode

    path = tmp_path / "node.db"
    db = NodeDatabase.open(path)
    node = KrpcNode(rng(20), rng=rng, now=0.0)
    db.attach(node, 0.0)
    peer, client = ("10.1.2.3", 4567), rng(20)

    def ask(q: M.Query, now: float):
        node.receive_datagram(q.encode(), peer, now)
        # the reply, plus the node's own ping of the querier it does not know yet
        replies = [m for m in (M.parse_message(d) for d, to in node.datagrams_to_send(now) if to == peer)
                   if m.transaction_id == q.transaction_id]
        assert len(replies) == 1
        return replies[0]

    token = ask(M.Get(transaction_id=b"g1", node_id=client, target=rng(20)), 1.0).token
    ro = _reader(path)
    try:
        v = bencode.encode(b"durable")
        rep = ask(M.Put(transaction_id=b"p1", node_id=client, token=token, value=v), 2.0)
        assert isinstance(rep, M.Response)
        assert ro.execute("SELECT value, source_ip FROM records WHERE target = ?",
                          (M.immutable_target(v),)).fetchone() == (v, "10.1.2.3")
        db._conn.execute("PRAGMA query_only = 1")  # the next commit fails inside SQLite
        w = bencode.encode(b"not durable")
        rep = ask(M.Put(transaction_id=b"p2", node_id=client, token=token, value=w), 3.0)
        assert isinstance(rep, M.Error) and rep.code == 202
        assert node.store.get(M.immutable_target(w), 3.0) is None
        db._conn.execute("PRAGMA query_only = 0")
    finally:
        ro.close()
        db.close()
