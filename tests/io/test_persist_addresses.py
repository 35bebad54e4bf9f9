"""The published-address table opened beside a running node (``qudag_io.persist.AddressBook``):
it works while ``NodeDatabase`` holds its exclusive lock, read-modify-write updates are
atomic, the node notices edits through ``data_version``, and bad files give the same
declared one-line errors as ``NodeDatabase.open`` without being modified."""
from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading

import pytest

from qudag_io.persist import (SCHEMA_VERSION, AddressBook, CorruptDatabase, DatabaseInUse, ForeignDatabase,
                              InsecureFile, NewerSchema, NodeDatabase, NotADatabase, PersistError, PublishedAddress,
                              TooManyAddresses)


def _row(name: str, **kw) -> PublishedAddress:
    d = dict(address=name, kind="derived", created=1.0, last_published=None, revision=0, blob=b"{}")
    d.update(kw)
    return PublishedAddress(**d)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_beside_a_running_node(tmp_path):
    path = tmp_path / "node.db"
    node = NodeDatabase.open(path)  # the node holds its exclusive lock
    try:
        with pytest.raises(DatabaseInUse):
            NodeDatabase.open(path)
        v0 = node.data_version()
        with AddressBook.open(path) as book:
            book.save_address(_row("a.dark"))
            assert node.data_version() != v0  # the node sees that someone else committed
            assert [a.address for a in node.addresses()] == ["a.dark"]
            v1 = node.data_version()
            node.save_address(_row("b.dark", created=2.0))
            assert node.data_version() == v1  # its own commits do not count
            assert [a.address for a in book.addresses()] == ["a.dark", "b.dark"]
            assert book.get_address("b.dark").created == 2.0 and book.get_address("zz") is None
    finally:
        node.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_creates_a_missing_database_unless_told_not_to(tmp_path):
    path = tmp_path / "new.db"
    with pytest.raises(PersistError) as info:
        AddressBook.open(path, create=False)
    assert "does not exist" in str(info.value) and not path.exists()
    with AddressBook.open(path) as book:
        assert book.addresses() == []
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with NodeDatabase.open(path) as db:  # a complete node database
        assert db.saved_node_id() is None and db.addresses() == []


def test_update_is_read_modify_write_under_concurrency(tmp_path):
    """Two connections (a node and a command line) incrementing the same row's revision
    from two threads: no update is lost."""
    import dataclasses

    path = tmp_path / "node.db"
    with AddressBook.open(path) as book:
        book.save_address(_row("x.dark"))
    n = 60

    def bump(db):
        for _ in range(n):
            db.update_address("x.dark", lambda r: dataclasses.replace(r, revision=r.revision + 1))

    node = NodeDatabase.open(path)
    errors = []

    def other():
        try:
            with AddressBook.open(path) as book:
                bump(book)
        except Exception as exc:  # reported below
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    try:
        bump(node)
    finally:
        t.join(60)
        node.close()
    assert not errors and not t.is_alive()
    with AddressBook.open(path) as book:
        assert book.get_address("x.dark").revision == 2 * n
        assert book.update_address("missing.dark", lambda r: r) is None
        # returning None leaves the row as it was
        assert book.update_address("x.dark", lambda r: None) is None
        assert book.get_address("x.dark").revision == 2 * n
        # a failing change rolls back and leaves the database usable
        with pytest.raises(ZeroDivisionError):
            book.update_address("x.dark", lambda r: 1 / 0)
        assert book.delete_address("x.dark") and book.addresses() == []


def test_cap_applies_to_new_rows_only(tmp_path):
    path = tmp_path / "node.db"
    with AddressBook.open(path, max_addresses=1) as book:
        book.save_address(_row("a.dark"))
        with pytest.raises(TooManyAddresses):
            book.save_address(_row("b.dark"))
        book.update_address("a.dark", lambda r: PublishedAddress(
            address=r.address, kind=r.kind, created=r.created, last_published=5.0, revision=1, blob=r.blob))
        assert book.get_address("a.dark").last_published == 5.0


