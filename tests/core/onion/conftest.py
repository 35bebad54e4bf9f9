"""Onion test helpers (a conftest, so that no package layout is assumed):

* ``Net``: a client circuit and n relay cores wired by in-memory links; ``pump`` moves
  cells until everything is quiet (reads like the protocol, after h11 ``ConnectionPair``).
* ``make_net`` fixture returns the class; ``SeedRng`` is a deterministic ``rng(n)``
  usable inside Hypothesis tests (no function-scoped fixture).
"""
from __future__ import annotations

import hashlib

import pytest
from testutil import DeterministicRng

from qudag_core.crypto import XWingPrivateKey, blake3_hash
from qudag_core.onion.circuit import ClientCircuit, HopSpec
from qudag_core.onion.events import LinkNeeded
from qudag_core.onion.relay import OnionRelay


class Net:
    def __init__(self, n, rng, *, pure=False, relay_max_hops=8, client_max_hops=8, now=0.0, circ_id=7, **kw):
        self.rng = rng
        self.keys = [XWingPrivateKey(rng(32)) for _ in range(n)]
        self.ids = [blake3_hash(k.public_key.raw, 20) for k in self.keys]
        self.relays = [
            OnionRelay(self.ids[i], self.keys[i], rng=rng, max_hops=relay_max_hops, pure_crypto=pure) for i in range(n)
        ]
        self.by_id = {nid: i for i, nid in enumerate(self.ids)}
        self.client = ClientCircuit(circ_id, rng=rng, now=now, max_hops=client_max_hops, pure_crypto=pure, **kw)
        self.ends: dict = {(0, "client"): "client"}
        self.client_events: list = []
        self.relay_events: list = [[] for _ in range(n)]
        self.tamper = None  # callable(src, dst, cell) -> cell
        self.moved = 0

    def path(self, k=None):
        k = len(self.relays) if k is None else k
        return [HopSpec(self.ids[i], self.keys[i].public_key.raw) for i in range(k)]

    def _deliver_relay(self, i, link, cell, now):
        evs = self.relays[i].receive_cell(link, cell, now)
        for e in evs:
            self.relay_events[i].append(e)
            if isinstance(e, LinkNeeded):
                j = self.by_id[e.node_id]
                name = f"{min(i, j)}-{max(i, j)}"
                self.ends[(i, name)] = j
                self.ends[(j, name)] = i
                self.relays[i].link_ready(e.node_id, name, now)

    def pump(self, now=0.0, limit=10_000):
        for _ in range(limit):
            moved = False
            for cell in self.client.cells_to_send():
                moved = True
                self.moved += 1
                if self.tamper:
                    cell = self.tamper("client", 0, cell)
                self._deliver_relay(0, "client", cell, now)
            for i, r in enumerate(self.relays):
                for link, cell in r.cells_to_send():
                    moved = True
                    self.moved += 1
                    dst = self.ends[(i, link)]
                    if self.tamper:
                        cell = self.tamper(i, dst, cell)
                    if dst == "client":
                        self.client_events += self.client.receive_cell(cell, now)
                    else:
                        self._deliver_relay(dst, link, cell, now)
            if not moved:
                return
        raise AssertionError("network did not settle")

    def circuits(self):
        return [r.circuit_count for r in self.relays]


def SeedRng(seed: bytes = b"onion") -> DeterministicRng:
    """The shared deterministic rng, seeded for the onion tests."""
    return DeterministicRng(seed)


@pytest.fixture(scope="session")
def make_net():
    return Net


@pytest.fixture(scope="session")
def seed_rng():
    return SeedRng
