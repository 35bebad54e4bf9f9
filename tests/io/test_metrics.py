"""NodeMetrics: every recording method, enum-bounded labels, constant series count,
per-node registries, and ``promtool check metrics`` on the exposition."""
from __future__ import annotations

import ipaddress
import math
import os
import pathlib
import random
import re
import shutil
import subprocess

import prometheus_client
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from qudag_io.metrics import (CellDropReason, CircuitRole, DhtOp, DhtOutcome, Direction, HandshakeFailure, Limiter,
                              NodeMetrics, Transport)

PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)


def sample_lines(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if line and not line.startswith("#")]


def all_label_values(m: NodeMetrics) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for sample in family.samples:
            for k, v in sample.labels.items():
                seen.setdefault(k, set()).add(v)
    return seen


def value(m: NodeMetrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    assert v is not None, f"no sample {name}{labels}"
    return v


def promtool_check(text: bytes) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; CI installs it)")
    return subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, timeout=30)


# -- each recording method moves exactly its series ------------------------------------


def test_connections_counted_by_direction_with_active_gauge():
    m = NodeMetrics()
    m.connection_opened(Direction.INBOUND)
    m.connection_opened("outbound")
    m.connection_opened("outbound")
    m.connection_closed("outbound")
    assert value(m, "qudag_connections_opened_total", direction="inbound") == 1
    assert value(m, "qudag_connections_opened_total", direction="outbound") == 2
    assert value(m, "qudag_connections_closed_total", direction="outbound") == 1
    assert value(m, "qudag_connections_active", direction="outbound") == 1
    assert value(m, "qudag_connections_active", direction="inbound") == 1


def test_handshakes_ok_and_failed_by_reason():
    m = NodeMetrics()
    m.handshake_ok()
    m.handshake_ok()
    for reason in ("timeout", "bad_message", "auth_failed", "version", "cookie", "closed", "other"):
        m.handshake_failed(reason)
    m.handshake_failed(HandshakeFailure.TIMEOUT)
    m.handshake_failed("mixer_full")  # a reason of another metric: not a handshake reason
    assert value(m, "qudag_handshakes_ok_total") == 2
    assert value(m, "qudag_handshakes_failed_total", reason="timeout") == 2
    assert value(m, "qudag_handshakes_failed_total", reason="other") == 2
    assert m.registry.get_sample_value("qudag_handshakes_failed_total", {"reason": "mixer_full"}) is None
    for reason in ("bad_message", "auth_failed", "version", "cookie", "closed"):
        assert value(m, "qudag_handshakes_failed_total", reason=reason) == 1


def test_unknown_and_peerish_reasons_are_other():
    m = NodeMetrics()
    for bad in ("10.0.0.1", "peer 9f86d081884c7d65", "Timeout", "timeout ", "qd1abcdefghijk.dark", "", None, 7, b"timeout"):
        m.handshake_failed(bad)  # type: ignore[arg-type]
    assert value(m, "qudag_handshakes_failed_total", reason="other") == 9
    assert value(m, "qudag_handshakes_failed_total", reason="timeout") == 0


def test_bytes_by_transport_and_counts_must_be_non_negative_ints():
    m = NodeMetrics()
    m.bytes_received(100)
    m.bytes_received(5, Transport.UDP)
    m.bytes_sent(7, "udp")
    m.bytes_sent(1, "sctp")
    assert value(m, "qudag_bytes_received_total", transport="tcp") == 100
    assert value(m, "qudag_bytes_received_total", transport="udp") == 5
    assert value(m, "qudag_bytes_sent_total", transport="udp") == 7
    assert value(m, "qudag_bytes_sent_total", transport="other") == 1
    for bad in (-1, 1.5, True, "3", None):
        with pytest.raises(ValueError):
            m.bytes_sent(bad)  # type: ignore[arg-type]
    assert value(m, "qudag_bytes_sent_total", transport="tcp") == 0


