"""The node's side of dark addresses (``qudag_io.dark``): the shared certificate
directory, the address state kept in the node database, and ``AddressKeeper``
publishing, republishing and recording results on a loopback network (asyncio and
uvloop).  The command line around them is tested in ``test_cli_end_to_end.py``."""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import threading
import time

import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.dark import Resolver
from qudag_core.identity import Identity
from qudag_io.dark import (KIND_DERIVED, AddressKeeper, AddressState, CertificateDirectory, DarkError,
                           derived_service, node_dht_id, start_loopback_network)
from qudag_io.persist import NodeDatabase, PublishedAddress


def _cert(ident: Identity, port: int, now: float | None = None, lifetime: int = 7 * 86400):
    return ident.issue_certificate([("127.0.0.1", port)], now=time.time() if now is None else now,
                                   lifetime=lifetime)


# ---- address state -----------------------------------------------------------------------------------


@given(st.builds(AddressState, index=st.integers(0, 2**32 - 1), publish=st.booleans(),
                 requested=st.floats(0, 2e9), done=st.floats(0, 2e9), result=st.text(max_size=80)))
def test_address_state_round_trip(state):
    assert AddressState.from_blob(state.to_blob()) == state


@settings(max_examples=300)
@given(st.one_of(st.binary(max_size=200),
                 st.dictionaries(st.sampled_from(["index", "publish", "requested", "done", "result", "x"]),
                                 st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(),
                                           st.text(max_size=10), st.lists(st.integers(), max_size=2)))
                 .map(lambda d: json.dumps(d).encode())))
def test_address_state_any_blob_parses_or_gives_dark_error(blob):
    try:
        state = AddressState.from_blob(blob)
    except DarkError as exc:
        assert "unreadable address state" in str(exc)
    else:
        assert 0 <= state.index < 2**32 and isinstance(state.publish, bool)


def test_derived_addresses_are_distinct_and_stable():
    ident = Identity.generate(os.urandom)
    names = [str(derived_service(ident, i).address) for i in range(3)]
    assert len(set(names)) == 3
    assert names[1] == str(derived_service(Identity.from_secrets(ident.secrets()), 1).address)
    # not the node's long-term address
    from qudag_core.dark import DarkService
    assert str(DarkService.from_identity(ident).address) not in names


# ---- certificate directory -----------------------------------------------------------------------------


def test_directory_register_replace_and_skip_bad_entries(tmp_path):
    path = str(tmp_path / "dark.json")
    assert len(CertificateDirectory(path)) == 0  # a missing file is an empty directory
    a, b = Identity.generate(os.urandom), Identity.generate(os.urandom)
    da = CertificateDirectory(path, min_interval=0)
    da.register(_cert(a, 1000))
    db = CertificateDirectory(path, min_interval=0)
    db.register(_cert(b, 2000))
    assert node_dht_id(bytes(b.node_id)) in da  # a miss re-reads the changed file
    assert da[node_dht_id(bytes(a.node_id))].addresses[0][1] == 1000
    # a restarted node replaces its entry
    da.register(_cert(a, 1001))
    with open(path) as f:
        assert len(json.load(f)) == 2
    db.reload()
    assert db[node_dht_id(bytes(a.node_id))].addresses[0][1] == 1001
    assert sorted(db) == sorted([node_dht_id(bytes(a.node_id)), node_dht_id(bytes(b.node_id))])
    # garbage, a tampered and an expired certificate are skipped, the rest kept
    c = Identity.generate(os.urandom)
    tampered = bytearray(_cert(c, 3000).to_bytes())
    tampered[-1] ^= 1
    expired = _cert(Identity.generate(os.urandom), 4000, now=time.time() - 10 * 86400, lifetime=86400)
    with open(path) as f:
        items = json.load(f)
    with open(path, "w") as f:
        json.dump(items + ["zz", 7, tampered.hex(), expired.to_bytes().hex()], f)
    fresh = CertificateDirectory(path)
    assert len(fresh) == 2 and b"\x00" * 20 not in fresh and "text" not in fresh
    # registering rewrites the file without the unreadable entries
    fresh.register(_cert(c, 3001))
    assert len(fresh) == 3
    for junk in (b"{not json", b'{"a": 1}'):
        with open(path, "wb") as f:
            f.write(junk)
        assert len(CertificateDirectory(path)) == 0


