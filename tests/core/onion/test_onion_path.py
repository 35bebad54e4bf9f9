"""Relay selection (docs/onion.md §3.4)."""
from __future__ import annotations

import collections

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.onion.path import NotEnoughRelays, RelayInfo, select_path, subnet_of


def relays(spec):
    return [RelayInfo(bytes([i]) * 20, addr, bw, rep) for i, (addr, bw, rep) in enumerate(spec)]


def test_subnets():
    assert subnet_of("10.1.2.3") == "10.1.0.0/16"
    assert subnet_of("2001:db8:1::5") == "2001:db8::/32"


def test_one_per_slash16_and_no_repeats(rng):
    rs = relays([("10.0.0.1", 100, 1), ("10.0.9.9", 100, 1), ("11.0.0.1", 1, 1), ("12.0.0.1", 1, 1)])
    for _ in range(50):
        p = select_path(rs, 3, rng)
        assert len({r.node_id for r in p}) == 3
        assert len({subnet_of(r.address) for r in p}) == 3
    with pytest.raises(NotEnoughRelays):
        select_path(rs, 4, rng)
    assert len(select_path(rs, 4, rng, per_subnet=None)) == 4


def test_a_reserved_exit_counts_toward_the_subnet_rule(rng):
    """A fixed exit (``build_circuit(exit=...)``) shares its /16 with no hop chosen for
    it, and is not chosen again; without ``reserved`` a mate of its /16 could be."""
    rs = relays([("10.0.0.1", 1, 1), ("10.0.5.5", 1000, 1), ("11.0.0.1", 1, 1), ("12.0.0.1", 1, 1)])
    exit_ = rs[0]
    for _ in range(50):
        p = select_path(rs, 2, rng, reserved=(exit_,))
        assert exit_ not in p
        assert len({subnet_of(r.address) for r in p + [exit_]}) == 3
    with pytest.raises(NotEnoughRelays):  # only two /16s left besides the exit's
        select_path(rs, 3, rng, reserved=(exit_,))
    chosen = {r.node_id for _ in range(50) for r in select_path(rs, 2, rng, exclude=frozenset({exit_.node_id}))}
    assert rs[1].node_id in chosen  # the exit's /16 mate, heavy, is picked when not reserved


def test_zero_weight_and_excluded_never_chosen(rng):
    rs = relays([("1.1.0.1", 0, 1), ("2.2.0.1", 5, 0), ("3.3.0.1", 5, 1), ("4.4.0.1", 5, 1)])
    for _ in range(20):
        p = select_path(rs, 1, rng, exclude=frozenset({rs[3].node_id}))
        assert p == [rs[2]]


def test_weights_respected(rng):
    """First-hop frequencies follow bandwidth x reputation (chi-square, 3 dof, p ~ 0.001)."""
    rs = relays([("1.0.0.1", 10, 1.0), ("2.0.0.1", 20, 1.0), ("3.0.0.1", 40, 0.5), ("4.0.0.1", 50, 1.0)])
    n = 4000
    counts = collections.Counter(select_path(rs, 1, rng)[0].node_id for _ in range(n))
    weights = [10, 20, 20, 50]
    total = sum(weights)
    chi2 = sum((counts[r.node_id] - n * w / total) ** 2 / (n * w / total) for r, w in zip(rs, weights))
    assert chi2 < 16.27


@settings(max_examples=50)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255), st.floats(0, 1e6), st.floats(0, 1)), max_size=20),
       st.integers(1, 8))
def test_any_directory_gives_valid_path_or_declared_error(seed_rng, spec, hops):
    rs = relays([(f"{a}.{b}.0.1", bw, rep) for a, b, bw, rep in spec])
    try:
        p = select_path(rs, hops, seed_rng(b"path"))
    except NotEnoughRelays:
        return
    assert len(p) == hops
    assert len({r.node_id for r in p}) == hops
    assert len({subnet_of(r.address) for r in p}) == hops
    assert all(r.bandwidth * r.reputation > 0 for r in p)
