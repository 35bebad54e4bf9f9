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
import json
import os

import pytest

from netns_lab import LabUnavailable, NatMatrixLab, wait_for

KINDS = ["full_cone", "port_restricted", "symmetric"]
pytestmark = pytest.mark.netns

PAIRS = list(itertools.combinations_with_replacement(KINDS, 2))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        NatMatrixLab.probe()
    except LabUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    lab = NatMatrixLab()
    workdir = str(tmp_path_factory.mktemp("natlab"))
    try:
        lab.build()
        relay = lab.node(lab.relay_ns, "relay", workdir, "--lifetime", "170")
        assert wait_for(lambda: os.path.exists(os.path.join(workdir, "relay.cert")), 20), "relay did not start"
        lab.workdir = workdir
        lab.relay_proc = relay
        yield lab
    finally:
        lab.close()


def _result(path):
    with open(path) as f:
        return json.load(f)


@pytest.mark.parametrize("kind_a,kind_b", PAIRS, ids=[f"{a}-{b}" for a, b in PAIRS])
def test_nat_pair_connects(lab, kind_a, kind_b):
    idx = PAIRS.index((kind_a, kind_b))
    lab.set_nat("a", kind_a)
    lab.set_nat("b", kind_b)
    w = lab.workdir
    a_name, b_name = f"a{idx}", f"b{idx}"
    # Fresh local ports per pair, so no conntrack entry of an earlier pair interferes.
    b = lab.node(lab.peer_ns["b"], "listener", w, "--local-port", str(41000 + idx), "--lifetime", "40",
                 name=b_name)
    a = lab.node(lab.peer_ns["a"], "dialer", w, "--local-port", str(42000 + idx), "--target", b_name,
                 "--lifetime", "40", name=a_name)
    a_json, b_json = os.path.join(w, f"{a_name}.json"), os.path.join(w, f"{b_name}.json")
    try:
        done = wait_for(lambda: os.path.exists(a_json) and os.path.exists(b_json)
                        or a.poll() not in (None, 0) or b.poll() not in (None, 0), 45)
        logs = {n: open(os.path.join(w, f"{n}.log")).read()[-2000:] for n in (a_name, b_name)}
        assert done and os.path.exists(a_json) and os.path.exists(b_json), f"peers did not finish: {logs}"
        ra, rb = _result(a_json), _result(b_json)
    finally:
        lab.stop(a)
        lab.stop(b)
    expected = "relay" if "symmetric" in (kind_a, kind_b) else "punched"
    assert ra["path"] == rb["path"] == expected, (ra, rb)
    assert ra["hash_ok"] is True
    assert ra["peer"] != rb["peer"]
    if expected == "punched":
        # The direct link runs between the two NATs' public addresses.
        assert ra["remote"] == [lab.public_ip["b"], 41000 + idx]
        assert ra["local"] == [lab.inner_ip["a"], 42000 + idx]
