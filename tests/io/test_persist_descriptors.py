"""Dark descriptors stored for other nodes, kept in the node database (schema version 2,
``NodeDatabase.attach_descriptors``): written through before the put returns, reloaded
with every ``put`` check (signature included), expired ones dropped, damaged rows dropped
with a warning, a version-1 file migrated forward in one transaction, and a descriptor
acknowledged before a SIGKILL still there after the restart."""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qudag_core.dark.descriptor import PERIOD_SECONDS, DarkService, DescriptorStore, OuterDescriptor, PutStatus
from qudag_core.identity import Identity
from qudag_core.krpc.store import RecordStore
from qudag_io.persist import (SCHEMA_VERSION, CorruptDatabase, NewerSchema, NodeDatabase, PublishedAddress)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "netproc" / "persist_dark_store.py"
NOW = 20000 * PERIOD_SECONDS + 10 * 3600.0
P = int(NOW // PERIOD_SECONDS)


class Rng:
    def __init__(self, seed: bytes) -> None:
        self.seed, self.ctr = seed, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.ctr.to_bytes(8, "big")).digest()
            self.ctr += 1
        return out[:n]


_ID = Identity(bytes([3]) * 32, bytes([4]) * 32)
_CERT = _ID.issue_certificate([("127.0.0.1", 4433)], now=NOW - 86400, lifetime=30 * 86400)
_SERVICES = [DarkService(bytes([i + 1]) * 32, certificate=_CERT) for i in range(3)]
#: three addresses in this period, the first also with a newer revision and in the next period
DESC = [s.build(P, 10, int(NOW + 3600), Rng(bytes([i]))) for i, s in enumerate(_SERVICES)]
NEWER = _SERVICES[0].build(P, 11, int(NOW + 3600), Rng(b"newer"))
NEXT = _SERVICES[0].build(P + 1, 1, int(NOW + PERIOD_SECONDS + 3600), Rng(b"next"))


def _index(data: bytes) -> bytes:
    return OuterDescriptor.from_bytes(data).index


def _rows(path) -> list:
    c = sqlite3.connect(path)  # another connection: sees only what was committed
    try:
        return c.execute("SELECT idx, period_pk, period, data FROM descriptors ORDER BY rowid").fetchall()
    finally:
        c.close()


def test_descriptors_are_committed_before_put_returns_and_reload(tmp_path):
    path = tmp_path / "node.db"
    with NodeDatabase.open(path) as db:
        store = DescriptorStore()
        assert db.attach_descriptors(store, NOW) == 0
        for d in DESC:
            assert store.put(d, NOW) is PutStatus.ACCEPTED
            assert _rows(path)[-1][3] == d
        assert store.put(NEWER, NOW) is PutStatus.REPLACED
        assert store.put(NEXT, NOW).accepted
        rows = _rows(path)
        assert [r[3] for r in rows] == [NEWER, DESC[1], DESC[2], NEXT]  # replaced in place
        d = OuterDescriptor.from_bytes(NEWER)
        assert rows[0][:3] == (d.index, d.period_public_key, P)
    fresh = DescriptorStore()
    with NodeDatabase.open(path) as db:
        assert db.attach_descriptors(fresh, NOW + 60) == 4
    for data in (NEWER, DESC[1], DESC[2], NEXT):
        assert fresh.get(_index(data), NOW + 60) == store.get(_index(data), NOW + 60)
    assert fresh.get(_index(NEWER), NOW + 60) == [NEWER]
    assert fresh.bytes_held == store.bytes_held


