"""Relay selection for a circuit path (docs/onion.md §3.4).

Weighted sampling without replacement: a relay's weight is ``bandwidth * reputation``
(both inputs, e.g. from the directory and the reputation core).  No relay twice, and at
most ``per_subnet`` relays per network prefix (IPv4 /16, IPv6 /32), so one operator's
block of addresses cannot hold the whole path.  The decision a reader asks about: sampling
is sequential (pick, then drop the picked relay and its prefix-mates once the prefix quota
is used, renormalise), which is what a path builder needs: later hops never depend on
relays that could not have been chosen.  ``rng(n) -> bytes`` is injected.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from qudag_core.errors import LocalProtocolError

__all__ = ["RelayInfo", "NotEnoughRelays", "subnet_of", "select_path"]


@dataclass(frozen=True, slots=True)
class RelayInfo:
    node_id: bytes
    address: str
    bandwidth: float
    reputation: float
    xwing_public_key: bytes = b""


class NotEnoughRelays(LocalProtocolError):
    """Fewer eligible relays than hops asked for."""


def subnet_of(address: str) -> str:
    ip = ipaddress.ip_address(address)
    prefix = 16 if ip.version == 4 else 32
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def _uniform(rng) -> float:
    return int.from_bytes(rng(7), "big") / float(1 << 56)


def select_path(
    relays: list[RelayInfo],
    hops: int,
    rng,
    *,
    exclude: frozenset[bytes] = frozenset(),
    per_subnet: int | None = 1,
    reserved: tuple[RelayInfo, ...] = (),
) -> list[RelayInfo]:
    """Pick ``hops`` distinct relays, weighted by bandwidth x reputation.

    ``reserved``: relays already fixed in the path (e.g. a chosen exit).  They are not
    picked again and their prefixes count toward ``per_subnet``, so a fixed exit cannot
    share its /16 with a hop chosen here."""
    used: dict[str, int] = {}
    taken = set(exclude)
    for r in reserved:
        taken.add(r.node_id)
        s = subnet_of(r.address)
        used[s] = used.get(s, 0) + 1
    pool = []
    seen: set[bytes] = set()
    for r in relays:
        w = max(0.0, float(r.bandwidth)) * max(0.0, float(r.reputation))
        if r.node_id in taken or r.node_id in seen or not w > 0.0:
            continue
        seen.add(r.node_id)
        pool.append((r, w, subnet_of(r.address)))
    out: list[RelayInfo] = []
    while len(out) < hops:
        cand = [(r, w, s) for (r, w, s) in pool if per_subnet is None or used.get(s, 0) < per_subnet]
        total = sum(w for _, w, _ in cand)
        if not cand or total <= 0.0:
            raise NotEnoughRelays(f"only {len(out)} of {hops} hops could be chosen")
        x = _uniform(rng) * total
        pick = cand[-1]
        for c in cand:
            x -= c[1]
            if x < 0.0:
                pick = c
                break
        out.append(pick[0])
        used[pick[2]] = used.get(pick[2], 0) + 1
        pool = [c for c in pool if c[0].node_id != pick[0].node_id]
    return out
