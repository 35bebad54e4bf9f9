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
from qudag_core.nat.stun import binding_response
from qudag_io.traversal import RelayClientLink, RelayNode, accept_relayed, establish, open_udp_path

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


async def _udp(conn, args):
    """Try the UDP path (STUN at the relay host, port 3478); None when it cannot be validated."""
    if not args.udp_port:
        return None
    try:
        ep = await open_udp_path(conn, local_port=args.udp_port, stun_server=(args.host, 3478), timeout=3.0)
    except Exception as exc:  # noqa: BLE001 - any failure means "no UDP path", reported in the JSON
        import traceback; traceback.print_exc()
        return None
    ep.elapsed = ep.result.result().elapsed
    return ep


async def relay(args) -> None:
    ident = Identity.generate(os.urandom)
    node = RelayNode()
    cert = ident.issue_certificate([(args.host, args.port)], now=time.time())
    loop = asyncio.get_running_loop()

    class Stun(asyncio.DatagramProtocol):  # a plain RFC 8489 Binding server for UDP candidates
        def connection_made(self, transport):
            self.t = transport

        def datagram_received(self, data, addr):
            out = binding_response(data, addr[:2], (args.host, 3478))
            if out is not None:
                self.t.sendto(out[0], addr)

    # Bound to the public address itself so that answers leave from it (the relay host has
    # another address towards natB, which a wildcard socket would answer from).
    stun_t, _ = await loop.create_datagram_endpoint(Stun, local_addr=(args.host, 3478))
    try:
        async with await listen("0.0.0.0", args.port, identity=ident, handler=node.handle, certificate=cert):
            _write(os.path.join(args.dir, "relay.cert"), cert.to_bytes())
            await asyncio.sleep(args.lifetime)
    finally:
        stun_t.close()


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
    udp = await _udp(conn, args)
    n_udp = int((await asyncio.wait_for(conn.recv(), 10))[1:])
    got = sorted([await udp.recv(5) for _ in range(n_udp)]) if udp is not None else []
    await conn.send(hashlib.sha256(b"".join(got)).digest())
    await asyncio.wait_for(conn.recv(), 10)  # "bye"
    _write(os.path.join(args.dir, f"{args.name}.json"), json.dumps({
        "path": res.path, "peer": conn.peer_node_id.hex(), "attempts": res.attempts,
        "udp": udp is not None}).encode())
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
    udp = await _udp(conn, args)
    dgrams = [i.to_bytes(2, "big") + os.urandom(1000) for i in range(16)] if udp is not None else []
    for d in dgrams:
        udp.send(d)
    await conn.send(b"N%d" % len(dgrams))
    udp_hash_ok = await asyncio.wait_for(conn.recv(), 20) == hashlib.sha256(b"".join(sorted(dgrams))).digest()
    await conn.send(b"bye")
    _write(os.path.join(args.dir, f"{args.name}.json"), json.dumps({
        "udp": udp is not None, "udp_hash_ok": udp_hash_ok and udp is not None,
        "udp_seconds": getattr(udp, "elapsed", None),
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
    ap.add_argument("--udp-port", type=int, default=0)
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
        import traceback
        traceback.print_exc()
        print(f"{args.role} failed: {exc!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
