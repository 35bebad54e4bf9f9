"""The node database over real UDP sockets (issue 6, "Persistence"):

* a node that knew the network is closed and restarted from its database with no
  bootstrap list, and still finds nodes and gets values (and kept the records it held);
* a node in a subprocess accepting 1,000 BEP 44 puts is SIGKILLed in the middle; after a
  restart from its database every put it acknowledged is served again.
"""
from __future__ import annotations

import asyncio
import dataclasses
import os
import pathlib
import random
import signal
import sys

import pytest

from qudag_core.krpc import bencode
from qudag_core.krpc import messages as M
from qudag_core.krpc.errors import KrpcError
from qudag_core.krpc.node import NodeConfig
from qudag_io.dht import DhtNode
from qudag_io.persist import NodeDatabase

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "netproc" / "persist_dht_node.py"
CFG = NodeConfig(query_timeout=1.0)


async def _network(n: int) -> list:
    """Nodes on 127.0.<40+i>.1 (distinct /24s, so the default diversity limits hold)."""
    first = await DhtNode.start("127.0.40.1", 0, config=CFG)
    nodes = [first]
    for i in range(1, n):
        nodes.append(await DhtNode.start(f"127.0.{40 + i}.1", 0, config=CFG,
                                         bootstrap=[first.address, nodes[-1].address]))
    await asyncio.gather(*(nd.find_node(nd.node_id) for nd in nodes))
    return nodes


def test_restart_from_database_without_bootstrap(run_loop, tmp_path):
    path = tmp_path / "node.db"

    async def main():
        loop = asyncio.get_running_loop()
        nodes = await _network(10)
        x = db = None
        try:
            db = NodeDatabase.open(path)
            assert db.saved_node_id() is None
            x = await DhtNode.start("127.0.60.1", 0, bootstrap=[nodes[0].address], config=CFG)
            assert db.attach(x.core, loop.time()) == (0, 0, 0)
            await x.find_node(x.node_id)
            rnd = random.Random(3)
            for i in range(20):  # records written by others, some of them land on x
                await rnd.choice(nodes).put(bencode.encode(b"held %d" % i))
            held = {r.target: r.value for r in x.core.store.records()}
            assert held, "x should hold some of the records"
            known = {n.node_id for n in x.core.table}
            assert len(known) >= 5
            port, node_id = x.address[1], x.node_id
            db.save(x.core, loop.time())
            await x.close()
            db.close()
            x = db = None

            # while x is down, the network stores a new value
            value = bencode.encode(b"written while x was down")
            target = await nodes[4].put(value)

            db = NodeDatabase.open(path)
            assert db.saved_node_id() == node_id
            x = await DhtNode.start("127.0.60.1", port, node_id=node_id, bootstrap=(), config=CFG,
                                    wait_bootstrap=False)
            assert len(x.core.table) == 0
            n_nodes, _, n_records = db.attach(x.core, loop.time())
            assert n_nodes == len(known) and {n.node_id for n in x.core.table} == known
            assert n_records == len(held)
            assert {r.target: r.value for r in x.core.store.records()} == held
            # back in the network from the saved table alone
            res = await x.find_node(os.urandom(20))
            assert res.nodes
            got = await x.get(target)
            assert got.value == value
        finally:
            if x is not None:
                await x.close()
            if db is not None:
                db.close()
            for nd in nodes:
                await nd.close()

    run_loop(main, 60)


class _Client(asyncio.DatagramProtocol):
    """A bare KRPC client: one future per transaction id."""

    def __init__(self) -> None:
        self.waiters: dict[bytes, asyncio.Future] = {}
        self.transport = None
        self.next_tid = 0
        self.node_id = os.urandom(20)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        try:
            msg = M.parse_message(data)
        except KrpcError:
            return
        fut = self.waiters.pop(msg.transaction_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def query(self, q: M.Query, addr: tuple, timeout: float):
        self.next_tid += 1
        tid = self.next_tid.to_bytes(4, "big")
        fut = asyncio.get_running_loop().create_future()
        self.waiters[tid] = fut
        self.transport.sendto(dataclasses.replace(q, transaction_id=tid, node_id=self.node_id).encode(), addr)
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self.waiters.pop(tid, None)


async def _spawn(path: pathlib.Path, kind: str, sync: str):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["QUDAG_UVLOOP"] = "1" if kind == "uvloop" else "0"
    proc = await asyncio.create_subprocess_exec(sys.executable, str(SCRIPT), str(path), "127.0.0.1", sync,
                                                stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, env=env)
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
        assert line[:1] == ["READY"], line
    except BaseException:
        await _end(proc)
        raise
    return proc, int(line[1]), int(line[2])


async def _end(proc) -> None:
    if proc.returncode is None:
        proc.kill()
    await proc.wait()


@pytest.mark.parametrize("sync", ["NORMAL", "FULL"])
def test_sigkill_loses_no_acknowledged_put(run_loop, tmp_path, sync):
    path = tmp_path / "crash.db"
    total = 1000

    async def main():
        loop = asyncio.get_running_loop()
        transport, client = await loop.create_datagram_endpoint(_Client, local_addr=("127.0.0.1", 0))
        procs = []
        try:
            proc, port, loaded = await _spawn(path, run_loop.kind, sync)
            procs.append(proc)
            assert loaded == 0
            addr = ("127.0.0.1", port)
            r = await client.query(M.Get(transaction_id=b"-", node_id=b"\0" * 20, target=os.urandom(20)),
                                   addr, 5)
            token = r.token
            assert token
            values = [bencode.encode(b"crash record %d " % i + os.urandom(8)) for i in range(total)]
            acked: dict[bytes, bytes] = {}
            kill_after = random.Random().randrange(300, 700)
            killed = asyncio.Event()
            sem = asyncio.Semaphore(32)

            async def put(v: bytes) -> None:
                async with sem:
                    if killed.is_set():
                        return
                    q = M.Put(transaction_id=b"-", node_id=b"\0" * 20, token=token, value=v)
                    try:
                        rep = await client.query(q, addr, 2.0)
                    except asyncio.TimeoutError:
                        return
                    # the node replies only after the record's row is committed
                    assert isinstance(rep, M.Response), rep
                    acked[M.immutable_target(v)] = v
                    if len(acked) >= kill_after and not killed.is_set():
                        proc.send_signal(signal.SIGKILL)  # puts still in flight
                        killed.set()

            await asyncio.gather(*(put(v) for v in values))
            assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGKILL
            assert kill_after <= len(acked) < total

            proc2, port2, loaded2 = await _spawn(path, run_loop.kind, sync)
            procs.append(proc2)
            assert loaded2 >= len(acked)
            addr2 = ("127.0.0.1", port2)
            missing = []

            async def check(target: bytes, v: bytes) -> None:
                async with sem:
                    rep = await client.query(M.Get(transaction_id=b"-", node_id=b"\0" * 20, target=target),
                                             addr2, 5)
                    if rep.value != v:
                        missing.append(target)

            await asyncio.gather(*(check(t, v) for t, v in acked.items()))
            assert not missing, f"{len(missing)} of {len(acked)} acknowledged puts lost"
            proc2.stdin.close()
            assert await asyncio.wait_for(proc2.wait(), 10) == 0
            print(f"\n{run_loop.kind}, synchronous={sync}: killed after {len(acked)} acknowledged puts; all back")
        finally:
            transport.close()
            for p in procs:
                await _end(p)

    run_loop(main, 120)