def test_expired_descriptors_are_dropped_on_load_and_by_expiry(tmp_path, caplog):
    path = tmp_path / "node.db"
    with NodeDatabase.open(path) as db:
        store = DescriptorStore()
        db.attach_descriptors(store, NOW)
        for d in (DESC[0], NEXT):
            store.put(d, NOW)
    later = NOW + 2 * PERIOD_SECONDS  # period P is now too old; P + 1 still served
    with caplog.at_level(logging.WARNING, logger="qudag_io.persist"):
        with NodeDatabase.open(path) as db:
            store = DescriptorStore()
            assert db.attach_descriptors(store, later) == 1
            assert db.descriptor_count() == 1
    assert not caplog.records  # expiry is not worth a warning
    assert store.get(_index(NEXT), later) == [NEXT] and store.get(_index(DESC[0]), later) == []
    # expiry while attached deletes the rows (committed with the next write)
    with NodeDatabase.open(path) as db:
        store = DescriptorStore()
        db.attach_descriptors(store, later)
        much_later = NOW + 3 * PERIOD_SECONDS
        other = _SERVICES[1].build(P + 3, 1, int(much_later + 60), Rng(b"o"))
        assert store.put(other, much_later).accepted
        assert [r[3] for r in _rows(path)] == [other]


def _tamper_signature(c):
    (data,) = c.execute("SELECT data FROM descriptors WHERE rowid = 1").fetchone()
    c.execute("UPDATE descriptors SET data = ? WHERE rowid = 1", (data[:-3] + bytes([data[-3] ^ 1]) + data[-2:],))
    return "bad signature"


def _tamper_ciphertext_length(c):
    (data,) = c.execute("SELECT data FROM descriptors WHERE rowid = 1").fetchone()
    c.execute("UPDATE descriptors SET data = ? WHERE rowid = 1", (data + b"\0",))
    return "malformed row"


def _text_instead_of_blob(c):
    c.execute("UPDATE descriptors SET data = 'hello' WHERE rowid = 1")
    return "malformed row"


def _key_columns_disagree(c):
    c.execute("UPDATE descriptors SET idx = ? WHERE rowid = 1", (b"\x01" * 20,))
    return "malformed row"


def _period_column_disagrees(c):
    c.execute("UPDATE descriptors SET period = period + 1 WHERE rowid = 1")
    return "malformed row"


def _null_data(c):
    c.execute("PRAGMA ignore_check_constraints = 1")
    c.execute("DROP TABLE descriptors")
    c.execute("CREATE TABLE descriptors (idx BLOB, period_pk BLOB, period INTEGER, data BLOB, stored_at REAL, "
              "PRIMARY KEY (idx, period_pk))")
    c.execute("INSERT INTO descriptors VALUES (NULL, NULL, NULL, NULL, NULL)")
    return "malformed row"


@pytest.mark.parametrize("damage", [_tamper_signature, _tamper_ciphertext_length, _text_instead_of_blob,
                                    _key_columns_disagree, _period_column_disagrees, _null_data])
def test_damaged_rows_are_dropped_with_a_warning_the_rest_load(tmp_path, caplog, damage):
    """Decision (docs/persistence.md): a descriptor row that does not parse, does not
    match its key columns or does not verify is deleted with a warning naming the
    reason, and the others load -- descriptors are soft state their owners republish
    hourly, so one bad row should not stop the node (a damaged *file* still does)."""
    path = tmp_path / "node.db"
    with NodeDatabase.open(path) as db:
        store = DescriptorStore()
        db.attach_descriptors(store, NOW)
        for d in DESC:
            store.put(d, NOW)
    c = sqlite3.connect(path, isolation_level=None)
    reason = damage(c)
    c.close()
    with caplog.at_level(logging.WARNING, logger="qudag_io.persist"):
        with NodeDatabase.open(path) as db:
            store = DescriptorStore()
            loaded = db.attach_descriptors(store, NOW)
            left = db.descriptor_count()
    assert [r.getMessage().endswith(f"dropping a saved dark descriptor ({reason})") for r in caplog.records] == [True]
    if damage is _null_data:  # the table was rebuilt with only the bad row
        assert loaded == 0 and left == 0
    else:
        assert loaded == 2 and left == 2
        assert store.get(_index(DESC[0]), NOW) == [] and store.get(_index(DESC[1]), NOW) == [DESC[1]]


