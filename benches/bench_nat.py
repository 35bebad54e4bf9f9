"""NAT traversal timings in the namespace lab (tests/netns/netns_lab.py): time until a
peer behind NAT A holds an authenticated post-quantum link to a peer behind NAT B.

Measured inside the dialer process (``establish`` start to return), for a punched direct
link through endpoint-independent, address-dependent and port-restricted (address-and-
port-dependent filtering) NATs and for the relay path (one side behind a symmetric NAT,
the other address-dependent or port-restricted).
The baseline measured in the same session is the dialer's own direct link to the public
relay node across its NAT (TCP connect + PQ handshake with a known certificate + one
RESERVE round trip); the ratio is establish / baseline.

Round trips on the punched path (counted from the protocols, docs/nat.md):
  relay circuit CONNECT/INCOMING/ACCEPT/CONNECTED      2 RTT via relay
  end-to-end handshake over the circuit (cert fetched)  2 RTT via relay
  DCUtR CONNECT/CONNECT, then SYNC                      1.5 RTT via relay
  TCP simultaneous open                                  1 RTT direct
  PQ handshake on the punched socket (cert known)        1 RTT direct
The relay path stops after the first two lines plus the failed punch attempts
(``attempts`` x dial timeout, 2 x 2 s here), which dominate its time.

Needs root and network namespaces; skips otherwise.  Run:
    PYTHONPATH=. python -m pytest benches/bench_nat.py -q --benchmark-columns=min,max
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "netns"))
from netns_lab import LabUnavailable, NatMatrixLab, run_pair, start_matrix  # noqa: E402

CASES = [("endpoint_independent", "endpoint_independent"), ("address_dependent", "address_dependent"),
         ("port_restricted", "port_restricted"), ("address_dependent", "symmetric"),
         ("port_restricted", "symmetric")]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    try:
        NatMatrixLab.probe()
    except LabUnavailable as exc:
        pytest.skip(f"network namespaces unavailable: {exc}")
    lab = start_matrix(str(tmp_path_factory.mktemp("natbench")))
    try:
        yield lab
    finally:
        lab.close()


@pytest.mark.parametrize("kind_a,kind_b", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_time_to_link(benchmark, lab, kind_a, kind_b):
    idx = 50 + CASES.index((kind_a, kind_b))
    results = []

    def once():
        results.append(run_pair(lab, kind_a, kind_b, f"bench{idx}-{len(results)}", idx * 3 + len(results)))

    benchmark.pedantic(once, rounds=1, iterations=1)
    ra, _ = results[-1]
    assert ra["hash_ok"]
    benchmark.extra_info.update({
        "path": ra["path"], "attempts": ra["attempts"], "dcutr_rtt_s": ra["rtt"],
        "establish_s": ra["establish_seconds"], "baseline_relay_link_s": ra["relay_link_seconds"],
        "ratio_establish_over_baseline": ra["establish_seconds"] / ra["relay_link_seconds"],
        "udp_validated": ra["udp"], "udp_validate_s": ra["udp_seconds"],
    })
    print(f"\n{kind_a}-{kind_b}: path={ra['path']} establish={ra['establish_seconds'] * 1000:.1f} ms "
          f"baseline(direct PQ link to relay)={ra['relay_link_seconds'] * 1000:.1f} ms "
          f"ratio={ra['establish_seconds'] / ra['relay_link_seconds']:.2f} attempts={ra['attempts']} "
          f"udp={ra['udp']} udp_validate={(ra['udp_seconds'] or 0) * 1000:.1f} ms")
