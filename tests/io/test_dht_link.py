"""qudag's ML-DSA-signed records (``qd_get``/``qd_put``) as KRPC messages over an
authenticated qudag link (real TCP on loopback, under asyncio and uvloop), served by the
same KRPC handler as UDP."""
from __future__ import annotations

import os

import pytest

from qudag_core.crypto import MlDsa65PrivateKey
from qudag_core.identity import Identity
from qudag_core.krpc import messages as M
from qudag_io.dht import DhtError, DhtNode
from qudag_io.link import connect, listen

ALICE = Identity.generate(os.urandom)
BOB = Identity.generate(os.urandom)


def test_qd_records_over_link(run_loop):
    async def main():
        server = await DhtNode.start("127.0.0.1", 0, wait_bootstrap=False)
        client = await DhtNode.start("127.0.0.1", 0, wait_bootstrap=False)

        async def handler(conn):
            await server.serve_link(conn, ("127.0.0.1", 1))

        try:
            async with await listen("127.0.0.1", 0, identity=BOB, handler=handler) as lst:
                host, port = lst.addresses[0]
                async with await connect(host, port, identity=ALICE, peer_certificate=lst.certificate) as conn:
                    sk = MlDsa65PrivateKey.generate(os.urandom)
                    rec = M.sign_qd_record(sk, record_type=M.RecordType.DARK_DESCRIPTOR, revision=4,
                                           value=os.urandom(3000), salt=b"d")
                    assert len(rec.public_key) + len(rec.signature) + len(rec.value) > 1400  # no datagram
                    target = rec.target(b"d")
                    assert await client.qd_get(conn, target, rec.record_type, salt=b"d") is None
                    await client.qd_put(conn, rec, salt=b"d")
                    got = await client.qd_get(conn, target, rec.record_type, salt=b"d")
                    assert got == rec
                    # a lower revision is refused (302), a forged signature too (206)
                    old = M.sign_qd_record(sk, record_type=rec.record_type, revision=3, value=b"old", salt=b"d")
                    with pytest.raises(DhtError, match="302"):
                        await client.qd_put(conn, old, salt=b"d")
                    forged = M.QdRecord(record_type=rec.record_type, revision=9, public_key=rec.public_key,
                                        signature=rec.signature, value=b"forged")
                    with pytest.raises(DhtError, match="206"):
                        await client.qd_put(conn, forged, salt=b"d")
                    assert (await client.qd_get(conn, target, rec.record_type, salt=b"d")).revision == 4
                    # the ordinary BEP 5 methods work over the link too
                    r = await client._link_call(conn, M.Ping(transaction_id=b"-", node_id=client.node_id), 5)
                    assert r.node_id == server.node_id
        finally:
            await server.close()
            await client.close()

    run_loop(main, 60)


def test_qd_methods_refused_over_udp(run_loop):
    async def main():
        a = await DhtNode.start("127.0.0.1", 0, wait_bootstrap=False)
        try:
            q = M.QdGet(transaction_id=b"qq", node_id=b"\x05" * 20, target=b"\x01" * 20, record_type=1)
            reply = a.core.receive_link_message(q.encode(), ("127.0.0.1", 9), 0.0)
            assert isinstance(M.parse_message(reply), M.Response)
            a.core.receive_datagram(q.encode(), ("127.0.0.1", 9), 0.0)
            out = [M.parse_message(d) for d, _ in a.core.datagrams_to_send(0.0)]
            assert any(isinstance(m, M.Error) and m.code == 203 for m in out)
        finally:
            await a.close()

    run_loop(main, 20)
