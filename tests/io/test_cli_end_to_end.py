"""The ``qudag`` command line end to end, every command in its own subprocess, loopback only.

Every process a test starts is ended by that test (SIGTERM, then a bounded wait, then
kill) and every wait is bounded.
"""
from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PASS = "correct horse battery staple"


def _env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("QUDAG_PASSPHRASE", None)
    env.update(extra)
    return env


def qudag(*args: str, passphrase: str | None = PASS, timeout: float = 60.0, **kw) -> subprocess.CompletedProcess:
    env = _env(**({"QUDAG_PASSPHRASE": passphrase} if passphrase is not None else {}))
    return subprocess.run([sys.executable, "-m", "qudag_io.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, **kw)


def keygen(path: str) -> str:
    r = qudag("keygen", "--keystore", path, "--scrypt-log2n", "10")
    assert r.returncode == 0, r.stderr
    return r.stdout.split()[2]


def read_node_id(data_dir: str) -> str:
    with open(os.path.join(data_dir, "node.cert"), "rb") as f:
        from qudag_core.identity import NodeCertificate

        return NodeCertificate.from_bytes(f.read()).node_id.hex()


class RunningNode:
    def __init__(self, tmp, name: str, *extra: str) -> None:
        self.dir = str(tmp / name)
        key = os.path.join(self.dir, "key")
        # A restart reuses the identity (and the data dir with its database).
        self.node_id = keygen(key) if not os.path.exists(key) else read_node_id(self.dir)
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qudag_io.cli", "node", "run", "--keystore", os.path.join(self.dir, "key"), *extra],
            env=_env(QUDAG_PASSPHRASE=PASS), stdout=subprocess.PIPE, stderr=self.log, text=True,
            stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()  # the READY line (bounded: the node exits on failure)
        assert line, f"node did not start: {self.stderr()}"
        self.info = json.loads(line)
        assert self.info["node_id"] == self.node_id

    def udp(self) -> str:
        h, p = self.info["dht"]
        return f"{h}:{p}"

    def tcp(self) -> str:
        h, p = self.info["link"][0]
        return f"{h}:{p}"

    def http(self) -> str:
        h, p = self.info["http"]
        return f"http://{h}:{p}"

    def stderr(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            rc = -9
        self.proc.stdout.close()
        return rc


@pytest.fixture
def nodes(tmp_path):
    started: list[RunningNode] = []

    def start(name: str, *extra: str) -> RunningNode:
        n = RunningNode(tmp_path, name, *extra)
        started.append(n)
        return n

    yield start
    for n in started:
        n.stop()
        n.log.close()


def test_keygen_private_file_and_wrong_passphrase(tmp_path):
    key = str(tmp_path / "k" / "key")
    node_id = keygen(key)
    assert len(node_id) == 40
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    # A second keygen refuses to overwrite.
    r = qudag("keygen", "--keystore", key)
    assert r.returncode == 1 and "already exists" in r.stderr
    # Wrong passphrase: one line, no traceback.
    r = qudag("node", "run", "--keystore", key, passphrase="wrong")
    assert r.returncode == 1
    assert r.stderr.strip() == f"qudag: error: wrong passphrase for keystore {key}"
    # No passphrase source and no terminal: told what to do.
    r = qudag("node", "run", "--keystore", key, passphrase=None)
    assert r.returncode == 1 and "QUDAG_PASSPHRASE" in r.stderr and "Traceback" not in r.stderr
    # From a file.
    pf = tmp_path / "pw"
    pf.write_text(PASS + "\n")
    r = qudag("send", "--keystore", key, "--passphrase-file", str(pf), "--to", "127.0.0.1:1",
              "--peer-id", node_id, "x", passphrase=None, timeout=30)
    assert r.returncode == 1 and "refused" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_two_nodes_message_dht_status_and_sigterm(nodes):
    a = nodes("a")
    b = nodes("b", "--bootstrap", a.udp(), "--log-level", "debug")
    # A message sent directly over an authenticated link, acknowledged with its digest.
    r = qudag("send", "--to", b.tcp(), "--peer-id", b.node_id, "hello", "world", passphrase=None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("acknowledged, digest verified") == 2
    # The wrong peer id fails the handshake with one line.
    r = qudag("send", "--to", b.tcp(), "--peer-id", a.node_id, "x", passphrase=None)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    # DHT put through one node, get through the other.
    r = qudag("dht", "--bootstrap", a.udp(), "put", "a value for the DHT", passphrase=None)
    assert r.returncode == 0, r.stderr
    target = r.stdout.strip()
    assert len(target) == 40
    r = qudag("dht", "--bootstrap", b.udp(), "get", target, passphrase=None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "a value for the DHT"
    r = qudag("dht", "ping", a.udp(), passphrase=None)
    assert r.returncode == 0 and r.stdout.startswith("pong from ")
    # status through the HTTP endpoint, by URL and by data dir.
    r = qudag("status", "--url", b.http(), "--json", passphrase=None)
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["node_id"] == b.node_id and st["routing_table_size"] >= 1 and st["uptime_seconds"] > 0
    r = qudag("dht", "--bootstrap", a.udp(), "find-node", st["dht_node_id"], passphrase=None)
    assert r.returncode == 0, r.stderr
    assert f"{st['dht_node_id']} {b.udp()}" in r.stdout.splitlines()
    r = qudag("dht", "--bootstrap", a.udp(), "get", "zz", passphrase=None)
    assert r.returncode == 1 and "40 hex digits" in r.stderr
    r = qudag("status", "--data-dir", a.dir, passphrase=None)
    assert r.returncode == 0 and a.node_id in r.stdout
    # metrics saw the link and the DHT traffic
    text = urllib.request.urlopen(b.http() + "/metrics", timeout=5).read().decode()
    # (the dial with the wrong peer id failed its handshake: only one link was made)
    assert 'qudag_connections_opened_total{direction="inbound"} 1.0' in text
    assert 'qudag_connections_active{direction="inbound"} 0.0' in text
    assert 'qudag_handshakes_ok_total 1.0' in text
    in_udp = [ln for ln in text.splitlines() if ln.startswith('qudag_bytes_received_total{transport="udp"}')]
    assert in_udp and float(in_udp[0].split()[-1]) > 0
    # SIGTERM: clean exit, and the node reports what happened to its state.
    assert b.stop() == 0
    log = b.stderr()
    assert "state saved: " in log and "shutdown complete" in log
    db = os.path.join(b.dir, "node.db")
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    assert PASS not in log
    from qudag_io.keystore import read_keystore
    for secret in read_keystore(os.path.join(b.dir, "key"), PASS.encode()).values():
        assert secret.hex() not in log.lower() and repr(secret)[2:-1] not in log
    assert not os.path.exists(os.path.join(b.dir, "node.json"))
    # Restart B with NO bootstrap nodes: it rejoins from its saved routing table.
    b2 = nodes("b")
    r = qudag("status", "--url", b2.http(), "--json", passphrase=None)
    assert r.returncode == 0, r.stderr
    st2 = json.loads(r.stdout)
    assert st2["node_id"] == b.node_id and st2["routing_table_size"] >= 1
    assert "restored from" in b2.stderr() and "rejoin from the saved routing table failed" not in b2.stderr()
    r = qudag("dht", "--bootstrap", b2.udp(), "get", target, passphrase=None)
    assert r.returncode == 0 and r.stdout.strip() == "a value for the DHT", r.stderr


def test_listen_prints_messages(tmp_path):
    key = str(tmp_path / "l" / "key")
    node_id = keygen(key)
    proc = subprocess.Popen([sys.executable, "-m", "qudag_io.cli", "listen", "--keystore", key, "--count", "2"],
                            env=_env(QUDAG_PASSPHRASE=PASS), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)
    try:
        info = json.loads(proc.stdout.readline())
        h, p = info["link"]
        r = qudag("send", "--to", f"{h}:{p}", "--peer-id", node_id, "first", "second", passphrase=None)
        assert r.returncode == 0, r.stderr
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert [ln.split(": ", 1)[1] for ln in lines] == ["first", "second"]


def test_debug_shows_the_traceback_otherwise_one_line():
    r = qudag("status", "--url", "http://127.0.0.1:1", passphrase=None)
    assert r.returncode == 1 and r.stderr.startswith("qudag: error: cannot reach") and "is the node running?" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = qudag("--debug", "status", "--url", "http://127.0.0.1:1", passphrase=None)
    assert r.returncode == 1 and "Traceback (most recent call last)" in r.stderr


def test_config_errors_are_one_line(tmp_path):
    key = str(tmp_path / "c" / "key")
    keygen(key)
    cfg = tmp_path / "node.toml"
    cfg.write_text(f'[node]\nkeystore = "{key}"\n[dht]\nbootsrap = ["127.0.0.1:1"]\n')
    r = qudag("node", "run", "--config", str(cfg))
    assert r.returncode == 1 and "unknown key 'bootsrap'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    cfg.write_text(f'[node]\nkeystore = "{key}"\n[onion]\nrelay = "yes"\n')
    r = qudag("node", "run", "--config", str(cfg))
    assert r.returncode == 1 and "relay must be a bool" in r.stderr


def test_send_over_a_three_hop_circuit(nodes, tmp_path):
    directory = str(tmp_path / "relays.json")
    relays = [nodes(f"r{i}", "--relay", "--onion-directory", directory, "--no-http") for i in range(3)]
    certs = []
    for r in relays:
        with open(os.path.join(r.dir, "onion.cert"), "rb") as f:
            certs.append(f.read().hex())
    with open(directory, "w") as f:
        json.dump(certs, f)
    exit_node = relays[1]
    r = qudag("send", "--hops", "3", "--directory", directory, "--peer-id", exit_node.node_id,
              "over", "three hops", passphrase=None)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("over a 3-hop circuit (acknowledged, digest verified)") == 2
    # Every relay on 127.0.0.1: the one-relay-per-/16 rule cannot hold, so it is off.
    assert "3-hop circuit built; /16 path rule off (loopback relays share a /16)" in r.stdout
    assert exit_node.stop() == 0
    assert exit_node.stderr().count("message over a circuit") == 2
    # An exit that is not a relay: one line saying what to do.
    r = qudag("send", "--hops", "3", "--directory", directory, "--peer-id", "00" * 20, "x", passphrase=None)
    assert r.returncode == 1 and "is not a relay" in r.stderr and len(r.stderr.strip().splitlines()) == 1


ON_OWN_16S = ["127.31.0.1", "127.32.0.1", "127.33.0.1"]


def _can_bind_own_16s() -> bool:
    from qudag_io.loopback import can_bind

    return can_bind(ON_OWN_16S)


@pytest.mark.skipif(not _can_bind_own_16s(), reason="this system binds only 127.0.0.1 on loopback")
def test_relays_on_their_own_16s_keep_the_path_rule_and_link_from_their_address(nodes, tmp_path):
    """Three ``qudag node run --relay`` processes, each with every listener on its own
    loopback /16.  ``qudag send --hops 3`` keeps the production path rule (one relay per
    /16), and a node's dark storage links reach the other nodes from its own address (their
    ``/status`` lists the inbound link at it, not at 127.0.0.1)."""
    dark = str(tmp_path / "dark.json")
    directory = str(tmp_path / "relays.json")

    def flags(h: str) -> list[str]:
        return ["--listen-tcp", f"{h}:0", "--listen-udp", f"{h}:0", "--onion-listen", f"{h}:0",
                "--metrics", f"{h}:0", "--relay", "--onion-directory", directory, "--dark-directory", dark]

    relays = [nodes("r0", *flags(ON_OWN_16S[0]))]
    relays += [nodes(f"r{i}", *flags(ON_OWN_16S[i]), "--bootstrap", relays[0].udp()) for i in (1, 2)]
    assert [r.info["link"][0][0] for r in relays] == ON_OWN_16S
    certs = []
    for r in relays:
        with open(os.path.join(r.dir, "onion.cert"), "rb") as f:
            certs.append(f.read().hex())
    with open(directory, "w") as f:
        json.dump(certs, f)
    exit_node = relays[2]
    r = qudag("address", "new", "--keystore", os.path.join(exit_node.dir, "key"))
    assert r.returncode == 0, r.stderr
    r = qudag("address", "publish", r.stdout.strip(), "--data-dir", exit_node.dir, passphrase=None)
    assert r.returncode == 0, r.stderr
    for other in relays[:2]:
        st = json.loads(qudag("status", "--url", other.http(), "--json", passphrase=None).stdout)
        inbound = {p["address"][0] for p in st["peers"] if p["direction"] == "inbound"}
        assert inbound == {ON_OWN_16S[2]}, st["peers"]
    r = qudag("send", "--hops", "3", "--directory", directory, "--peer-id", exit_node.node_id,
              "over three /16s", passphrase=None)
    assert r.returncode == 0, r.stderr
    assert "3-hop circuit built; one relay per /16" in r.stdout
    assert "over a 3-hop circuit (acknowledged, digest verified)" in r.stdout
    assert exit_node.stop() == 0
    assert exit_node.stderr().count("message over a circuit") == 1


def test_path_rule_for():
    """``qudag send --hops`` and the testnet choose the path rule the same way: off only
    for loopback relays that share a /16."""
    from qudag_io.cli import path_rule_for

    assert path_rule_for(["127.1.0.1", "127.2.0.1", "127.3.0.1"]) == 1
    assert path_rule_for(["127.0.0.1", "127.0.0.1", "127.0.0.1"]) is None
    assert path_rule_for(["127.1.0.1", "127.1.5.1", "127.3.0.1"]) is None
    assert path_rule_for(["::1", "127.1.0.1"]) == 1  # distinct prefixes (IPv6 /32, IPv4 /16)
    assert path_rule_for(["::1", "::1"]) is None
    # Anything off loopback: the production rule stays on, shared /16s or not.
    assert path_rule_for(["198.51.100.1", "198.51.7.1", "203.0.113.1"]) == 1
    assert path_rule_for(["127.0.0.1", "127.0.0.1", "203.0.113.1"]) == 1


@pytest.mark.skipif(not os.path.exists("/usr/bin/promtool"), reason="promtool not installed (/usr/bin/promtool)")
def test_promtool_accepts_a_running_nodes_metrics(nodes):
    a = nodes("p")
    text = urllib.request.urlopen(a.http() + "/metrics", timeout=5).read()
    r = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def run_testnet(n: int, timeout: float) -> tuple[int, str, str]:
    """``qudag testnet --nodes n`` in its own session: if it outlives ``timeout`` it gets
    SIGTERM (its clean stop of every node), then the whole process group SIGKILL, so no
    node process survives the test either way."""
    proc = subprocess.Popen([sys.executable, "-m", "qudag_io.cli", "testnet", "--nodes", str(n),
                             "--timeout", str(timeout)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout + 20)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        pytest.fail(f"testnet did not finish within its --timeout {timeout}s:\n{out}\n{err}")
    return proc.returncode, out, err


_NODE_ROW = re.compile(r"^(\d\d)\s+[0-9a-f]{16}\s+(\S+):(\d+)\s+(\d+)\s+http://(\S+):(\d+)/metrics$")


def test_testnet_nodes_on_their_own_slash24s_fill_their_tables(tmp_path):
    """Twelve nodes, the whole demo flow.  Each node listens on its own loopback /24, so
    the DHT's diversity limits (unchanged: 10 per /24 per table) no longer starve the
    tables: with all twelve on 127.0.0.1 no table could hold more than 10 of the 11 others."""
    from qudag_core.krpc.bep42 import is_exempt
    from qudag_core.krpc.routing import DiversityConfig, address_prefix

    n, cap = 12, DiversityConfig().per_table
    assert n - 1 > cap  # the run can show a table beyond the one-address cap
    t = time.monotonic()
    rc, out, err = run_testnet(n, 60)
    assert rc == 0, out + err
    for step in ("bootstrap: 11 nodes joined through node 00; routing tables min/median/max", "DHT put:",
                 "DHT get: value matches", "link message:", f"stopped {n} nodes ({n} exited cleanly)",
                 "each node on its own loopback /24: 127.1.0.1 .. 127.12.0.1"):
        assert step in out, out
    assert "3-hop circuit: through nodes" in out and "one relay per /16" in out, out
    assert "circuit stream: 64 KiB echoed" in out
    assert "dark publish: node 00: " in out and "descriptor puts accepted" in out
    assert f"dark resolve: by name via node {n - 1:02d}: node 00 at 127.1.0.1:" in out, out
    assert "dark message: acknowledged by node 00" in out
    assert re.search(r"dark resolve through circuits: 3-hop circuits ending at [1-3] storage nodes, no storage node "
                     r"saw this address: node 00 at 127\.1\.0\.1:", out), out
    # Node 00's dark storage links stay open, and their sources are node addresses.
    assert re.search(r"link sources: [1-9]\d* open inbound links, each from its node's own address", out), out
    assert out.count("/metrics") == n and out.rstrip().endswith("testnet: OK")
    assert time.monotonic() - t < 80
    rows = [m.groups() for m in map(_NODE_ROW.match, out.splitlines()) if m]
    assert [int(r[0]) for r in rows] == list(range(n)), out
    hosts = [r[1] for r in rows]
    # Every node's DHT and HTTP listeners on its own address, each in its own /24 of 127/8,
    # all exempt from the BEP 42 node-id check (the testnet also checks link and onion).
    assert [r[4] for r in rows] == hosts
    assert all(h.startswith("127.") and is_exempt(h) for h in hosts)
    assert len({address_prefix(h) for h in hosts}) == n
    sizes = [int(r[3]) for r in rows]
    assert all(0 < s <= n - 1 for s in sizes), sizes
    assert max(sizes) > cap, sizes
    summary = f"tables: routing tables min/median/max {min(sizes)}/"
    assert summary in out and f"/{max(sizes)} of {n - 1} other nodes" in out, out
    # Every node process has ended: none of the metrics ports still answers.
    for h, p in ((r[4], r[5]) for r in rows):
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://{h}:{p}/metrics", timeout=2)
    tmpdirs = [ln for ln in out.splitlines() if f"testnet of {n} nodes" in ln]
    assert tmpdirs and not os.path.exists(tmpdirs[0].split(" in ")[-1])


def test_testnet_host_scheme():
    """Node addresses: a distinct /24 for every allowed node, a distinct /16 for the first
    254 (the onion path rule's prefix), all loopback and BEP 42-exempt; client addresses
    in a /16 no node uses."""
    import ipaddress

    from qudag_core.krpc.bep42 import is_exempt
    from qudag_core.krpc.routing import address_prefix
    from qudag_core.onion.path import subnet_of
    from qudag_io import loopback
    from qudag_io.cli import TESTNET_MAX_NODES, testnet_client_host, testnet_host

    # One plan: the command line uses the shared module's functions, not a copy.
    assert (testnet_host, testnet_client_host, TESTNET_MAX_NODES) == (
        loopback.testnet_host, loopback.testnet_client_host, loopback.TESTNET_MAX_NODES)

    hosts = [testnet_host(i) for i in range(TESTNET_MAX_NODES)]
    assert hosts[:3] == ["127.1.0.1", "127.2.0.1", "127.3.0.1"] and hosts[254] == "127.1.1.1"
    assert len({address_prefix(h) for h in hosts}) == TESTNET_MAX_NODES
    assert len({subnet_of(h) for h in hosts[:254]}) == 254
    for h in hosts[:300] + hosts[-300:]:
        assert ipaddress.ip_address(h).is_loopback and is_exempt(h)
    node16 = {subnet_of(h) for h in hosts[:254]}
    clients = [testnet_client_host(k) for k in range(256)]
    assert not node16 & {subnet_of(c) for c in clients} and len({address_prefix(c) for c in clients}) == 256
    for bad in (-1, TESTNET_MAX_NODES):
        with pytest.raises(ValueError):
            testnet_host(bad)


def test_testnet_sigint_stops_every_node(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "qudag_io.cli", "testnet", "--nodes", "4", "--timeout", "60"],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)
    pids: list[int] = []
    try:
        first = proc.stdout.readline()
        tmp = first.rstrip().split(" in ")[-1]
        for _ in range(20):  # bounded: one line per step
            line = proc.stdout.readline()
            if not line or "bootstrap:" in line:
                break
        assert "bootstrap:" in line, line
        for i in range(4):
            with open(os.path.join(tmp, f"node{i:02d}", "node.json")) as f:
                pids.append(json.load(f)["pid"])
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "stopped 4 nodes (4 exited cleanly)" in out and "testnet: FAILED" in err
    for pid in pids:  # reaped by the testnet: gone
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.path.exists(tmp)


# ---- dark addresses --------------------------------------------------------------------------------


def _address_list(node: "RunningNode") -> list[dict]:
    r = qudag("address", "list", "--data-dir", node.dir, "--json", passphrase=None)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_dark_address_publish_resolve_send_and_restart(nodes, tmp_path):
    dark = str(tmp_path / "dark.json")
    a = nodes("a", "--dark-directory", dark)
    b = nodes("b", "--bootstrap", a.udp(), "--dark-directory", dark)
    lookup = ("--bootstrap", b.udp(), "--dark-directory", dark)
    # new: derived from A's keystore (needs its passphrase), kept in A's database
    r = qudag("address", "new", "--keystore", os.path.join(a.dir, "key"))
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    assert name.endswith(".dark") and len(name) == 56 + 5
    [row] = _address_list(a)
    assert row["address"] == name and row["last_published"] is None and not row["publish"]
    # not published yet: resolving says so in one line
    r = qudag("resolve", name, *lookup, "--timeout", "10", passphrase=None)
    assert r.returncode == 1 and "not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    # publish through the running node A
    r = qudag("address", "publish", name, "--data-dir", a.dir, passphrase=None)
    assert r.returncode == 0, r.stderr + a.stderr()
    assert r.stdout.startswith(f"published {name}") and "descriptor puts accepted" in r.stdout
    [row] = _address_list(a)
    assert row["publish"] and row["last_published"] is not None and row["revision"] > 0
    # resolve through B (a short-lived DHT node bootstrapped from B): A's node id and link address
    r = qudag("resolve", name, *lookup, "--json", "--dummies", "2", passphrase=None)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["node_id"] == a.node_id and [f"{h}:{p}" for h, p in got["link"]] == [a.tcp()]
    assert got["name"] == name and not got["long_term"]
    # B stores descriptors too (k = 3 > 2 nodes): its status says so
    st = json.loads(urllib.request.urlopen(b.http() + "/status", timeout=5).read())
    assert st["dark"]["stored_descriptors"] >= 1
    # send by name, directly
    r = qudag("send", "--to", name, *lookup, "hello by name", passphrase=None)
    assert r.returncode == 0, r.stderr
    assert f"resolved to node {a.node_id}" in r.stdout and "acknowledged, digest verified" in r.stdout
    # bad names: one line, nonzero exit, nothing started
    bad = name[:10] + ("a" if name[10] != "a" else "b") + name[11:]
    for text, want in ((bad, "checksum does not match"), ("nope.dark", "alias"),
                       ("under_score.dark", "not a dark address"), ("hello", "not a dark address")):
        r = qudag("resolve", text, *lookup, passphrase=None)
        assert r.returncode == 1 and want in r.stderr, (text, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = qudag("send", "--to", bad, *lookup, "x", passphrase=None)
    assert r.returncode == 1 and "checksum" in r.stderr
    r = qudag("address", "publish", "a" * 56 + ".dark", "--data-dir", a.dir, passphrase=None)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    r = qudag("resolve", name, "--bootstrap", b.udp(), passphrase=None)
    assert r.returncode == 1 and "--dark-directory" in r.stderr
    # Restart A (new link port): the address is listed, republished with a higher revision,
    # and resolves to the new link address.
    rev = row["revision"]
    assert a.stop() == 0
    assert _address_list(a)[0]["address"] == name
    a2 = nodes("a", "--dark-directory", dark, "--bootstrap", b.udp())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        [row] = _address_list(a2)
        if row["revision"] > rev:
            break
        time.sleep(0.2)
    assert row["revision"] > rev and row["publish"], (row, a2.stderr())
    assert "republished 1 dark address" in a2.stderr()
    r = qudag("send", "--to", name, *lookup, "after the restart", passphrase=None)
    assert r.returncode == 0, r.stderr
    assert f"at {a2.tcp()}" in r.stdout
    assert a2.stop() == 0
    assert "message from" in a2.stderr()


def test_send_to_a_dark_name_over_three_hops(nodes, tmp_path):
    dark = str(tmp_path / "dark.json")
    directory = str(tmp_path / "relays.json")
    relays = [nodes("r0", "--relay", "--onion-directory", directory, "--dark-directory", dark, "--no-http")]
    relays += [nodes(f"r{i}", "--relay", "--onion-directory", directory, "--dark-directory", dark, "--no-http",
                     "--bootstrap", relays[0].udp()) for i in (1, 2)]
    certs = []
    for r in relays:
        with open(os.path.join(r.dir, "onion.cert"), "rb") as f:
            certs.append(f.read().hex())
    with open(directory, "w") as f:
        json.dump(certs, f)
    exit_node = relays[2]
    r = qudag("address", "new", "--keystore", os.path.join(exit_node.dir, "key"))
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    r = qudag("address", "publish", name, "--data-dir", exit_node.dir, passphrase=None)
    assert r.returncode == 0, r.stderr
    # resolve through 3-hop circuits ending at each storage node (every relay here stores)
    r = qudag("resolve", name, "--bootstrap", relays[0].udp(), "--dark-directory", dark, "--hops", "3",
              "--directory", directory, passphrase=None)
    assert r.returncode == 0, r.stderr
    assert f"-> node {exit_node.node_id} at " in r.stdout and "fetched through 3-hop onion circuits" in r.stdout
    r = qudag("resolve", name, "--bootstrap", relays[0].udp(), "--dark-directory", dark, "--hops", "1",
              "--directory", directory, passphrase=None)
    assert r.returncode != 0 and "at least 2" in r.stderr
    r = qudag("send", "--to", name, "--bootstrap", relays[0].udp(), "--dark-directory", dark,
              "--hops", "3", "--directory", directory, "anonymous hello", passphrase=None)
    assert r.returncode == 0, r.stderr
    assert f"resolved to node {exit_node.node_id}" in r.stdout
    assert "over a 3-hop circuit (acknowledged, digest verified)" in r.stdout
    assert exit_node.stop() == 0
    assert exit_node.stderr().count("message over a circuit") == 1


def test_address_commands_without_a_node(tmp_path):
    d = tmp_path / "n"
    key = str(d / "key")
    keygen(key)
    # list before anything exists: told what to do
    r = qudag("address", "list", "--data-dir", str(d), passphrase=None)
    assert r.returncode == 1 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    names = []
    for _ in range(2):
        r = qudag("address", "new", "--keystore", key)
        assert r.returncode == 0, r.stderr
        names.append(r.stdout.strip())
    assert names[0] != names[1]
    assert stat.S_IMODE(os.stat(d / "node.db").st_mode) == 0o600
    # publish with no node running: remembered for the node's next start
    r = qudag("address", "publish", names[1], "--data-dir", str(d), passphrase=None)
    assert r.returncode == 0 and "will be published when the node starts" in r.stdout
    r = qudag("address", "list", "--data-dir", str(d), passphrase=None)
    assert r.returncode == 0
    lines = r.stdout.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == names
    assert "not published" in lines[0] and "publish pending" in lines[1]
    # the database never holds key material: only the derivation index
    from qudag_io.keystore import read_keystore
    secrets = read_keystore(key, PASS.encode()).values()
    raw = open(d / "node.db", "rb").read() + (open(d / "node.db-wal", "rb").read()
                                              if os.path.exists(d / "node.db-wal") else b"")
    assert not any(s in raw for s in secrets)
    # wrong passphrase for new: one line
    r = qudag("address", "new", "--keystore", key, passphrase="wrong")
    assert r.returncode == 1 and "wrong passphrase" in r.stderr
    # a foreign database: one line, untouched
    other = tmp_path / "o"
    other.mkdir()
    import sqlite3
    c = sqlite3.connect(other / "node.db")
    c.execute("CREATE TABLE t (x)")
    c.commit()
    c.close()
    os.chmod(other / "node.db", 0o600)
    r = qudag("address", "list", "--data-dir", str(other), passphrase=None)
    assert r.returncode == 1 and "another application" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_dark_commands_say_what_to_do(nodes, tmp_path):
    lone = nodes("lone")  # no --dark-directory: it stores for others but cannot publish
    r = qudag("address", "new", "--keystore", os.path.join(lone.dir, "key"))
    assert r.returncode == 0, r.stderr
    name = r.stdout.strip()
    r = qudag("address", "publish", name, "--data-dir", lone.dir, passphrase=None)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no [dark] directory" in r.stderr and "--dark-directory" in r.stderr
    [row] = _address_list(lone)
    assert row["publish"] and not row["pending"] and row["result"].startswith("failed")
    r = qudag("address", "publish", "b" * 56 + ".dark", "--data-dir", lone.dir, passphrase=None)
    assert r.returncode == 1 and ("checksum" in r.stderr or "not one of this node's addresses" in r.stderr)
    # a bootstrap node that does not answer, a directory that does not exist
    dark = str(tmp_path / "dark.json")
    _register_in_directory(dark, lone.dir)
    r = qudag("resolve", name, "--bootstrap", "127.0.0.1:9", "--dark-directory", dark, "--timeout", "1",
              passphrase=None)
    assert r.returncode == 1 and "no --bootstrap node answered" in r.stderr, r.stderr
    r = qudag("resolve", name, "--bootstrap", lone.udp(), "--dark-directory", str(tmp_path / "nope.json"),
              passphrase=None)
    assert r.returncode == 1 and "does not exist" in r.stderr
    r = qudag("send", "--to", name, "--bootstrap", lone.udp(), "--dark-directory", dark, "--peer-id", "00" * 20,
              "x", passphrase=None)
    assert r.returncode == 1 and "drop --peer-id" in r.stderr
    st = json.loads(qudag("status", "--url", lone.http(), "--json", passphrase=None).stdout)
    assert st["dark"] == {"stored_descriptors": 0, "can_publish": False}


def _register_in_directory(path: str, data_dir: str) -> None:
    from qudag_core.identity import NodeCertificate
    from qudag_io.dark import CertificateDirectory

    with open(os.path.join(data_dir, "node.cert"), "rb") as f:
        CertificateDirectory(path).register(NodeCertificate.from_bytes(f.read()))
