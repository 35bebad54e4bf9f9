"""Measure a lab NAT model's RFC 4787 behaviour from both sides of it (namespace tests only).

Run as ``ip netns exec NS python tests/netns/nat_probe.py ROLE --out F ...``; every loop is
bounded by ``--seconds`` and the result is a JSON file.

* ``inside --port P --to X:p``: from local UDP port P, send a datagram to X:p every 50 ms;
  record the tags of every datagram that comes back (``same``, ``other_port``,
  ``other_addr``).
* ``outside --primary X:p --other-port X:q --other-addr Y:p``: wait for the inside's
  datagram on X:p, record its (mapped) source, then send tagged datagrams to that source
  from X:p (a reply from the exact endpoint), X:q (same address, other port) and Y:p
  (other address).  The filtering behaviour is then: all three arrive = endpoint
  independent; ``same`` + ``other_port`` = address dependent; only ``same`` = address and
  port dependent.
* ``discover --server H:p --port P``: our RFC 5780 discovery (``discover_nat_behaviour``)
  against an RFC 5780 server (coturn with two addresses) from local port P.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import sys
import time


def _addr(s: str) -> tuple:
    host, port = s.rsplit(":", 1)
    return host, int(port)


def _write(path: str, obj) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(obj, f)
    os.replace(path + ".tmp", path)


def inside(args) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", args.port))
    got: set = set()
    end = time.monotonic() + args.seconds
    next_send = 0.0
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_send:
            s.sendto(b"hello", _addr(args.to))
            next_send = now + 0.05
        r, _, _ = select.select([s], [], [], 0.05)
        if r:
            data, _src = s.recvfrom(2048)
            got.add(data.decode(errors="replace"))
    s.close()
    _write(args.out, {"received": sorted(got)})


def outside(args) -> None:
    socks = {}
    for tag, a in (("same", args.primary), ("other_port", args.other_port), ("other_addr", args.other_addr)):
        socks[tag] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        socks[tag].bind(_addr(a))
    mapped = None
    end = time.monotonic() + args.seconds
    while mapped is None and time.monotonic() < end:
        r, _, _ = select.select([socks["same"]], [], [], 0.1)
        if r:
            _, mapped = socks["same"].recvfrom(2048)
    if mapped is not None:
        stop = min(end, time.monotonic() + 1.0)
        while time.monotonic() < stop:
            for tag, s in socks.items():
                s.sendto(tag.encode(), mapped)
            time.sleep(0.05)
    for s in socks.values():
        s.close()
    _write(args.out, {"mapped": list(mapped) if mapped else None})


def discover(args) -> None:
    from qudag_io.stun import discover_nat_behaviour

    res = asyncio.run(discover_nat_behaviour(_addr(args.server), local_addr=("0.0.0.0", args.port),
                                             timeout=args.seconds, rto=0.1, rc=5, filtering_rc=3))
    _write(args.out, {"mapping": res.mapping.name, "filtering": res.filtering.name,
                      "mapped_address": list(res.mapped_address[:2]) if res.mapped_address else None,
                      "note": res.note})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["inside", "outside", "discover"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--to")
    ap.add_argument("--primary")
    ap.add_argument("--other-port")
    ap.add_argument("--other-addr")
    ap.add_argument("--server")
    ap.add_argument("--seconds", type=float, default=4.0)
    args = ap.parse_args(argv)
    {"inside": inside, "outside": outside, "discover": discover}[args.role](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