def test_a_failed_commit_refuses_the_put(tmp_path):
    with NodeDatabase.open(tmp_path / "node.db") as db:
        store = DescriptorStore()
        db.attach_descriptors(store, NOW)
        assert store.put(DESC[0], NOW).accepted
        db._conn.execute("PRAGMA query_only = 1")  # every write now fails inside SQLite
        assert store.put(NEWER, NOW) is PutStatus.NOT_SAVED
        assert store.put(DESC[1], NOW) is PutStatus.NOT_SAVED
        assert store.get(_index(DESC[0]), NOW) == [DESC[0]] and len(store) == 1  # unchanged
        db._conn.execute("PRAGMA query_only = 0")
        assert store.put(NEWER, NOW) is PutStatus.REPLACED


def test_descriptors_held_before_attach_are_saved(tmp_path):
    path = tmp_path / "node.db"
    with NodeDatabase.open(path) as db:
        first = DescriptorStore()
        db.attach_descriptors(first, NOW)
        first.put(DESC[0], NOW)
    with NodeDatabase.open(path) as db:
        store = DescriptorStore()
        store.put(NEWER, NOW)  # same slot as the saved row, newer: the saved one is refused
        store.put(DESC[1], NOW)
        assert db.attach_descriptors(store, NOW) == 0
        assert sorted(r[3] for r in _rows(path)) == sorted([NEWER, DESC[1]])
    assert db._conn is None and store.listener is None  # close detaches


# ---- schema version 1 -> 2 -----------------------------------------------------------------------------

#: The schema qudag wrote as version 1 (qudag_io/persist.py before descriptors were kept).
V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE routing (
    node_id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL,
    last_response REAL, last_query REAL) WITHOUT ROWID;
CREATE TABLE records (
    target BLOB PRIMARY KEY, kind TEXT NOT NULL, value BLOB NOT NULL, seq INTEGER,
    pubkey BLOB NOT NULL, salt BLOB NOT NULL, signature BLOB NOT NULL,
    stored_at REAL NOT NULL, expires_at REAL, local INTEGER NOT NULL, source_ip TEXT);
