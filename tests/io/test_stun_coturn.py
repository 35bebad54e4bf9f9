"""Interop with Debian's coturn (``/usr/bin/turnserver``), started by the fixture on
loopback with two listening IPs (127.0.0.1, 127.0.0.2) and an alternate port so that
it does RFC 5780, and with long-term credentials ``u:p`` in realm ``qudag.test``.

What coturn shows:
* Binding: our mapped address is exactly our loopback socket.
* Authentication: coturn answers Binding requests without looking at credentials (and
  without MESSAGE-INTEGRITY), so a short-term-authenticated Binding cannot succeed
  against it -- our client drops the unsigned answer (test below).  The authenticated
  exchange coturn does support is a TURN Allocate with long-term credentials
  (RFC 8656 §7.2, RFC 8489 §9.2): 401 with REALM/NONCE, our retry with
  MESSAGE-INTEGRITY, and a success response whose MESSAGE-INTEGRITY we verify.
* RFC 5780: OTHER-ADDRESS/RESPONSE-ORIGIN and CHANGE-REQUEST work; loopback is
  endpoint-independent mapping and filtering.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time

import pytest

from qudag_core.nat import stun as S
from qudag_core.nat.events import AllocateSucceeded, BindingSucceeded, FilteringBehaviour, MappingBehaviour
from qudag_core.nat.stun_client import LongTermCredentials, ShortTermCredentials, StunClient
from qudag_io.stun import StunRequestFailed, discover_nat_behaviour, stun_binding, stun_transaction

TURNSERVER = "/usr/bin/turnserver"
REALM = "qudag.test"
uvloop = pytest.importorskip("uvloop")

pytestmark = pytest.mark.skipif(
    shutil.which(TURNSERVER) is None and not os.path.exists(TURNSERVER),
    reason=f"coturn not installed ({TURNSERVER} missing; the Makefile installs it in CI)",
)


def _port_free_on_both(port):
    socks = []
    try:
        for host in ("127.0.0.1", "127.0.0.2"):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((host, port))
        return True
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()


def _pick_ports():
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            p1 = s.getsockname()[1]
        if p1 < 65000 and _port_free_on_both(p1) and _port_free_on_both(p1 + 1):
            return p1, p1 + 1
    raise RuntimeError("no free UDP port pair on 127.0.0.1/127.0.0.2")


def _answers(addr, deadline):
    """Poll coturn with Binding requests until it answers or the deadline passes."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            tid = os.urandom(12)
            s.sendto(S.encode_message(S.METHOD_BINDING, S.CLASS_REQUEST, tid), addr)
            try:
                data, _ = s.recvfrom(2048)
            except (socket.timeout, ConnectionRefusedError):
                continue
            if S.parse_message(data).transaction_id == tid:
                return True
    return False


@pytest.fixture(scope="module")
def coturn(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coturn")
    p1, p2 = _pick_ports()
    log = open(tmp / "turnserver.log", "wb")
    cmd = [
        TURNSERVER, "-n", "--no-cli", "--log-file=stdout", "--simple-log",
        "--listening-ip=127.0.0.1", "--listening-ip=127.0.0.2",
        f"--listening-port={p1}", f"--alt-listening-port={p2}",
        "--no-tls", "--no-dtls", "--no-tcp", "--relay-ip=127.0.0.1",
        "--lt-cred-mech", "--user=u:p", f"--realm={REALM}",
        f"--pidfile={tmp / 'turnserver.pid'}", f"--userdb={tmp / 'turndb.sqlite'}",
    ]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        if not _answers(("127.0.0.1", p1), deadline):
            proc.poll()
            log.flush()
            tail = (tmp / "turnserver.log").read_bytes()[-2000:].decode("utf-8", "replace")
            pytest.fail(f"coturn did not answer within 15 s (exit={proc.returncode}):\n{tail}")
        yield {"primary": ("127.0.0.1", p1), "alternate": ("127.0.0.2", p2), "proc": proc}
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 30))

    return runner


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_binding_mapped_address(coturn, run):
    port = _free_port()
    mapped = run(stun_binding(coturn["primary"], local_addr=("127.0.0.1", port), timeout=10))
    assert mapped == ("127.0.0.1", port)


def test_binding_rfc5780_attributes(coturn, run):
    ev = run(stun_transaction(coturn["primary"], local_addr=("127.0.0.1", 0), timeout=10))
    assert isinstance(ev, BindingSucceeded)
    assert ev.other_address == coturn["alternate"]
    assert ev.response_origin == coturn["primary"] and ev.source == coturn["primary"]
    assert ev.message.text(S.Attr.SOFTWARE).startswith("Coturn")