def test_directory_concurrent_registration_loses_nobody(tmp_path):
    path = str(tmp_path / "dark.json")
    idents = [Identity.generate(os.urandom) for _ in range(8)]
    certs = [_cert(i, 5000 + n) for n, i in enumerate(idents)]
    threads = [threading.Thread(target=CertificateDirectory(path).register, args=(c,)) for c in certs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    d = CertificateDirectory(path)
    assert sorted(d) == sorted(node_dht_id(bytes(i.node_id)) for i in idents)


# ---- address keeper ----------------------------------------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def runner(request):
    factory = uvloop.new_event_loop if request.param == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as r:
        yield r


def _add(db, ident: Identity, index: int, *, publish: bool, requested: float = 0.0) -> str:
    name = str(derived_service(ident, index).address)
    db.save_address(PublishedAddress(address=name, kind=KIND_DERIVED, created=time.time(), last_published=None,
                                     revision=0, blob=AddressState(index=index, publish=publish,
                                                                   requested=requested).to_blob()))
    return name


def test_keeper_publishes_republishes_and_records(runner, tmp_path):
    async def main():
        net = await start_loopback_network(6)
        db = NodeDatabase.open(tmp_path / "node.db")
        ident = Identity.generate(os.urandom)
        cert = _cert(ident, 47000)
        pub = net.client(0)
        res = net.client(4, resolver=Resolver(os.urandom))
        try:
            kept = _add(db, ident, 0, publish=True)
            idle = _add(db, ident, 1, publish=False)
            keeper = AddressKeeper(db, ident, pub, cert)
            assert await keeper.start() == 1
            row = db.get_address(kept)
            state = AddressState.from_blob(row.blob)
            assert row.last_published is not None and row.revision >= int(time.time()) - 5
            assert "descriptor puts accepted" in state.result and not state.result.startswith("failed")
            assert db.get_address(idle).last_published is None
            ep = await res.resolve(kept)
            assert ep.certificate.to_bytes() == cert.to_bytes() and ep.expected_peer_id == ident.node_id
            assert not ep.is_long_term  # a derived address vouches for the node's certificate
            # nothing changed, nothing due: a tick publishes nothing
            rev = row.revision
            await keeper.tick()
            assert db.get_address(kept).revision == rev
            # the command line asks (another connection): the next tick publishes, higher revision
            from qudag_io.persist import AddressBook
            with AddressBook.open(tmp_path / "node.db") as book:
                stamp = time.time()
                book.update_address(idle, lambda r: dataclasses.replace(r, blob=dataclasses.replace(
                    AddressState.from_blob(r.blob), publish=True, requested=stamp).to_blob()))
            await keeper.tick()
            st2 = AddressState.from_blob(db.get_address(idle).blob)
            assert st2.done >= stamp and st2.publish and db.get_address(idle).last_published is not None
            assert (await res.resolve(idle)).expected_peer_id == ident.node_id
            # after a "restart" (a new keeper on the same database) both are republished
            # with revisions above the saved ones
            revs = {a.address: a.revision for a in db.addresses()}
            again = AddressKeeper(db, ident, pub, cert)
            assert await again.start() == 2
            assert all(a.revision > revs[a.address] for a in db.addresses())
        finally:
            db.close()
            await pub.close()
            await res.close()
            await net.close()

    runner.run(asyncio.wait_for(main(), 120))


def test_keeper_records_why_it_cannot_publish(runner, tmp_path):
    async def main():
        db = NodeDatabase.open(tmp_path / "node.db")
        ident, other = Identity.generate(os.urandom), Identity.generate(os.urandom)
        try:
            mine = _add(db, ident, 0, publish=True, requested=time.time())
            theirs = _add(db, other, 0, publish=True, requested=time.time())
            db.save_address(PublishedAddress(address="garbage.dark", kind=KIND_DERIVED, created=1.0,
                                             last_published=None, revision=0, blob=b"\xff"))
            keeper = AddressKeeper(db, ident, None, _cert(ident, 1))
            assert await keeper.start() == 0
            st_mine = AddressState.from_blob(db.get_address(mine).blob)
            assert st_mine.result.startswith("failed") and "--dark-directory" in st_mine.result
            assert st_mine.done >= st_mine.requested
            assert "not derived from this node's identity" in AddressState.from_blob(db.get_address(theirs).blob).result
            assert db.get_address("garbage.dark").blob == b"\xff"  # left alone
            assert all(a.last_published is None for a in db.addresses())
        finally:
            db.close()

    runner.run(asyncio.wait_for(main(), 60))


def test_keeper_retries_a_failed_publish(runner, tmp_path):
    async def main():
        from qudag_io.dark import DarkClient

        net = await start_loopback_network(4)
        db = NodeDatabase.open(tmp_path / "node.db")
        ident = Identity.generate(os.urandom)
        directory: dict = {}  # nobody reachable yet
        client = DarkClient(net.dhts[0], ident, directory)
        try:
            name = _add(db, ident, 0, publish=True)
            keeper = AddressKeeper(db, ident, client, _cert(ident, 47001), retry=0.2)
            assert await keeper.start() == 0
            st0 = AddressState.from_blob(db.get_address(name).blob)
            assert st0.result.startswith("failed") and "retrying" in st0.result
            await keeper.tick()  # before the retry time: nothing
            assert db.get_address(name).last_published is None
            directory.update(net.directory)  # storage nodes become reachable
            for _ in range(50):  # bounded: 50 x 0.1 s
                await asyncio.sleep(0.1)
                await keeper.tick()
                if db.get_address(name).last_published is not None:
                    break
            row = db.get_address(name)
            assert row.last_published is not None
            assert not AddressState.from_blob(row.blob).result.startswith("failed")
        finally:
            db.close()
            await client.close()
            await net.close()

    runner.run(asyncio.wait_for(main(), 60))


_GOOD = _cert(Identity.generate(os.urandom), 6000).to_bytes().hex()
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=12),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=10)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=300),
                 st.lists(_json | st.just(_GOOD) | st.just(_GOOD[:-2]), max_size=5)
                 .map(lambda x: json.dumps(x).encode())))
def test_directory_any_file_content_is_read_without_error(tmp_path_factory, content):
    path = str(tmp_path_factory.mktemp("d") / "dark.json")
    with open(path, "wb") as f:
        f.write(content)
    d = CertificateDirectory(path)
    assert len(d) in (0, 1) and all(d[k].to_bytes().hex() == _GOOD for k in d)
    # registering over it keeps only readable entries, plus ours
    ident = Identity.generate(os.urandom)
    d.register(_cert(ident, 6001))
    assert node_dht_id(bytes(ident.node_id)) in d and len(d) in (1, 2)
