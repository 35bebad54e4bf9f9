"""The NAT matrix in network namespaces the test builds itself (docs/nat.md §NAT matrix).

First each NAT model's RFC 4787 behaviour is measured, not assumed: our RFC 5780
discovery against coturn (two addresses on the relay host) classifies its mapping and
filtering, and a direct probe shows which answers to one mapping get in (the exact
endpoint, the same address from another port, another address).

Then, for every pair of modelled NATs (endpoint-independent, address-dependent,
port-restricted, symmetric), a peer behind
NAT A establishes a link to a peer behind NAT B, knowing only B's NodeId and a public relay
both hold authenticated links to.  Pairs of non-symmetric NATs must end on a direct TCP
link punched by DCUtR simultaneous open; pairs with a symmetric NAT on the relay.  Either
way both peers complete the post-quantum handshake end to end and the payload's SHA-256
checks on the other side.  Skips (with the reason) where namespaces cannot be made.
"""
from __future__ import annotations

import itertools
import pytest

from netns_lab import (LabUnavailable, NatMatrixLab, discover_behaviour, probe_filtering, run_pair,
                       start_coturn, start_matrix)

KINDS = ["endpoint_independent", "address_dependent", "port_restricted", "symmetric"]
pytestmark = pytest.mark.netns

#: kind -> (RFC 5780 mapping, RFC 5780 filtering, answers admitted by the direct probe)
EXPECTED = {
    "endpoint_independent": ("ENDPOINT_INDEPENDENT", "ENDPOINT_INDEPENDENT", {"same", "other_port", "other_addr"}),
    "address_dependent": ("ENDPOINT_INDEPENDENT", "ADDRESS_DEPENDENT", {"same", "other_port"}),
    "port_restricted": ("ENDPOINT_INDEPENDENT", "ADDRESS_AND_PORT_DEPENDENT", {"same"}),
    "symmetric": ("ADDRESS_AND_PORT_DEPENDENT", "ADDRESS_AND_PORT_DEPENDENT", {"same"}),
}

PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        NatMatrixLab.probe()
    except LabUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    lab = start_matrix(str(tmp_path_factory.mktemp("natlab")))
    try:
        lab.coturn_ok = start_coturn(lab)
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize("kind", KINDS)
def test_nat_model_filtering_probe(lab, kind):
    port = 45000 + KINDS.index(kind)
    mapped, received = probe_filtering(lab, kind, port)
    assert mapped is not None, "the inside's datagram never reached the public host"
    assert mapped[0] == lab.public_ip["a"]
    if kind == "symmetric":
        assert mapped[1] != port  # --random-fully: the mapping does not keep the port
    else:
        assert mapped[1] == port  # endpoint-independent mapping that keeps the port
    assert received == EXPECTED[kind][2], received
    if kind == "address_dependent":
        # The filter is per mapping (RFC 4787 §5), not per host: a second mapping that has
        # only sent to .5 does not admit .1, which the first mapping contacted.
        mapped2, received2 = probe_filtering(lab, kind, port + 10, primary="203.0.113.5",
                                             other="203.0.113.1", rport=7111, install=False)
        assert mapped2 == [lab.public_ip["a"], port + 10]
        assert received2 == {"same", "other_port"}, received2


@pytest.mark.parametrize("kind", KINDS)
def test_nat_model_rfc5780_discovery(lab, kind):
    if not getattr(lab, "coturn_ok", None):
        pytest.skip("coturn (turnserver) not available in the lab")
    res = discover_behaviour(lab, kind, 45100 + KINDS.index(kind))
    assert (res["mapping"], res["filtering"]) == EXPECTED[kind][:2], res
    assert res["mapped_address"][0] == lab.public_ip["a"]


@pytest.mark.parametrize("kind_a,kind_b", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_nat_pair_connects(lab, kind_a, kind_b):
    idx = PAIRS.index((kind_a, kind_b))
    # Fresh local ports per pair, so no conntrack entry of an earlier pair interferes.
    ra, rb = run_pair(lab, kind_a, kind_b, str(idx), idx)
    expected = "relay" if "symmetric" in (kind_a, kind_b) else "punched"
    assert ra["path"] == rb["path"] == expected, (ra, rb)
    assert ra["hash_ok"] is True
    assert ra["peer"] != rb["peer"]
    # UDP: validated unless one side's mapping changes per destination (symmetric) while
    # the other admits only the exact endpoint it sent to (port-restricted, symmetric).
    # Endpoint-independent and address-dependent filtering let in the symmetric side's
    # fresh port (the address-dependent side has already probed that address), which
    # then becomes a peer-reflexive candidate.
    udp_expected = {kind_a, kind_b} not in ({"port_restricted", "symmetric"}, {"symmetric"})
    assert ra["udp"] is rb["udp"] is udp_expected, (ra, rb)
    if udp_expected:
        assert ra["udp_hash_ok"] is True
    if expected == "punched":
        # The direct link runs between the two NATs' public addresses.
        assert ra["remote"] == [lab.public_ip["b"], 41000 + idx]
        assert ra["local"] == [lab.inner_ip["a"], 42000 + idx]
