"""The loopback address plan for many qudag nodes on one machine (``qudag testnet``,
``qudag_io.dark.start_loopback_network``, tests and benchmarks).

One scheme, shared, so every local network exercises the same address-keyed rules as the
internet does: the DHT's IP-diversity limits (2 nodes per /24 per bucket, 10 per table;
docs/dht.md) and the onion path rule (one relay per IPv4 /16; docs/onion.md §3.4).  With
every node on 127.0.0.1 both would have to be switched off or would cap what a test sees.
The decision a reader asks about: **a /16 per node, not a /24** -- the first 254 nodes
each get their own /16, so circuits are built with the production path rule on.

Linux answers on all of 127.0.0.0/8 without configuration; other systems bind only
127.0.0.1 unless aliases are added (``can_bind`` tells).  BEP 42 exempts 127/8 from its
node-id check (``qudag_core.krpc.bep42.is_exempt``), so derived DHT ids stay valid.
"""
from __future__ import annotations

import socket
from typing import Iterable

__all__ = ["TESTNET_MAX_NODES", "can_bind", "testnet_client_host", "testnet_host"]

TESTNET_MAX_NODES = 254 * 256
"""Nodes :func:`testnet_host` can give distinct /24s (127.1.0.1 .. 127.254.255.1)."""


def testnet_host(i: int) -> str:
    """The loopback address node ``i`` binds every listener to (link, DHT, onion relay,
    metrics/status) and dials from.

    Every node gets its own /24 and, for the first 254 nodes, its own /16: node ``i`` is
    ``127.(i+1).0.1``; beyond 254 nodes the third octet counts up,
    ``127.(1 + i % 254).(i // 254).1``."""
    if not 0 <= i < TESTNET_MAX_NODES:
        raise ValueError(f"testnet node index {i} is out of range 0..{TESTNET_MAX_NODES - 1}")
    return f"127.{1 + i % 254}.{i // 254}.1"


def testnet_client_host(k: int) -> str:
    """The loopback address of a network's ``k``-th short-lived client (DHT helper nodes,
    an onion client): 127.255.k.1, a /16 no node uses, so a client never shares a node's
    per-IP rate limit or diversity group, as a user elsewhere on the internet would not."""
    return f"127.255.{k % 256}.1"


def can_bind(hosts: Iterable[str]) -> bool:
    """Whether this system accepts binds to every one of ``hosts`` (IPv4)."""
    for h in hosts:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind((h, 0))
        except OSError:
            return False
    return True
