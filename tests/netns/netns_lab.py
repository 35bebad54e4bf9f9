"""Build a small internet in Linux network namespaces (root only), and tear it down.

Everything is created *inside* namespaces the lab made (``ip netns add``, veth pairs
created with ``ip -n NS link add ... peer ... netns OTHER``); the root namespace's
interfaces, routes and firewall are never touched.  Addresses are RFC 5737 documentation
ranges only: 203.0.113.0/24 is the "internet", 192.0.2.0/24 and 198.51.100.0/24 the
private sides.  Names carry a random per-run prefix so parallel or crashed runs never
collide, and ``close()`` kills every process the lab started before deleting the
namespaces.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NODE = os.path.join(REPO, "tests", "netns", "nat_node.py")


class LabUnavailable(Exception):
    pass


def _run(cmd, check=True, timeout=10):
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


class Lab:
    def __init__(self) -> None:
        self.prefix = "qd" + secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []

    @staticmethod
    def probe() -> None:
        """Raise ``LabUnavailable`` (with the reason) when namespaces cannot be made here."""
        if os.geteuid() != 0:
            raise LabUnavailable("network namespaces need root")
        for tool in ("ip", "iptables", "nft"):
            if shutil.which(tool) is None:
                raise LabUnavailable(f"{tool} not installed")
        name = "qdprobe" + secrets.token_hex(3)
        p = _run(["ip", "netns", "add", name], check=False)
        if p.returncode != 0:
            raise LabUnavailable(f"ip netns add failed: {p.stderr.strip()}")
        _run(["ip", "netns", "del", name], check=False)

    def ns(self, role: str) -> str:
        name = f"{self.prefix}{role}"
        _run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        self.sh(name, "ip link set lo up")
        return name

    def sh(self, ns: str, cmd: str, check: bool = True):
        return _run(["ip", "netns", "exec", ns, "sh", "-c", cmd], check=check)

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        _run(["ip", "-n", ns_a, "link", "add", if_a, "type", "veth", "peer", "name", if_b, "netns", ns_b])
        _run(["ip", "-n", ns_a, "link", "set", if_a, "up"])
        _run(["ip", "-n", ns_b, "link", "set", if_b, "up"])

    def spawn(self, ns: str, args: list, log_path: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONPATH=REPO)
        log = open(log_path, "wb")
        p = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, *args], stdout=log,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p

    def node(self, ns: str, role: str, workdir: str, *extra: str, name: str | None = None) -> subprocess.Popen:
        log = os.path.join(workdir, f"{name or role}.log")
        args = [NODE, role, "--dir", workdir, *extra] + (["--name", name] if name else [])
        return self.spawn(ns, args, log)

    def stop(self, p: subprocess.Popen, timeout: float = 3.0) -> None:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout)

    def close(self) -> None:
        for p in self.procs:
            self.stop(p)
        self.procs.clear()
        for name in reversed(self.namespaces):
            _run(["ip", "netns", "del", name], check=False)
        self.namespaces.clear()


def wait_for(pred, timeout: float, interval: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# -- the NAT matrix topology --------------------------------------------------------------
#: How each modelled NAT is made inside its router namespace (RFC 4787 terms; the
#: classification is measured, not assumed: tests/netns/test_nat_matrix.py runs RFC 5780
#: discovery against coturn and a direct per-mapping probe through each model).
#:  * endpoint_independent ("full cone", EIM + EIF): MASQUERADE keeps the source port, and
#:    a static DNAT sends any inbound TCP/UDP to the ephemeral range on to the inner host.
#:  * address_dependent (EIM + address-dependent filtering): the same MASQUERADE + DNAT,
#:    plus an nftables forward filter: every packet the inner host sends records
#:    (remote address, protocol, mapped port) in a dynamic set with a 120 s timeout, and a
#:    new inbound flow that only exists because of the DNAT (ct status dnat) is admitted
#:    when (its source address, protocol, destination port) is in that set, from ANY
#:    source port of that address; anything else the DNAT would let in is dropped.
#:    MASQUERADE keeps ports, so the inner port is the mapping's external port.
#:  * port_restricted (EIM + address-and-port-dependent filtering): plain MASQUERADE;
#:    conntrack lets in only replies from the exact remote endpoint.
#:  * symmetric (APDM): MASQUERADE --random-fully, a fresh random port per destination.
_EIM_DNAT = ["iptables -t nat -A POSTROUTING -o wan -j MASQUERADE",
             "iptables -t nat -A PREROUTING -i wan -p tcp --dport 20000:65535 -j DNAT --to-destination {inner}",
             "iptables -t nat -A PREROUTING -i wan -p udp --dport 20000:65535 -j DNAT --to-destination {inner}"]
ADF_TABLE = "qdadf"
NAT_RULES = {
    "endpoint_independent": _EIM_DNAT,
    "address_dependent": _EIM_DNAT + [
        f"nft 'add table ip {ADF_TABLE}'",
        f"nft 'add set ip {ADF_TABLE} contacted {{ type ipv4_addr . inet_proto . inet_service;"
        " flags dynamic,timeout; timeout 120s; size 65535; }'",
        f"nft 'add chain ip {ADF_TABLE} filter_in {{ type filter hook forward priority 0; policy accept; }}'",
        f"nft 'add rule ip {ADF_TABLE} filter_in iifname \"lan\" oifname \"wan\" meta l4proto {{ tcp, udp }}"
        " update @contacted { ip daddr . meta l4proto . th sport }'",
        f"nft 'add rule ip {ADF_TABLE} filter_in iifname \"wan\" ct state established,related accept'",
        f"nft 'add rule ip {ADF_TABLE} filter_in iifname \"wan\" ct status dnat meta l4proto {{ tcp, udp }}"
        " ip saddr . meta l4proto . th dport @contacted accept'",
        f"nft 'add rule ip {ADF_TABLE} filter_in iifname \"wan\" ct status dnat drop'",
    ],
    "port_restricted": ["iptables -t nat -A POSTROUTING -o wan -j MASQUERADE"],
    "symmetric": ["iptables -t nat -A POSTROUTING -o wan -j MASQUERADE --random-fully"],
}
NAT_RULES["full_cone"] = NAT_RULES["endpoint_independent"]  # the older name


class NatMatrixLab(Lab):
    """relay (203.0.113.1) <-> natA (203.0.113.2) <-> peerA (192.0.2.2)
                           <-> natB (203.0.113.6) <-> peerB (198.51.100.2)"""

    RELAY_IP = "203.0.113.1"
    SIDES = {"a": ("203.0.113.0/30", "203.0.113.1", "203.0.113.2", "192.0.2"),
             "b": ("203.0.113.4/30", "203.0.113.5", "203.0.113.6", "198.51.100")}

    def build(self) -> None:
        self.relay_ns = self.ns("rly")
        self.sh(self.relay_ns, "sysctl -qw net.ipv4.ip_forward=1")
        self.nat_ns, self.peer_ns, self.public_ip, self.inner_ip = {}, {}, {}, {}
        for side, (_, rly_ip, wan_ip, lan) in self.SIDES.items():
            nat, peer = self.ns("nat" + side), self.ns("peer" + side)
            self.nat_ns[side], self.peer_ns[side] = nat, peer
            self.public_ip[side], self.inner_ip[side] = wan_ip, f"{lan}.2"
            self.veth(nat, "wan", self.relay_ns, "to" + side)
            self.sh(self.relay_ns, f"ip addr add {rly_ip}/30 dev to{side}")
            self.sh(nat, f"ip addr add {wan_ip}/30 dev wan && ip route add default via {rly_ip}")
            self.veth(nat, "lan", peer, "eth0")
            self.sh(nat, f"ip addr add {lan}.1/24 dev lan && sysctl -qw net.ipv4.ip_forward=1")
            self.sh(peer, f"ip addr add {lan}.2/24 dev eth0 && ip route add default via {lan}.1")
        # The relay listens on 203.0.113.1 (its address towards natA); natB reaches it by routing.

    def set_nat(self, side: str, kind: str) -> None:
        nat = self.nat_ns[side]
        self.sh(nat, "iptables -t nat -F && iptables -F")
        self.sh(nat, f"nft 'add table ip {ADF_TABLE}' && nft 'delete table ip {ADF_TABLE}'")
        # Routers drop unsolicited inbound traffic to themselves: an early SYN of a
        # simultaneous open is then lost (and retransmitted), not refused with RST, and an
        # early UDP probe leaves no confirmed conntrack entry behind (one would make
        # MASQUERADE pick another port for our own later packets to that peer).
        self.sh(nat, "iptables -A INPUT -i wan -p tcp -j DROP && iptables -A INPUT -i wan -p udp -j DROP")
        for rule in NAT_RULES[kind]:
            self.sh(nat, rule.replace("{inner}", self.inner_ip[side]))


# -- the UPnP topology --------------------------------------------------------------------
MINIUPNPD_NFT = """
table inet filter {
  chain forward { type filter hook forward priority 0; policy drop;
                  ct state established,related accept; iifname "lan" accept; jump miniupnpd; }
  chain miniupnpd { }
  chain prerouting { type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }
  chain postrouting { type nat hook postrouting priority 100; policy accept;
                      jump postrouting_miniupnpd; oifname "wan" masquerade; }
  chain prerouting_miniupnpd { }
  chain postrouting_miniupnpd { }
}
"""

MINIUPNPD_CONF = """ext_ifname=wan
listening_ip=lan
http_port=5000
enable_upnp=yes
enable_natpmp=no
secure_mode=yes
system_uptime=yes
lease_file={lease_file}
uuid=3c4f1a52-0b7e-4d3e-9a59-6d2d0b6c7e11
ext_perform_stun=yes
ext_stun_host=203.0.113.1
ext_stun_port=3478
allow 1024-65535 192.0.2.0/24 1024-65535
deny 0-65535 0.0.0.0/0 0-65535
"""


class UpnpLab(Lab):
    """inet (203.0.113.1 + .9: coturn with RFC 5780) <-> router (wan 203.0.113.2, miniupnpd)
    <-> inner peer (192.0.2.2).

    miniupnpd refuses to forward ports while its external address is "reserved" (it counts
    the RFC 5737 ranges as such), unless ``ext_perform_stun`` finds that address reachable
    from outside unfiltered; the coturn in the inet namespace answers those RFC 5780
    CHANGE-REQUEST probes.  The router's nftables chains are the ones Debian's
    /etc/miniupnpd/nft_init.sh makes (family inet, table filter).
    """

    def build(self, workdir: str) -> None:
        self.inet, self.router, self.inner = self.ns("inet"), self.ns("rtr"), self.ns("inner")
        self.veth(self.router, "wan", self.inet, "eth0")
        self.veth(self.router, "lan", self.inner, "eth0")
        self.sh(self.inet, "ip addr add 203.0.113.1/24 dev eth0 && ip addr add 203.0.113.9/24 dev eth0")
        self.sh(self.router, "ip addr add 203.0.113.2/24 dev wan && ip addr add 192.0.2.1/24 dev lan"
                             " && sysctl -qw net.ipv4.ip_forward=1")
        self.sh(self.inner, "ip addr add 192.0.2.2/24 dev eth0 && ip route add default via 192.0.2.1")
        nft = os.path.join(workdir, "router.nft")
        with open(nft, "w") as f:
            f.write(MINIUPNPD_NFT)
        self.sh(self.router, f"nft -f {nft}")
        conf = os.path.join(workdir, "miniupnpd.conf")
        with open(conf, "w") as f:
            f.write(MINIUPNPD_CONF.format(lease_file=os.path.join(workdir, "upnp.leases")))
        self.conf = conf

    def start_daemons(self, workdir: str) -> None:
        turn = ["turnserver", "-n", "--no-cli", "--log-file=stdout", "--simple-log",
                "--listening-ip=203.0.113.1", "--listening-ip=203.0.113.9", "--listening-port=3478",
                "--alt-listening-port=3479", "--no-tls", "--no-dtls", "--stun-only",
                f"--userdb={os.path.join(workdir, 'turn.db')}", f"--pidfile={os.path.join(workdir, 'turn.pid')}"]
        self.turn = self.spawn_cmd(self.inet, turn, os.path.join(workdir, "turn.log"))
        time.sleep(1.0)  # coturn binds quickly; miniupnpd's STUN probe retries for 3 s anyway
        self.miniupnpd = self.spawn_cmd(
            self.router, ["miniupnpd", "-d", "-f", self.conf, "-P", os.path.join(workdir, "miniupnpd.pid")],
            os.path.join(workdir, "miniupnpd.log"))

    def spawn_cmd(self, ns: str, cmd: list, log_path: str) -> subprocess.Popen:
        log = open(log_path, "wb")
        p = subprocess.Popen(["ip", "netns", "exec", ns, *cmd], stdout=log, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs.append(p)
        return p


def start_matrix(tmpdir: str) -> NatMatrixLab:
    """Build the matrix lab and start its relay (caller must ``close()``)."""
    lab = NatMatrixLab()
    try:
        lab.build()
        lab.workdir = tmpdir
        lab.relay_proc = lab.node(lab.relay_ns, "relay", tmpdir, "--lifetime", "170")
        if not wait_for(lambda: os.path.exists(os.path.join(tmpdir, "relay.cert")), 20):
            raise RuntimeError("relay did not start")
    except BaseException:
        lab.close()
        raise
    return lab


def run_pair(lab: NatMatrixLab, kind_a: str, kind_b: str, tag: str, port_offset: int,
             timeout: float = 45.0) -> tuple:
    """Peer A behind ``kind_a`` establishes to peer B behind ``kind_b``; returns both results."""
    import json

    lab.set_nat("a", kind_a)
    lab.set_nat("b", kind_b)
    w = lab.workdir
    a_name, b_name = f"a{tag}", f"b{tag}"
    b = lab.node(lab.peer_ns["b"], "listener", w, "--local-port", str(41000 + port_offset), "--lifetime", "40",
                 "--udp-port", str(43000 + port_offset), name=b_name)
    a = lab.node(lab.peer_ns["a"], "dialer", w, "--local-port", str(42000 + port_offset), "--target", b_name,
                 "--lifetime", "40", "--udp-port", str(44000 + port_offset), name=a_name)
    a_json, b_json = os.path.join(w, f"{a_name}.json"), os.path.join(w, f"{b_name}.json")
    try:
        done = wait_for(lambda: os.path.exists(a_json) and os.path.exists(b_json)
                        or a.poll() not in (None, 0) or b.poll() not in (None, 0), timeout)
        if not (done and os.path.exists(a_json) and os.path.exists(b_json)):
            logs = {n: open(os.path.join(w, f"{n}.log")).read()[-2000:] for n in (a_name, b_name)}
            raise AssertionError(f"peers did not finish: {logs}")
        with open(a_json) as fa, open(b_json) as fb:
            return json.load(fa), json.load(fb)
    finally:
        lab.stop(a)
        lab.stop(b)


# -- measuring a NAT model ------------------------------------------------------------------
PROBE = os.path.join(REPO, "tests", "netns", "nat_probe.py")
#: coturn in the relay namespace: RFC 5780 needs two addresses; the relay host has one
#: towards each NAT (203.0.113.1 and .5).  Ports beside the relay's own STUN server (3478).
COTURN_PORT = 3480


def start_coturn(lab: NatMatrixLab) -> bool:
    """Start coturn (STUN only, CHANGE-REQUEST capable) in the relay namespace; False when
    ``turnserver`` is not installed or does not answer within 10 s."""
    if shutil.which("turnserver") is None:
        return False
    w = lab.workdir
    cmd = ["ip", "netns", "exec", lab.relay_ns, "turnserver", "-n", "--no-cli", "--log-file=stdout",
           "--simple-log", "--listening-ip=203.0.113.1", "--listening-ip=203.0.113.5",
           f"--listening-port={COTURN_PORT}", f"--alt-listening-port={COTURN_PORT + 1}", "--no-tls", "--no-dtls",
           "--no-tcp", "--stun-only", f"--userdb={os.path.join(w, 'turn.db')}",
           f"--pidfile={os.path.join(w, 'turn.pid')}"]
    log = open(os.path.join(w, "turn.log"), "wb")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    log.close()
    lab.procs.append(p)
    lab.coturn = p
    # Ready when all four endpoints (2 addresses x 2 ports) are bound (coturn binds each
    # once per UDP thread, hence the distinct count).
    return wait_for(lambda: p.poll() is None and lab.sh(
        lab.relay_ns, f"ss -Hlun 'sport >= :{COTURN_PORT} and sport <= :{COTURN_PORT + 1}'"
        " | awk '{print $4}' | sort -u | wc -l", check=False).stdout.strip() == "4", 10, 0.2)


def _probe_json(lab: NatMatrixLab, ns: str, role: str, out: str, *args: str, timeout: float = 10.0) -> dict:
    import json

    path = os.path.join(lab.workdir, out)
    p = lab.spawn(ns, [PROBE, role, "--out", path, *args], path + ".log")
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        lab.stop(p)
    if not os.path.exists(path):
        raise AssertionError(f"{role} probe wrote nothing: {open(path + '.log').read()[-2000:]}")
    with open(path) as f:
        return json.load(f)


def probe_filtering(lab: NatMatrixLab, kind: str, port: int, *, primary: str = "203.0.113.1",
                    other: str = "203.0.113.5", rport: int = 7101, install: bool = True) -> tuple:
    """Install ``kind`` on NAT A (unless ``install`` is False); the inner host sends from
    UDP ``port`` to ``primary:rport``, and the relay host answers from that endpoint,
    from ``primary:rport+1`` and from ``other:rport``.  Returns the mapped source the
    relay host saw and the set of answers that got through."""
    import json

    if install:
        lab.set_nat("a", kind)
    tag = f"filt-{kind}-{port}"
    out = lab.spawn(lab.relay_ns, [PROBE, "outside", "--out", os.path.join(lab.workdir, tag + "-out.json"),
                                   "--primary", f"{primary}:{rport}", "--other-port", f"{primary}:{rport + 1}",
                                   "--other-addr", f"{other}:{rport}", "--seconds", "4"],
                    os.path.join(lab.workdir, tag + "-out.log"))
    try:
        time.sleep(0.3)  # let the outside bind before the first datagram (it is resent anyway)
        inside = _probe_json(lab, lab.peer_ns["a"], "inside", tag + "-in.json", "--port", str(port),
                             "--to", f"{primary}:{rport}", "--seconds", "2")
        out.wait(6)
    finally:
        lab.stop(out)
    with open(os.path.join(lab.workdir, tag + "-out.json")) as f:
        mapped = json.load(f)["mapped"]
    return mapped, set(inside["received"])


def discover_behaviour(lab: NatMatrixLab, kind: str, port: int) -> dict:
    """Install ``kind`` on NAT A and run our RFC 5780 discovery against the lab's coturn."""
    lab.set_nat("a", kind)
    return _probe_json(lab, lab.peer_ns["a"], "discover", f"disc-{kind}-{port}.json", "--port", str(port),
                       "--server", f"203.0.113.1:{COTURN_PORT}", "--seconds", "8", timeout=12)
