"""Interop with a DHT nobody here wrote: Debian's python3-libtorrent 2.0.8, driven by
``lt_dht_helper.py`` under /usr/bin/python3 in a subprocess, on loopback.

libtorrent bootstraps from our nodes and one of ours bootstraps from libtorrent only;
then get_peers, announce_peer and BEP 44 immutable and mutable put/get succeed in both
directions, and ping/find_node from us to libtorrent.  BEP 43: libtorrent answers a
read-only node of ours but keeps it out of its table (a normal node is the control).  The other direction of ping and
find_node cannot be driven: libtorrent 2.0.8's Python bindings have no
``dht_direct_request``, and libtorrent 2.0 itself bootstraps and refreshes with
``get_peers`` (``node::send_single_refresh`` pings only nodes of full buckets and never
sends ``find_node``).  What libtorrent does send is counted from its own packet log
(``dht_pkt_alert``) and matched against the queries our nodes answered."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import pathlib
import shutil
import socket

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from qudag_core.krpc import bencode
from qudag_core.krpc import messages as M
from qudag_core.krpc.node import NodeConfig
from qudag_io.dht import DhtNode

HELPER = pathlib.Path(__file__).with_name("lt_dht_helper.py")
SYS_PY = "/usr/bin/python3"


def _have_libtorrent() -> bool:
    if not os.path.exists(SYS_PY):
        return False
    import subprocess

    r = subprocess.run([SYS_PY, "-c", "import libtorrent"], capture_output=True, timeout=20)
    return r.returncode == 0


pytestmark = pytest.mark.skipif(not _have_libtorrent(), reason="python3-libtorrent not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LtSession:
    """The libtorrent helper process; ended by ``close``."""

    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    @classmethod
    async def start(cls, port: int) -> "LtSession":
        proc = await asyncio.create_subprocess_exec(SYS_PY, str(HELPER), str(port),
                                                    stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert json.loads(line)["ready"]
        return cls(proc, port)

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    async def call(self, cmd: str, timeout: float = 10.0, **kw):
        kw.update(cmd=cmd, timeout=timeout)
        self.proc.stdin.write((json.dumps(kw) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout + 10)
        return json.loads(line)

    async def close(self):
        try:
            if self.proc.returncode is None:
                await self.call("quit", timeout=2)
                await asyncio.wait_for(self.proc.wait(), 10)
        except (asyncio.TimeoutError, BrokenPipeError, ConnectionResetError, json.JSONDecodeError):
            pass
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()


def lt_secret(seed: bytes) -> bytes:
    """The 64-byte "secret key" of orlp/ed25519 (libtorrent's): SHA-512(seed), clamped."""
    h = bytearray(hashlib.sha512(seed).digest())
    h[0] &= 248
    h[31] &= 63
    h[31] |= 64
    return bytes(h)


CFG = NodeConfig(query_timeout=1.0)


async def wait_until(pred, timeout: float, step: float = 0.2):
    for _ in range(int(timeout / step)):
        r = await pred()
        if r:
            return r
        await asyncio.sleep(step)
    return await pred()


def test_libtorrent_interop():
    async def main():
        ours = []
        lt = None
        try:
            # Our nodes on distinct loopback /24s: all on one address, the routing table's
            # diversity limit (2 per /24 per bucket) would keep some out of a table whenever
            # their ids share a bucket, which made the table checks below flaky by id draw.
            a = await DhtNode.start("127.0.1.1", 0, config=CFG)
            ours.append(a)
            for i in range(2):
                ours.append(await DhtNode.start(f"127.0.{i + 2}.1", 0, config=CFG, bootstrap=[a.address]))
            lt = await LtSession.start(free_port())
            # libtorrent bootstraps from our nodes
            for nd in ours:
                await lt.call("add_node", host=nd.address[0], port=nd.address[1])
            our_ports = {nd.address[1] for nd in ours}

            async def lt_knows_us():
                r = await lt.call("live_nodes", timeout=1)
                return {n[2] for n in r["nodes"]} >= our_ports

            assert await wait_until(lt_knows_us, 15), "libtorrent did not add our nodes"
            # one of ours bootstraps from libtorrent only, and finds our other nodes through it
            d = await DhtNode.start("127.0.9.1", 0, config=CFG, bootstrap=[lt.address])
            ours.append(d)
            # learnt through libtorrent: its replies name our nodes, which enter our table once
            # they answer (libtorrent may name only some at first; the bootstrap's follow-up
            # lookups reach the rest through them)
            want = {nd.node_id for nd in ours[:3]}

            async def learnt():
                return len(want & {n.node_id for n in d.core.table}) >= 2

            if not await learnt():
                await d.find_node(d.node_id)
            assert await wait_until(learnt, 10)
            assert lt.address in {n.addr for n in d.core.table}

            # ping and find_node, us -> libtorrent
            pr = await a.ping(lt.address)
            lt_id = pr.node_id
            fr = await d.find_node(os.urandom(20))
            assert (lt_id, lt.address) in fr.nodes
            # libtorrent -> us: libtorrent 2.0 bootstraps and refreshes with get_peers (it
            # sends ping only to check full buckets, find_node not at all), and its 2.0.8
            # bindings lack dht_direct_request; so what we can show is that every query
            # libtorrent reports sending reached our nodes and was answered.
            m = (await lt.call("methods"))["methods"]
            answered = {k: sum(nd.core.stats.get("q:" + k, 0) for nd in ours) for k in m["out"]}
            assert m["out"].get("get_peers", 0) >= 1
            for meth, n in m["out"].items():
                assert answered[meth] >= 1, (meth, m, answered)

            # BEP 44 immutable: us -> libtorrent
            v1 = bencode.encode(b"from qudag")
            t1 = await a.put(v1)
            r = await lt.call("get_immutable", target=t1.hex())
            assert r["value"] == v1.hex()
            # libtorrent -> us
            v2 = bencode.encode([b"from", b"libtorrent", 208])
            r = await lt.call("put_immutable", value=v2.hex())
            assert r["num_success"] and r["num_success"] >= 1
            g = await d.get(bytes.fromhex(r["target"]))
            assert g.value == v2

            # BEP 44 mutable: us -> libtorrent
            sk = Ed25519PrivateKey.from_private_bytes(os.urandom(32))
            pk = sk.public_key().public_bytes_raw()
            mv = bencode.encode(b"mutable from qudag")
            await a.put_mutable(mv, key=pk, signature=M.sign_mutable(sk, mv, 3, b"qs"), seq=3, salt=b"qs")
            r = await lt.call("get_mutable", public=pk.hex(), salt=b"qs".hex())
            assert r["value"] == mv.hex() and r["seq"] == 3
            # libtorrent -> us (libtorrent signs with its own ed25519 code)
            seed = os.urandom(32)
            lpk = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
            r = await lt.call("put_mutable", secret=lt_secret(seed).hex(), public=lpk.hex(),
                              value=b"mutable from libtorrent".hex(), salt=b"ls".hex())
            assert r["num_success"] and r["num_success"] >= 1
            g = await d.get(M.mutable_target(lpk, b"ls"), salt=b"ls")
            assert g.value == bencode.encode(b"mutable from libtorrent") and g.key == lpk
            M.verify_mutable(lpk, g.signature, g.value, g.seq, b"ls")  # libtorrent's signature checks out

            # announce_peer / get_peers: us -> libtorrent
            ih1 = os.urandom(20)
            ar = await a.announce(ih1, 7001)
            assert ar.stored >= 1
            r = await lt.call("get_peers", info_hash=ih1.hex(), want=[a.address[0], 7001])
            assert [a.address[0], 7001] in r["peers"]  # the announcer's address, as BEP 5 stores it
            # libtorrent -> us
            ih2 = os.urandom(20)
            before = sum(nd.core.stats.get("q:announce_peer", 0) for nd in ours)
            r = await lt.call("announce", info_hash=ih2.hex(), timeout=20)
            assert r["announced"] >= 1
            assert sum(nd.core.stats.get("q:announce_peer", 0) for nd in ours) > before
            gp = await d.get_peers(ih2)
            assert ("127.0.0.1", r["port"]) in gp.peers
        finally:
            for nd in ours:
                await nd.close()
            if lt is not None:
                await lt.close()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_libtorrent_answers_a_read_only_node_and_keeps_it_out_of_its_table():
    """BEP 43 against libtorrent 2.0.8 (which implements it): the queries of a read-only
    node of ours carry ro = 1, libtorrent answers them, and it does not add the node to
    its routing table nor query it; a normal node doing the same is added (the control)."""
    async def main():
        ours = []
        lt = None
        try:
            lt = await LtSession.start(free_port())
            ro = await DhtNode.start("127.0.0.1", 0, bootstrap=[lt.address], wait_bootstrap=False,
                                     config=NodeConfig(query_timeout=1.0, read_only=True))
            ours.append(ro)
            normal = await DhtNode.start("127.0.0.1", 0, bootstrap=[lt.address], wait_bootstrap=False, config=CFG)
            ours.append(normal)
            for nd in ours:  # answered: libtorrent services read-only queriers "as usual"
                pr = await nd.ping(lt.address)
                await nd.find_node(os.urandom(20))
                await nd.get(os.urandom(20))
            lt_id = pr.node_id
            assert ro.core.table.get(lt_id) is not None  # it learnt libtorrent from the answers

            async def lt_has_normal():
                r = await lt.call("live_nodes", timeout=1)
                return normal.address[1] in {n[2] for n in r["nodes"]}

            assert await wait_until(lt_has_normal, 15), "control: libtorrent did not add a normal querier"
            r = await lt.call("live_nodes", timeout=1)
            assert ro.address[1] not in {n[2] for n in r["nodes"]}
            m = (await lt.call("methods"))["methods"]
            assert sum(m["in_ro"].values()) >= 3, m  # our flag reached it
            assert ro.core.stats["dropped_read_only"] == 0  # libtorrent never queried it (no ping)
        finally:
            for nd in ours:
                await nd.close()
            if lt is not None:
                await lt.close()

    asyncio.run(asyncio.wait_for(main(), 90))
