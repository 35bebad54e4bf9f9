"""``make demo``: two qudag nodes, each in its own process, meet over loopback.

The listening node writes its certificate to a file (the way a bootstrap list or a DHT
record would hand it out); the dialling node reads it, runs the hybrid post-quantum
handshake (X-Wing + ML-DSA-65 certificates), exchanges messages of random sizes over the
secure channel, checks them by SHA-256 and prints what happened.  Every process the demo
starts is ended before it returns.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

from qudag_core.identity import Identity, NodeCertificate
from qudag_io._loop import run
from qudag_io.link import connect, listen


def _say(who: str, text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {who:<5} {text}", flush=True)


async def _serve(cert_path: str) -> None:
    me = Identity.generate(os.urandom)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def handler(conn) -> None:
        _say("bob", f"authenticated link from {conn.peer_node_id} (session {conn.session_id[:6].hex()})")
        n = 0
        h = hashlib.sha256()
        async for msg in conn:
            if msg == b"":
                break
            n += 1
            h.update(msg)
            await conn.send(hashlib.sha256(msg).digest())
        await conn.send(h.digest())
        _say("bob", f"received {n} messages; digest {h.hexdigest()[:16]}...")

    async with await listen("127.0.0.1", 0, identity=me, handler=handler) as lst:
        host, port = lst.addresses[0]
        tmp = cert_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(lst.certificate.to_bytes())
        os.replace(tmp, cert_path)
        _say("bob", f"node {me.node_id} listening on {host}:{port}")
        await stop.wait()
    _say("bob", "shut down")


async def _dial(cert_path: str, count: int) -> int:
    me = Identity.generate(os.urandom)
    with open(cert_path, "rb") as f:
        cert = NodeCertificate.from_bytes(f.read())
    host, port = cert.addresses[0]
    _say("alice", f"node {me.node_id} dialling {cert.node_id} at {host}:{port}")
    t0 = time.perf_counter()
    async with await connect(host, port, identity=me, peer_certificate=cert, expected_peer_id=cert.node_id) as conn:
        t_hs = time.perf_counter() - t0
        _say("alice", f"handshake complete in {t_hs * 1000:.1f} ms: peer proved {conn.peer_node_id}")
        _say("alice", f"session {conn.session_id[:6].hex()}..., X-Wing (ML-KEM-768 + X25519), ChaCha20-Poly1305 channel")
        rnd = random.Random()
        h = hashlib.sha256()
        total = 0
        t1 = time.perf_counter()
        for _ in range(count):
            msg = rnd.randbytes(rnd.randrange(1, 4096))
            total += len(msg)
            h.update(msg)
            await conn.send(msg)
            if await conn.recv() != hashlib.sha256(msg).digest():
                _say("alice", "MISMATCH: a message came back with the wrong hash")
                return 1
        await conn.send(b"")
        remote = await conn.recv()
        dt = time.perf_counter() - t1
        ok = remote == h.digest()
        _say("alice", f"{count} messages ({total / 1024:.0f} KiB) echoed by hash in {dt * 1000:.0f} ms "
                      f"({count / dt:.0f} round trips/s)")
        _say("alice", f"stream digest {'matches' if ok else 'DIFFERS'}: {h.hexdigest()[:16]}...")
        return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m qudag_io.demo", description=__doc__.splitlines()[0])
    ap.add_argument("role", nargs="?", choices=["both", "serve", "dial"], default="both")
    ap.add_argument("--cert", help="certificate file (serve writes it, dial reads it)")
    ap.add_argument("--messages", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.role == "serve":
        run(_serve(args.cert))
        return 0
    if args.role == "dial":
        return run(_dial(args.cert, args.messages))

    with tempfile.TemporaryDirectory(prefix="qudag-demo-") as tmp:
        cert = os.path.join(tmp, "bob.cert")
        server = subprocess.Popen([sys.executable, "-m", "qudag_io.demo", "serve", "--cert", cert])
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(cert):
                if server.poll() is not None or time.monotonic() > deadline:
                    print("demo: the listening node did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            rc = subprocess.call([sys.executable, "-m", "qudag_io.demo", "dial", "--cert", cert,
                                  "--messages", str(args.messages)], timeout=300)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    print("demo: OK" if rc == 0 else "demo: FAILED")
    return rc


if __name__ == "__main__":
    sys.exit(main())