def test_malformed_rows_are_skipped(tmp_path):
    path = tmp_path / "node.db"
    with AddressBook.open(path) as book:
        book.save_address(_row("good.dark"))
    c = sqlite3.connect(path)
    # SQLite's type affinity lets foreign writers put anything in a column
    c.execute("INSERT INTO addresses VALUES ('bad.dark', 'derived', 'yesterday', NULL, 0, x'00')")
    c.execute("INSERT INTO addresses VALUES ('bad2.dark', 'derived', 1.0, NULL, 'one', x'00')")
    c.commit()
    c.close()
    with AddressBook.open(path) as book:
        assert [a.address for a in book.addresses()] == ["good.dark"]


def _not_sqlite(path):
    path.write_bytes(b"not a database at all\n" * 50)


def _foreign(path):
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE notes (body TEXT)")
    c.commit()
    c.close()


def _foreign_app_id(path):
    c = sqlite3.connect(path)
    c.execute("PRAGMA application_id = 1196312866")
    c.execute("CREATE TABLE t (a)")
    c.commit()
    c.close()


def _newer(path):
    NodeDatabase.open(path).close()
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    c.commit()
    c.close()


def _truncated(path):
    with AddressBook.open(path) as book:
        for i in range(300):
            book.save_address(_row(f"{i:04d}.dark", blob=os.urandom(200)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 + 100])


def _no_address_table(path):
    NodeDatabase.open(path).close()
    c = sqlite3.connect(path)
    c.execute("DROP TABLE addresses")
    c.commit()
    c.close()


@pytest.mark.parametrize("make, error", [
    (_not_sqlite, NotADatabase), (_foreign, ForeignDatabase), (_foreign_app_id, ForeignDatabase),
    (_newer, NewerSchema), (_truncated, CorruptDatabase), (_no_address_table, CorruptDatabase),
])
def test_bad_files_give_a_declared_one_line_error_and_stay_untouched(tmp_path, make, error):
    path = tmp_path / "node.db"
    make(path)
    for suffix in ("-wal", "-shm"):
        if os.path.exists(str(path) + suffix):
            os.unlink(str(path) + suffix)
    os.chmod(path, 0o600)
    before = _digest(path)
    for create in (True, False):
        with pytest.raises(error) as info:
            AddressBook.open(path, create=create)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg
        assert _digest(path) == before


def test_insecure_file_refused(tmp_path):
    path = tmp_path / "node.db"
    AddressBook.open(path).close()
    os.chmod(path, 0o644)
    with pytest.raises(InsecureFile) as info:
        AddressBook.open(path)
    assert "chmod 600" in str(info.value)


def test_pending_record_deletions_block_the_address_book_until_flushed(tmp_path):
    """A node's pending record deletions hold SQLite's write lock; ``flush`` (which the
    node's AddressKeeper calls every tick) releases it, and is a no-op otherwise."""
    from qudag_core.krpc.store import RecordStore

    path = tmp_path / "node.db"
    node = NodeDatabase.open(path)
    try:
        store = RecordStore()
        node.attach_store(store, 0.0)
        target = store.put_immutable(os.urandom(20), b"5:hello", 0.0, source_ip="10.0.0.1")
        node.flush()
        assert not node._conn.in_transaction  # flush with nothing pending writes nothing
        node._store.listener.record_removed(target if isinstance(target, bytes) else os.urandom(20))
        assert node._conn.in_transaction
        book = AddressBook.open(path)
        book._conn.execute("PRAGMA busy_timeout = 100")
        try:
            with pytest.raises(PersistError):
                book.save_address(_row("a.dark"))
            node.flush()
            book.save_address(_row("a.dark"))
            assert [a.address for a in node.addresses()] == ["a.dark"]
        finally:
            book.close()
    finally:
        node.close()