CREATE INDEX records_expiry ON records (expires_at);
CREATE TABLE reputation (
    peer BLOB PRIMARY KEY, score REAL NOT NULL, updated_at REAL NOT NULL, ord INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE addresses (
    address TEXT PRIMARY KEY, kind TEXT NOT NULL, created REAL NOT NULL, last_published REAL,
    revision INTEGER NOT NULL, blob BLOB NOT NULL) WITHOUT ROWID;
"""


def _v1_file(path, *, extra: str = "") -> None:
    """A version-1 database as the old code wrote it (WAL, 0600, application id, the
    five tables), holding one record and one published address."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("BEGIN")
    for stmt in (V1_SCHEMA + extra).split(";"):
        if stmt.strip():
            c.execute(stmt)
    c.execute(f"PRAGMA application_id = {0x51444147}")  # "QDAG"
    c.execute("PRAGMA user_version = 1")
    c.execute("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?)",
              (b"t" * 20, "immutable", b"3:abc", None, b"", b"", b"", 1_700_000_000.0, None, 1, None))
    c.execute("INSERT INTO addresses VALUES (?,?,?,?,?,?)", ("x.dark", "derived", 1.0, None, 0, b"blob"))
    c.execute("COMMIT")
    c.close()


def test_version_1_file_is_migrated_forward(tmp_path, caplog):
    path = tmp_path / "node.db"
    _v1_file(path)
    assert SCHEMA_VERSION == 2
    with caplog.at_level(logging.INFO, logger="qudag_io.persist"):
        with NodeDatabase.open(path) as db:
            assert db._conn.execute("PRAGMA user_version").fetchone()[0] == 2
            records = RecordStore()
            assert db.attach_store(records, 0.0) == 1  # version-1 contents kept
            assert [a.address for a in db.addresses()] == ["x.dark"]
            store = DescriptorStore()
            assert db.attach_descriptors(store, NOW) == 0
            assert store.put(DESC[0], NOW).accepted
    assert any("migrated to version 2" in r.getMessage() for r in caplog.records)
    with NodeDatabase.open(path) as db:  # once only, and the descriptor is there
        assert db.attach_descriptors(DescriptorStore(), NOW) == 1
    assert os.stat(path).st_mode & 0o777 == 0o600


def test_failed_migration_changes_nothing(tmp_path):
    """A version-1 file that cannot be migrated (here: a stray ``descriptors`` table in
    the way) is reported as damaged and stays at version 1 with its contents."""
    path = tmp_path / "node.db"
    _v1_file(path, extra="; CREATE TABLE descriptors (x)")
    with pytest.raises(CorruptDatabase, match="it was not modified"):
        NodeDatabase.open(path)
    c = sqlite3.connect(path)
    assert c.execute("PRAGMA user_version").fetchone()[0] == 1
    assert c.execute("SELECT count(*) FROM records").fetchone()[0] == 1
    c.close()


def test_newer_schema_is_still_refused(tmp_path):
    path = tmp_path / "node.db"
    NodeDatabase.open(path).close()
    c = sqlite3.connect(path, isolation_level=None)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.close()
    with pytest.raises(NewerSchema):
        NodeDatabase.open(path)


def test_version_2_file_without_descriptor_table_is_damaged(tmp_path):
    path = tmp_path / "node.db"
    NodeDatabase.open(path).close()
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("DROP TABLE descriptors")
    c.close()
    with pytest.raises(CorruptDatabase):
        NodeDatabase.open(path)


# ---- SIGKILL ---------------------------------------------------------------------------------------------


def test_descriptor_acknowledged_before_sigkill_survives(tmp_path):
    """A process puts descriptors through the write-through store and reports each
    status once ``put`` returned; it is SIGKILLed right after the last report.  Every
    acknowledged descriptor is in the database when it is opened again."""
    path = tmp_path / "node.db"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(path), str(NOW)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)
    acked = []
    try:
        for d in (*DESC, NEWER):
            proc.stdin.write(d.hex().encode() + b"\n")
            proc.stdin.flush()
            line = proc.stdout.readline().decode().strip()
            assert line in ("accepted", "replaced"), line
            acked.append(d)
        proc.send_signal(signal.SIGKILL)  # no close(), no checkpoint
    finally:
        proc.kill()
        assert proc.wait(10) == -signal.SIGKILL
        proc.stdin.close()
        proc.stdout.close()
    store = DescriptorStore()
    with NodeDatabase.open(path) as db:
        assert db.attach_descriptors(store, NOW) == 3
    assert store.get(_index(NEWER), NOW) == [NEWER]
    assert store.get(_index(DESC[1]), NOW) == [DESC[1]] and store.get(_index(DESC[2]), NOW) == [DESC[2]]


def test_address_table_untouched_by_descriptors(tmp_path):
    with NodeDatabase.open(tmp_path / "node.db") as db:
        db.save_address(PublishedAddress(address="a.dark", kind="k", created=1.0, last_published=None,
                                         revision=0, blob=b""))
        store = DescriptorStore()
        db.attach_descriptors(store, NOW)
        store.put(DESC[0], NOW)
        assert [a.address for a in db.addresses()] == ["a.dark"] and db.descriptor_count() == 1


def test_record_row_with_null_key_is_deleted_on_load(tmp_path):
    """Regression (found by test_persist.py's tampered-rows property): SQLite lets a
    rowid table's primary key be NULL (a NaN bound from Python becomes NULL), and
    ``DELETE ... WHERE target = NULL`` matches nothing; refused rows go by rowid."""
    path = tmp_path / "node.db"
    NodeDatabase.open(path).close()
    c = sqlite3.connect(path)
    c.execute("INSERT INTO records VALUES (?,?,?,?,?,?,?,?,?,?,?)",
              (float("nan"), 0, 0, None, 0, 0, 0, 0, None, 0, None))
    c.commit()
    assert c.execute("SELECT count(*) FROM records WHERE target IS NULL").fetchone()[0] == 1
    c.close()
    with NodeDatabase.open(path) as db:
        assert db.attach_store(RecordStore(), 0.0) == 0
        assert db.record_count() == 0