def test_dht_ops_counted_by_op_and_outcome_latency_for_ok_only():
    m = NodeMetrics()
    m.dht_op(DhtOp.FIND_NODE, DhtOutcome.OK, 0.02)
    m.dht_op("find_node", "ok", 0.2)
    m.dht_op("find_node", "timeout", 5.0)
    m.dht_op("qd_put", "error", 0.1)
    m.dht_op("bogus", "weird", 0.1)
    assert value(m, "qudag_dht_operations_total", op="find_node", outcome="ok") == 2
    assert value(m, "qudag_dht_operations_total", op="find_node", outcome="timeout") == 1
    assert value(m, "qudag_dht_operations_total", op="qd_put", outcome="error") == 1
    assert value(m, "qudag_dht_operations_total", op="other", outcome="other") == 1
    assert value(m, "qudag_dht_operation_duration_seconds_count", op="find_node") == 2
    assert value(m, "qudag_dht_operation_duration_seconds_sum", op="find_node") == pytest.approx(0.22)
    assert value(m, "qudag_dht_operation_duration_seconds_bucket", op="find_node", le="0.025") == 1
    assert value(m, "qudag_dht_operation_duration_seconds_bucket", op="find_node", le="0.25") == 2
    assert value(m, "qudag_dht_operation_duration_seconds_count", op="qd_put") == 0


def test_bad_latencies_are_counted_but_not_observed():
    m = NodeMetrics()
    for s in (math.nan, math.inf, -1.0, None, "0.1", True):
        m.dht_op("ping", "ok", s)  # type: ignore[arg-type]
    assert value(m, "qudag_dht_operations_total", op="ping", outcome="ok") == 6
    assert value(m, "qudag_dht_operation_duration_seconds_count", op="ping") == 0
    assert value(m, "qudag_dht_operation_duration_seconds_sum", op="ping") == 0


def test_circuits_cells_resolver_and_ratelimit():
    m = NodeMetrics()
    m.circuit_built()
    m.circuit_built()
    m.circuit_closed()
    m.circuit_failed()
    m.circuit_built(CircuitRole.RELAY, 3)
    m.circuit_failed("relay", 2)
    m.set_circuits_active(7, "relay")
    m.circuit_built("10.0.0.9")  # not a role: "other"
    m.cells_relayed()
    m.cells_relayed(9)
    m.resolver_cache_hit()
    m.resolver_cache_hit()
    m.resolver_cache_miss()
    m.ratelimit_drop(Limiter.DHT_QUERIES)
    m.ratelimit_drop("cells", 4)
    m.ratelimit_drop("192.168.1.1")
    assert value(m, "qudag_circuits_built_total", role="client") == 2
    assert value(m, "qudag_circuits_active", role="client") == 1
    assert value(m, "qudag_circuits_failed_total", role="client") == 1
    assert value(m, "qudag_circuits_built_total", role="relay") == 3
    assert value(m, "qudag_circuits_failed_total", role="relay") == 2
    assert value(m, "qudag_circuits_active", role="relay") == 7
    assert value(m, "qudag_circuits_built_total", role="other") == 1
    with pytest.raises(ValueError):
        m.set_circuits_active(-1, "relay")
    assert value(m, "qudag_cells_relayed_total") == 10
    assert value(m, "qudag_resolver_cache_hits_total") == 2
    assert value(m, "qudag_resolver_cache_misses_total") == 1
    assert value(m, "qudag_ratelimit_drops_total", limiter="dht_queries") == 1
    assert value(m, "qudag_ratelimit_drops_total", limiter="cells") == 4
    assert value(m, "qudag_ratelimit_drops_total", limiter="other") == 1


def test_cells_dropped_by_reason():
    m = NodeMetrics()
    m.cells_dropped(CellDropReason.MIXER_FULL)
    m.cells_dropped("mixer_full", 31)
    m.cells_dropped("link_closed", 5)
    m.cells_dropped("timeout")  # a handshake reason, not a cell-drop one
    m.cells_dropped("10.0.0.7", 2)
    assert value(m, "qudag_cells_dropped_total", reason="mixer_full") == 32
    assert value(m, "qudag_cells_dropped_total", reason="link_closed") == 5
    assert value(m, "qudag_cells_dropped_total", reason="other") == 3
    assert m.registry.get_sample_value("qudag_cells_dropped_total", {"reason": "timeout"}) is None
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError):
            m.cells_dropped("mixer_full", bad)  # type: ignore[arg-type]
    assert value(m, "qudag_cells_dropped_total", reason="mixer_full") == 32


