"""Helper process for the namespace tests: a relay node, or a peer behind a NAT.

Run as ``ip netns exec NS python tests/netns/nat_node.py ROLE --dir D ...`` with the repo
on PYTHONPATH.  Files in ``--dir`` (shared: namespaces isolate the network, not the file
system) carry the relay certificate, the listening peer's NodeId and the results (JSON).
Every wait is bounded by ``--lifetime``; the test kills the process on teardown anyway.
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import time

from qudag_core.identity import Identity, NodeCertificate
from qudag_io.link import listen
from qudag_io.traversal import RelayClientLink, RelayNode, accept_relayed, establish

CHUNK = 32_000


def _write(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


async def _wait_file(path: str, timeout: float) -> bytes:
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            with open(path, "rb") as f:
                return f.read()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{path} did not appear")


async def relay(args) -> None:
    ident = Identity.generate(os.urandom)
    node = RelayNode()
    cert = ident.issue_certificate([(args.host, args.port)], now=time.time())
    async with await listen("0.0.0.0", args.port, identity=ident, handler=node.handle, certificate=cert):
        _write(os.path.join(args.dir, "relay.cert"), cert.to_bytes())
        await asyncio.sleep(args.lifetime)


async def _relay_link(args, ident):
    cert = NodeCertificate.from_bytes(await _wait_file(os.path.join(args.dir, "relay.cert"), 20))
    host, port = cert.addresses[0]
    rl = await RelayClientLink.open(host, port, identity=ident, relay_certificate=cert, local_port=args.local_port)
    await rl.reserve()
    return rl


async def listener(args) -> None:
    ident = Identity.generate(os.urandom)
    rl = await _relay_link(args, ident)
    _write(os.path.join(args.dir, f"{args.name}.id"), bytes(ident.node_id))
    res = await accept_relayed(rl, identity=ident, dial_timeout=args.dial_timeout,
                               punch_attempts=args.attempts, setup_timeout=args.lifetime)
    conn = res.connection
    n = int(await conn.recv())
    h = hashlib.sha256()
    for _ in range(n):
        h.update(await conn.recv())
    await conn.send(h.digest())
    await asyncio.wait_for(conn.recv(), 10)  # "bye"
    _write(os.path.join(args.dir, f"{args.name}.json"), json.dumps({
        "path": res.path, "peer": conn.peer_node_id.hex(), "attempts": res.attempts}).encode())
    await conn.close()
    await rl.close()


async def dialer(args) -> None:
    ident = Identity.generate(os.urandom)
    target = await _wait_file(os.path.join(args.dir, f"{args.target}.id"), 30)
    t_link = time.time()
    rl = await _relay_link(args, ident)
    t0 = time.time()
    t_link = t0 - t_link
    res = await establish(target, identity=ident, relay=rl, dial_timeout=args.dial_timeout,
                          punch_attempts=args.attempts)
    t_est = time.time() - t0
    conn = res.connection
    payload = os.urandom(args.size)
    chunks = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)]
    await conn.send(str(len(chunks)).encode())
    for c in chunks:
        await conn.send(c)
    digest = await asyncio.wait_for(conn.recv(), 20)
    await conn.send(b"bye")
    _write(os.path.join(args.dir, f"{args.name}.json"), json.dumps({
        "path": res.path, "attempts": res.attempts, "rtt": res.rtt, "establish_seconds": t_est,
        "relay_link_seconds": t_link,
        "hash_ok": digest == hashlib.sha256(payload).digest(), "peer": conn.peer_node_id.hex(),
        "local": list(conn.local_address[:2]) if isinstance(conn.local_address, tuple) else None,
        "remote": list(conn.remote_address[:2]) if isinstance(conn.remote_address, tuple) else None,
    }).encode())
    await asyncio.sleep(0.2)
    await conn.close()
    await rl.close()


async def upnp_serve(args) -> None:
    """Listen for qudag links on --local-port, map it on the gateway with UPnP, serve one
    echo-hash client, then delete the mapping when ``<dir>/<name>.stop`` appears."""
    from qudag_io.upnp import map_port

    ident = Identity.generate(os.urandom)
    served = asyncio.Event()

    async def handler(conn):
        h = hashlib.sha256()
        n = int(await conn.recv())
        for _ in range(n):
            h.update(await conn.recv())
        await conn.send(h.digest())
        served.set()
        await asyncio.wait_for(conn.recv(), 10)

    async with await listen("0.0.0.0", args.local_port, identity=ident, handler=handler) as server:
        mapping = await map_port(internal_port=args.local_port, protocol="TCP", lease=120, timeout=3)
        try:
            cert = ident.issue_certificate([(mapping.external_ip, mapping.external_port)], now=time.time())
            _write(os.path.join(args.dir, "upnp.cert"), cert.to_bytes())
            _write(os.path.join(args.dir, f"{args.name}.json"), json.dumps({
                "external_ip": mapping.external_ip, "external_port": mapping.external_port}).encode())
            await _wait_file(os.path.join(args.dir, f"{args.name}.stop"), args.lifetime)
        finally:
            await mapping.close()
        _write(os.path.join(args.dir, f"{args.name}.deleted"), json.dumps({"served": served.is_set()}).encode())
        del server


async def dial_direct(args) -> None:
    """Connect to the peer named in ``<dir>/upnp.cert`` (its mapped public address) with
    ``establish`` (so the direct step is what wins), send a payload, check its hash."""
    cert = NodeCertificate.from_bytes(await _wait_file(os.path.join(args.dir, "upnp.cert"), 20))
    ident = Identity.generate(os.urandom)
    t0 = time.time()
    res = await establish(cert.node_id, identity=ident, peer_certificate=cert, direct_timeout=3)
    conn = res.connection
    payload = os.urandom(args.size)
    chunks = [payload[i:i + CHUNK] for i in range(0, len(payload), CHUNK)]
    await conn.send(str(len(chunks)).encode())
    for c in chunks:
        await conn.send(c)
    digest = await asyncio.wait_for(conn.recv(), 20)
    await conn.send(b"bye")
    _write(os.path.join(args.dir, f"{args.name}.json"), json.dumps({
        "path": res.path, "hash_ok": digest == hashlib.sha256(payload).digest(),
        "establish_seconds": time.time() - t0, "remote": list(conn.remote_address[:2])}).encode())
    await conn.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["relay", "listener", "dialer", "upnp-serve", "dial-direct"])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--host", default="203.0.113.1")
    ap.add_argument("--port", type=int, default=7000)
    ap.add_argument("--name", default="peer")
    ap.add_argument("--target", default="b")
    ap.add_argument("--local-port", type=int, default=0)
    ap.add_argument("--size", type=int, default=256_000)
    ap.add_argument("--attempts", type=int, default=2)
    ap.add_argument("--dial-timeout", type=float, default=2.0)
    ap.add_argument("--lifetime", type=float, default=60.0)
    args = ap.parse_args(argv)
    fn = {"relay": relay, "listener": listener, "dialer": dialer, "upnp-serve": upnp_serve,
          "dial-direct": dial_direct}[args.role]

    async def bounded():
        await asyncio.wait_for(fn(args), args.lifetime + 5)

    try:
        asyncio.run(bounded())
    except Exception as exc:  # reported to the test through the result file and exit code
        _write(os.path.join(args.dir, f"{args.name}.error"), repr(exc).encode())
        print(f"{args.role} failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
