"""qudag_io.stun on real loopback sockets against qudag's own sans-IO Binding responder
(``binding_response``, four sockets on 127.0.0.1/127.0.0.2 for RFC 5780), under both
asyncio's default loop and uvloop."""
from __future__ import annotations

import asyncio
import socket

import pytest

from qudag_core.nat import stun as S
from qudag_core.nat.events import FilteringBehaviour, MappingBehaviour
from qudag_core.nat.stun_client import ShortTermCredentials
from qudag_io.stun import StunRequestFailed, discover_nat_behaviour, stun_binding, stun_transaction

uvloop = pytest.importorskip("uvloop")


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro):
        with asyncio.Runner(loop_factory=factory) as r:
            return r.run(asyncio.wait_for(coro, 20))

    return runner


def free_udp_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Responder(asyncio.DatagramProtocol):
    def __init__(self, local, other, senders, key=None):
        self.local, self.other, self.senders, self.key = local, other, senders, key
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.senders[self.local] = transport

    def datagram_received(self, data, addr):
        if self.key is not None:
            # Short-term credentials (§9.1.3): verify the request, sign the response.
            req = S.parse_message(data)
            if not req.verify(self.key):
                return
            resp = S.encode_message(1, S.CLASS_SUCCESS, req.transaction_id,
                                    [(S.Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address(*addr[:2], req.transaction_id))],
                                    integrity_key=self.key, fingerprint=True)
            self.transport.sendto(resp, addr)
            return
        r = S.binding_response(data, addr[:2], self.local, other_address=self.other)
        if r is not None:
            resp, send_from = r
            self.senders[send_from].sendto(resp, addr)


async def start_server(alternate=True, key=None):
    loop = asyncio.get_running_loop()
    senders = {}
    for _ in range(20):
        p1, p2 = free_udp_port(), free_udp_port()
        addrs = [("127.0.0.1", p1), ("127.0.0.1", p2), ("127.0.0.2", p1), ("127.0.0.2", p2)] if alternate else [("127.0.0.1", p1)]
        transports = []
        try:
            for a in addrs:
                other = (("127.0.0.2" if a[0] == "127.0.0.1" else "127.0.0.1"), (p2 if a[1] == p1 else p1)) if alternate else None
                t, _ = await loop.create_datagram_endpoint(lambda a=a, other=other: Responder(a, other, senders, key), local_addr=a)
                transports.append(t)
            return ("127.0.0.1", p1), transports
        except OSError:
            for t in transports:
                t.close()
    raise RuntimeError("no free port pair on 127.0.0.1/127.0.0.2")


def test_binding_reports_our_loopback_address(run):
    async def main():
        server, transports = await start_server(alternate=False)
        try:
            port = free_udp_port()
            mapped = await stun_binding(server, local_addr=("127.0.0.1", port), timeout=5)
            return mapped, port
        finally:
            for t in transports:
                t.close()

    mapped, port = run(main())
    assert mapped == ("127.0.0.1", port)


def test_binding_with_short_term_credentials(run):
    creds = ShortTermCredentials(username="u", password="pw")

    async def main():
        server, transports = await start_server(alternate=False, key=S.short_term_key("pw"))
        try:
            ok = await stun_binding(server, local_addr=("127.0.0.1", 0), credentials=creds, timeout=5)
            # A wrong password: the responder ignores the request, we time out.
            bad = ShortTermCredentials(username="u", password="wrong")
            with pytest.raises(TimeoutError):
                await stun_binding(server, credentials=bad, rto=0.02, rc=2, rm=2, timeout=5)
            return ok
        finally:
            for t in transports:
                t.close()

    host, port = run(main())
    assert host == "127.0.0.1" and port > 0


def test_timeout_when_nobody_answers(run):
    async def main():
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        silent.bind(("127.0.0.1", 0))
        try:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(TimeoutError):
                await stun_binding(silent.getsockname(), rto=0.02, rc=3, rm=4)
            return loop.time() - t0, silent.recv(2048) is not None
        finally:
            silent.close()

    elapsed, got = run(main())
    # 0, 20 ms, 60 ms sends then 4*20 ms: 140 ms by the RFC 8489 §6.2.1 schedule.
    assert 0.13 <= elapsed < 2.0 and got


def test_error_response_raises(run):
    async def main():
        server, transports = await start_server(alternate=False)
        try:
            with pytest.raises(StunRequestFailed) as info:
                await stun_transaction(server, attributes=[(S.Attr.CHANGE_REQUEST, S.encode_change_request(True, True))], timeout=5)
            return info.value
        finally:
            for t in transports:
                t.close()

    err = run(main())
    assert err.error_code == 420 and err.event.unknown_attributes == (S.Attr.CHANGE_REQUEST,)


def test_nat_behaviour_on_loopback(run):
    async def main():
        server, transports = await start_server()
        try:
            return await discover_nat_behaviour(server, local_addr=("127.0.0.1", 0), rto=0.1, timeout=10)
        finally:
            for t in transports:
                t.close()

    r = run(main())
    assert r.alternate_offered and r.nat_detected is False
    assert r.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert r.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT


def test_ipv6_loopback_binding(run):
    if not socket.has_ipv6:
        pytest.skip("no IPv6")

    async def main():
        loop = asyncio.get_running_loop()
        senders = {}
        try:
            t, _ = await loop.create_datagram_endpoint(lambda: Responder(("::1", 0), None, senders), local_addr=("::1", 0))
        except OSError as exc:
            pytest.skip(f"::1 unavailable: {exc}")
        port = t.get_extra_info("sockname")[1]
        senders[("::1", 0)] = t
        try:
            return await stun_binding(("::1", port), local_addr=("::1", 0), timeout=5)
        finally:
            t.close()

    host, port = run(main())
    assert host == "::1" and port > 0