def test_every_relay_discard_reason_is_its_own_label():
    """The relay core's reasons reach the exposition as themselves, never as ``other``."""
    from qudag_core.onion.relay import DISCARD_REASONS

    m = NodeMetrics()
    for k, reason in enumerate(DISCARD_REASONS, start=1):
        m.cells_dropped(reason, k)
    for k, reason in enumerate(DISCARD_REASONS, start=1):
        assert value(m, "qudag_cells_dropped_total", reason=reason) == k
    assert value(m, "qudag_cells_dropped_total", reason="other") == 0
    assert set(DISCARD_REASONS) | {"mixer_full", "link_closed", "other"} == {r.value for r in CellDropReason}


def test_dht_routing_table_gauge():
    m = NodeMetrics()
    assert value(m, "qudag_dht_routing_table_nodes") == 0
    m.set_dht_routing_table_nodes(160)
    m.set_dht_routing_table_nodes(42)  # a gauge: set, not added
    assert value(m, "qudag_dht_routing_table_nodes") == 42
    for bad in (-1, 2.0, True):
        with pytest.raises(ValueError):
            m.set_dht_routing_table_nodes(bad)  # type: ignore[arg-type]
    assert value(m, "qudag_dht_routing_table_nodes") == 42


# -- bounded series ------------------------------------------------------------------------


def simulate_peers(m: NodeMetrics, n_peers: int, seed: int) -> list[str]:
    """n_peers' worth of node activity, with peer-identifying strings passed as labels."""
    rnd = random.Random(seed)
    secrets: list[str] = []
    ops = [o.value for o in DhtOp if o is not DhtOp.OTHER]
    for i in range(n_peers):
        ip = str(ipaddress.IPv4Address(0x0A000000 + 1000 + i))
        ip6 = f"2001:db8::{i + 0x1000:x}"
        peer_id = rnd.randbytes(20).hex()
        dark = f"qd1{rnd.randbytes(16).hex()}.dark"
        secrets += [ip, ip6, peer_id, dark]
        m.connection_opened(rnd.choice(["inbound", "outbound", ip]))
        m.bytes_received(rnd.randrange(1, 10_000), rnd.choice(["tcp", "udp", ip6]))
        m.bytes_sent(rnd.randrange(1, 10_000))
        if rnd.random() < 0.7:
            m.handshake_ok()
        else:
            m.handshake_failed(rnd.choice(["timeout", "auth_failed", f"auth failed for {peer_id}", ip, dark]))
        for _ in range(3):
            m.dht_op(rnd.choice(ops + [f"find_node {peer_id}"]), rnd.choice(["ok", "timeout", "error", ip]), rnd.random())
        m.ratelimit_drop(rnd.choice(["dht_queries", ip, peer_id]))
        m.circuit_built("relay")
        m.circuit_failed(rnd.choice(["client", peer_id, dark]))
        m.cells_relayed(rnd.randrange(1, 50))
        m.cells_dropped(rnd.choice(["mixer_full", "link_closed", peer_id, ip]), rnd.randrange(0, 5))
        (m.resolver_cache_hit if rnd.random() < 0.5 else m.resolver_cache_miss)()
        if i % 3 == 0:
            m.circuit_failed()
            m.connection_closed("inbound")
    return secrets


