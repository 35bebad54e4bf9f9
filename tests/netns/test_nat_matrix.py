"""The NAT matrix in network namespaces the test builds itself (docs/nat.md §NAT matrix).

For every pair of modelled NATs (full cone, port-restricted cone, symmetric), a peer behind
NAT A establishes a link to a peer behind NAT B, knowing only B's NodeId and a public relay
both hold authenticated links to.  Pairs of non-symmetric NATs must end on a direct TCP
link punched by DCUtR simultaneous open; pairs with a symmetric NAT on the relay.  Either
way both peers complete the post-quantum handshake end to end and the payload's SHA-256
checks on the other side.  Skips (with the reason) where namespaces cannot be made.
"""
from __future__ import annotations

import itertools
import pytest

from netns_lab import LabUnavailable, NatMatrixLab, run_pair, start_matrix

KINDS = ["full_cone", "port_restricted", "symmetric"]
pytestmark = pytest.mark.netns

PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        NatMatrixLab.probe()
    except LabUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    lab = start_matrix(str(tmp_path_factory.mktemp("natlab")))
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize("kind_a,kind_b", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_nat_pair_connects(lab, kind_a, kind_b):
    idx = PAIRS.index((kind_a, kind_b))
    # Fresh local ports per pair, so no conntrack entry of an earlier pair interferes.
    ra, rb = run_pair(lab, kind_a, kind_b, str(idx), idx)
    expected = "relay" if "symmetric" in (kind_a, kind_b) else "punched"
    assert ra["path"] == rb["path"] == expected, (ra, rb)
    assert ra["hash_ok"] is True
    assert ra["peer"] != rb["peer"]
    # UDP: punched and validated unless the far side can only be reached from the
    # candidate it announced (port-restricted) while the near side's mapping changes per
    # destination (symmetric), or both are symmetric.
    udp_expected = {kind_a, kind_b} not in ({"port_restricted", "symmetric"}, {"symmetric"})
    assert ra["udp"] is rb["udp"] is udp_expected, (ra, rb)
    if udp_expected:
        assert ra["udp_hash_ok"] is True
    if expected == "punched":
        # The direct link runs between the two NATs' public addresses.
        assert ra["remote"] == [lab.public_ip["b"], 41000 + idx]
        assert ra["local"] == [lab.inner_ip["a"], 42000 + idx]
