"""Onion routing across separate processes: three relay processes
(tests/netproc/onion_relay_node.py) and a client in the test process, over loopback."""
from __future__ import annotations

import asyncio
import hashlib
import os
import pathlib
import random
import sys

from qudag_core.identity import Identity, NodeCertificate
from qudag_io.onion import DirectoryEntry, OnionClient, OnionNode, RelayDirectory

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "netproc" / "onion_relay_node.py"
ROOT = SCRIPT.parent.parent.parent


def test_three_relay_processes_sha256(run_loop):
    async def main():
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["QUDAG_UVLOOP"] = "1" if run_loop.kind == "uvloop" else "0"
        procs = []
        try:
            for _ in range(3):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        sys.executable, str(SCRIPT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env
                    )
                )
            certs = []
            for p in procs:
                line = (await asyncio.wait_for(p.stdout.readline(), 30)).decode().split()
                assert line[0] == "CERT"
                certs.append(NodeCertificate.from_bytes(bytes.fromhex(line[1])))
            for p in procs:
                p.stdin.write(b"".join(c.to_bytes().hex().encode() + b"\n" for c in certs) + b"END\n")
                await p.stdin.drain()
            for p in procs:
                assert (await asyncio.wait_for(p.stdout.readline(), 30)).strip() == b"READY"
            directory = RelayDirectory([DirectoryEntry(c) for c in certs])
            me = await OnionNode.start(Identity.generate(os.urandom), directory, relay=False)
            try:
                ids = [bytes(c.node_id) for c in certs]
                circ = await OnionClient(me, per_subnet=None).build_circuit(path=ids)
                stream = await circ.open_stream(ids[2], "digest")
                rnd = random.Random(5)
                msgs = [rnd.randbytes(1 << 20)] + [rnd.randbytes(rnd.randrange(1, 20000)) for _ in range(100)]
                for m in msgs:
                    await stream.send(len(m).to_bytes(4, "big") + m)
                await stream.send(bytes(4))
                reply = await stream.readexactly(36)
                assert int.from_bytes(reply[:4], "big") == len(msgs)
                assert reply[4:] == hashlib.sha256(b"".join(msgs)).digest()
                await stream.close()
                await circ.close()
            finally:
                await me.close()
        finally:
            for p in procs:
                if p.stdin and not p.stdin.is_closing():
                    p.stdin.close()
            for p in procs:
                try:
                    await asyncio.wait_for(p.wait(), 10)
                except asyncio.TimeoutError:
                    p.kill()
                    await p.wait()
            assert all(p.returncode == 0 for p in procs)

    run_loop(main, 90)