def test_allocate_with_long_term_credentials(coturn, run):
    creds = LongTermCredentials(username="u", password="p")
    ev = run(stun_transaction(coturn["primary"], method=S.METHOD_ALLOCATE, credentials=creds,
                              attributes=[(S.Attr.REQUESTED_TRANSPORT, S.encode_requested_transport(17))],
                              local_addr=("127.0.0.1", 0), timeout=10))
    assert isinstance(ev, AllocateSucceeded)
    # The success response was signed by coturn with our long-term key, and the client
    # only delivers it because that MESSAGE-INTEGRITY verified; check it again here.
    key = S.long_term_key("u", REALM, "p")
    assert ev.message.has_integrity and ev.message.verify(key)
    assert not ev.message.verify(S.long_term_key("u", REALM, "q"))
    assert ev.relayed_address[0] == "127.0.0.1" and ev.relayed_address[1] > 0
    assert ev.mapped_address[0] == "127.0.0.1" and ev.lifetime and ev.lifetime > 0


def test_allocate_wrong_password_is_refused(coturn, run):
    creds = LongTermCredentials(username="u", password="wrong")

    async def main():
        with pytest.raises(StunRequestFailed) as info:
            await stun_transaction(coturn["primary"], method=S.METHOD_ALLOCATE, credentials=creds,
                                   attributes=[(S.Attr.REQUESTED_TRANSPORT, S.encode_requested_transport(17))],
                                   local_addr=("127.0.0.1", 0), timeout=10)
        return info.value

    err = run(main())
    assert err.error_code == 401


def test_short_term_binding_is_not_authenticated_by_coturn(coturn, rng):
    """coturn answers a credentialed Binding without MESSAGE-INTEGRITY; the client must
    drop that answer (RFC 8489 §9.1.4) rather than trust it."""
    client = StunClient(rng=rng)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        client.request(coturn["primary"], 0.0, credentials=ShortTermCredentials(username="u", password="p"))
        [(data, addr)] = client.datagrams_to_send(0.0)
        s.sendto(data, addr)
        resp, src = s.recvfrom(2048)
    assert S.parse_message(resp).msg_class == S.CLASS_SUCCESS and not S.parse_message(resp).has_integrity
    assert client.receive_datagram(resp, src, 0.01) == []
    assert client.stats["dropped_integrity"] == 1 and client.pending == 1


def test_change_request_answers_come_from_the_alternate(coturn, rng):
    """RFC 5780 §6.1 against coturn, at the sans-IO level: the CHANGE-REQUEST answers
    come from the other IP/port, and a client not told to expect that drops them."""
    primary, alternate = coturn["primary"], coturn["alternate"]
    client = StunClient(rng=rng)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.settimeout(2)
        cases = [((True, True), alternate), ((False, True), (primary[0], alternate[1]))]
        for change, expected_from in cases:
            client.request(primary, 0.0, attributes=[(S.Attr.CHANGE_REQUEST, S.encode_change_request(*change))])
            [(data, addr)] = client.datagrams_to_send(0.0)
            s.sendto(data, addr)
            resp, src = s.recvfrom(2048)
            assert src == expected_from
            assert client.receive_datagram(resp, src, 0.01) == []  # not from the server we asked
        assert client.stats["dropped_wrong_source"] == 2
        h = client.request(primary, 0.0, attributes=[(S.Attr.CHANGE_REQUEST, S.encode_change_request(True, True))],
                           expect_from=alternate)
        [(data, addr)] = client.datagrams_to_send(0.0)
        s.sendto(data, addr)
        resp, src = s.recvfrom(2048)
        [ev] = client.receive_datagram(resp, src, 0.01)
    assert isinstance(ev, BindingSucceeded) and ev.transaction_id == h and ev.response_origin == alternate


def test_nat_behaviour_against_coturn(coturn, run):
    r = run(discover_nat_behaviour(coturn["primary"], local_addr=("127.0.0.1", 0), rto=0.2, timeout=20))
    assert r.alternate_offered and r.nat_detected is False
    assert r.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert r.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT
    assert r.note == ""


def test_nat_behaviour_mapping_tests_run_against_coturn(coturn, run):
    """From a wildcard-bound socket the local address is unknown, so the mapping tests
    II and III are not skipped: both coturn addresses see the same mapping."""
    r = run(discover_nat_behaviour(coturn["primary"], local_addr=("0.0.0.0", 0), rto=0.2, timeout=20))
    assert r.nat_detected is None and r.alternate_offered
    assert r.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert r.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT
    assert r.mapped_address[0] == "127.0.0.1"