def test_series_count_same_for_5_and_50_peers_and_no_peer_data_in_labels():
    fresh = NodeMetrics()
    five, fifty = NodeMetrics(), NodeMetrics()
    secrets5 = simulate_peers(five, 5, seed=1)
    secrets50 = simulate_peers(fifty, 50, seed=2)
    out5, out50 = five.render(), fifty.render()
    assert len(sample_lines(out5)) == len(sample_lines(out50)) == len(sample_lines(fresh.render()))
    # Activity really was recorded (the comparison is not between two empty registries).
    assert value(fifty, "qudag_circuits_built_total", role="relay") == 50
    assert value(five, "qudag_circuits_built_total", role="relay") == 5
    assert value(fifty, "qudag_handshakes_failed_total", reason="other") > 0
    for out, secrets in ((out5, secrets5), (out50, secrets50)):
        text = out.decode()
        for s in secrets:
            assert s not in text
    allowed = NodeMetrics.label_values()
    for name, values in all_label_values(fifty).items():
        if name == "le":
            continue
        assert values <= set(allowed[name]), name


@settings(max_examples=200, deadline=None)
@given(
    reason=st.one_of(st.text(max_size=40), st.binary(max_size=10), st.integers(), st.none()),
    op=st.one_of(st.text(max_size=20), st.sampled_from([o.value for o in DhtOp])),
    outcome=st.one_of(st.text(max_size=10), st.sampled_from([o.value for o in DhtOutcome])),
    seconds=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5)),
)
def test_any_label_input_maps_into_the_enums(reason, op, outcome, seconds):
    m = NodeMetrics()
    before = len(sample_lines(m.render()))
    m.handshake_failed(reason)
    m.dht_op(op, outcome, seconds)
    m.ratelimit_drop(reason)
    m.connection_opened(reason)
    m.bytes_sent(1, reason)
    m.cells_dropped(reason)
    allowed = NodeMetrics.label_values()
    for name, values in all_label_values(m).items():
        if name != "le":
            assert values <= set(allowed[name])
    assert len(sample_lines(m.render())) == before
    hs_reasons = {r.value for r in HandshakeFailure}
    assert value(m, "qudag_handshakes_failed_total", reason=reason if reason in hs_reasons else "other") == 1
    drop_reasons = {r.value for r in CellDropReason}
    assert value(m, "qudag_cells_dropped_total", reason=reason if reason in drop_reasons else "other") == 1


def test_str_subclass_cannot_smuggle_its_own_text():
    class Sneaky(str):
        def __hash__(self):
            return hash("timeout")

        def __eq__(self, other):
            return True

    m = NodeMetrics()
    m.handshake_failed(Sneaky("10.1.2.3"))
    assert "10.1.2.3" not in m.render().decode()
    assert value(m, "qudag_handshakes_failed_total", reason="other") == 1


# -- registries ------------------------------------------------------------------------------


def test_each_node_has_its_own_registry_and_the_default_one_is_untouched():
    a, b = NodeMetrics(), NodeMetrics()
    a.handshake_ok()
    assert value(a, "qudag_handshakes_ok_total") == 1
    assert value(b, "qudag_handshakes_ok_total") == 0
    assert a.registry is not b.registry
    assert prometheus_client.REGISTRY.get_sample_value("qudag_handshakes_ok_total") is None


def test_promtool_accepts_the_exposition():
    m = NodeMetrics()
    simulate_peers(m, 20, seed=3)
    proc = promtool_check(m.render())
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docs_list_every_metric_and_only_those():
    docs = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    exposed = {}
    for line in NodeMetrics().render().decode().splitlines():
        if line.startswith("# TYPE ") and not line.split()[2].endswith("_created"):
            _, _, name, kind = line.split()
            exposed[name] = kind
    documented = {}
    for row in re.findall(r"^\| `(qudag_\w+)` \| (\w+) \| ([^|]*) \|", docs, re.M):
        documented[row[0]] = (row[1], {lab.strip(" `") for lab in row[2].split(",") if lab.strip() not in ("—", "")})
    assert set(documented) == set(exposed)
    labels_of = {}
    for family in text_string_to_metric_families(NodeMetrics().render().decode()):
        for sample in family.samples:
            labels_of.setdefault(family.name, set()).update(k for k in sample.labels if k != "le")
    for name, (kind, labels) in documented.items():
        assert kind == exposed[name], name
        base = name.removesuffix("_total")
        assert labels == labels_of.get(base, set()), name
    # Every enum value is documented too.
    for values in NodeMetrics.label_values().values():
        for v in values:
            assert f"`{v}`" in docs, v
