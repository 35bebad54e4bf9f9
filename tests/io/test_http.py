"""The metrics/status HTTP server over real loopback sockets, under asyncio and uvloop.

Requests are written with an h11 client connection (so framing is checked from the
other side too); the malformed-input tests write raw bytes.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
import shutil
import subprocess
import time

import h11
import pytest
import uvloop

from qudag_io.http import HttpLimits, start_http_server
from qudag_io.metrics import NodeMetrics

PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool") else None)

FAST = HttpLimits(request_timeout=0.5, idle_timeout=0.5, linger_timeout=0.5, shutdown_grace=0.5)


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """``run(coro_fn)``: run it on a fresh loop of the parametrised kind, bounded in time;
    fails if anything reached the loop's exception handler."""
    factory = asyncio.new_event_loop if request.param == "asyncio" else uvloop.new_event_loop

    def runner(coro_fn, timeout: float = 40.0):
        errors: list[dict] = []

        async def main():
            asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: errors.append(ctx))
            async with asyncio.timeout(timeout):
                return await coro_fn()

        with asyncio.Runner(loop_factory=factory) as r:
            result = r.run(main())
        assert not errors, errors
        return result

    return runner


@pytest.fixture
def http_log(caplog):
    caplog.set_level(logging.DEBUG, logger="qudag.http")
    return caplog


def no_tracebacks(caplog) -> None:
    bad = [r for r in caplog.records if r.name == "qudag.http" and (r.exc_info or r.levelno >= logging.WARNING)]
    assert not bad, [r.getMessage() for r in bad]


class Client:
    """One keep-alive HTTP/1.1 connection, framed by an h11 client."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> "Client":
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def request(self, method: str, target: str, headers=(), body: bytes = b"") -> tuple[h11.Response, bytes]:
        if self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        hdrs = [("Host", "node"), *headers]
        if body:
            hdrs.append(("Content-Length", str(len(body))))
        out = self.conn.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            out += self.conn.send(h11.Data(data=body))
        out += self.conn.send(h11.EndOfMessage())
        self.writer.write(out)
        return await self.response()

    async def response(self) -> tuple[h11.Response, bytes]:
        response = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await asyncio.wait_for(self.reader.read(65536), 5))
                continue
            if isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert response is not None
                return response, body
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def at_eof(self, timeout: float = 2.0) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


def header(response: h11.Response, name: bytes) -> bytes | None:
    for n, v in response.headers:
        if n == name:
            return v
    return None


def status_provider_factory():
    started = time.monotonic()
    calls = []

    def provider() -> dict:
        calls.append(1)
        return {
            "node_id": bytes(range(8)),
            "peers": 3,
            "routing_table_size": 17,
            "circuits": {"active": 2},
            "uptime": time.monotonic() - started,
            "calls": len(calls),
        }

    return provider


# -- the endpoints ----------------------------------------------------------------------------


def test_endpoints(run):
    async def main():
        metrics = NodeMetrics()
        metrics.handshake_ok()
        metrics.dht_op("get_peers", "ok", 0.03)
        server = await start_http_server(metrics=metrics, status_provider=status_provider_factory())
        assert server.host == "127.0.0.1"
        c = await Client.open(server.port)
        try:
            r, body = await c.request("GET", "/healthz")
            assert (r.status_code, body) == (200, b"ok")

            r, body = await c.request("GET", "/metrics")
            assert r.status_code == 200
            assert header(r, b"content-type") == b"text/plain; version=0.0.4; charset=utf-8"
            text = body.decode()
            assert "qudag_handshakes_ok_total 1.0" in text
            assert 'qudag_dht_operations_total{op="get_peers",outcome="ok"} 1.0' in text

            r, body = await c.request("GET", "/status")
            assert r.status_code == 200 and header(r, b"content-type") == b"application/json"
            status = json.loads(body)
            assert status["node_id"] == bytes(range(8)).hex()
            assert status["routing_table_size"] == 17 and status["circuits"] == {"active": 2}
            r, body = await c.request("GET", "/status?pretty=1")
            assert json.loads(body)["calls"] == status["calls"] + 1  # produced per request

            r, body = await c.request("GET", "/nope")
            assert r.status_code == 404
            r, body = await c.request("GET", "http://node/healthz")  # absolute-form target
            assert (r.status_code, body) == (200, b"ok")
            for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
                r, body = await c.request(method, "/metrics", body=b"x=1" if method != "DELETE" else b"")
                assert r.status_code == 405 and header(r, b"allow") == b"GET, HEAD"
            # Still the same connection: keep-alive held through errors that allow it.
            r, body = await c.request("GET", "/healthz")
            assert r.status_code == 200
        finally:
            c.close()
            await server.close()

    run(main)


def test_head_matches_get_without_body(run):
    async def main():
        server = await start_http_server(metrics=NodeMetrics(), status_provider=lambda: {"a": 1})
        c = await Client.open(server.port)
        try:
            for path in ("/healthz", "/status", "/metrics", "/missing"):
                get, get_body = await c.request("GET", path)
                head, head_body = await c.request("HEAD", path)
                assert head.status_code == get.status_code
                assert head_body == b""
                assert int(header(head, b"content-length")) == len(get_body)
                assert header(head, b"content-type") == header(get, b"content-type")
        finally:
            c.close()
            await server.close()

    run(main)


def test_keep_alive_two_requests_and_pipelining(run):
    async def main():
        server = await start_http_server(metrics=NodeMetrics())
        try:
            c = await Client.open(server.port)
            r1, b1 = await c.request("GET", "/healthz")
            r2, b2 = await c.request("GET", "/metrics")
            assert (r1.status_code, b1, r2.status_code) == (200, b"ok", 200)
            assert server.connection_count == 1
            c.close()

            # Pipelined: three requests in one write are answered in order on one connection.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
            writer.write(req + b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" + req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            data = await asyncio.wait_for(reader.read(), 5)
            assert status_codes(data) == [200, 404, 200]
            writer.close()
        finally:
            await server.close()

    run(main)


def test_openmetrics_negotiation(run):
    async def main():
        metrics = NodeMetrics()
        metrics.resolver_cache_hit()
        server = await start_http_server(metrics=metrics)
        c = await Client.open(server.port)
        try:
            r, body = await c.request("GET", "/metrics", headers=[("Accept", "application/openmetrics-text; version=1.0.0\x7f; q=0.9")])
            assert header(r, b"content-type") == b"application/openmetrics-text; version=1.0.0; charset=utf-8"
            assert body.endswith(b"# EOF\n") and b"qudag_resolver_cache_hits_total 1.0" in body
        finally:
            c.close()
            await server.close()

    run(main)


def test_paths_without_a_source_are_404_and_nodes_do_not_share_metrics(run):
    async def main():
        a, b = NodeMetrics(), NodeMetrics()
        a.circuit_built()
        bare = await start_http_server()
        sa = await start_http_server(metrics=a)
        sb = await start_http_server(metrics=b)
        clients = [await Client.open(s.port) for s in (bare, sa, sb)]
        try:
            assert (await clients[0].request("GET", "/metrics"))[0].status_code == 404
            assert (await clients[0].request("GET", "/status"))[0].status_code == 404
            assert (await clients[0].request("GET", "/healthz"))[0].status_code == 200
            body_a = (await clients[1].request("GET", "/metrics"))[1]
            body_b = (await clients[2].request("GET", "/metrics"))[1]
            assert b'qudag_circuits_built_total{role="client"} 1.0' in body_a
            assert b'qudag_circuits_built_total{role="client"} 0.0' in body_b
        finally:
            for c in clients:
                c.close()
            for s in (bare, sa, sb):
                await s.close()

    run(main)


def test_failing_status_provider_is_500_and_server_carries_on(run, caplog):
    def broken() -> dict:
        raise RuntimeError("node bug")

    async def main():
        server = await start_http_server(status_provider=broken)
        c = await Client.open(server.port)
        try:
            assert (await c.request("GET", "/status"))[0].status_code == 500
            assert (await c.request("GET", "/healthz"))[0].status_code == 200
        finally:
            c.close()
            await server.close()

    with caplog.at_level(logging.ERROR, logger="qudag.http"):
        run(main)
    assert any("node bug" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_promtool_accepts_served_metrics(run):
    if PROMTOOL is None:
        pytest.skip("promtool not installed (Debian package 'prometheus'; CI installs it)")

    async def main():
        metrics = NodeMetrics()
        for i in range(10):
            metrics.connection_opened("outbound")
            metrics.dht_op("find_node", "ok", i / 100)
            metrics.handshake_failed(f"10.0.0.{i}")
        server = await start_http_server(metrics=metrics)
        c = await Client.open(server.port)
        try:
            return (await c.request("GET", "/metrics"))[1]
        finally:
            c.close()
            await server.close()

    body = run(main)
    proc = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert b"10.0.0." not in body


# -- limits ---------------------------------------------------------------------------------------


def test_defaults():
    limits = HttpLimits()
    assert limits.max_incomplete_event_size == 8 * 1024
    assert limits.request_timeout == 5.0


async def raw_exchange(port: int, data: bytes, *, eof: bool = True, timeout: float = 5.0) -> bytes | None:
    """Write *data*, optionally half-close, read until the server closes.

    Returns what was read (``b""`` if the server closed without answering), or None if
    the server neither answered nor closed within *timeout* (a hang).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    got = bytearray()
    try:
        try:
            writer.write(data)
            if eof:
                writer.write_eof()
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # the server may already have closed on the first bad bytes
        try:
            async with asyncio.timeout(timeout):
                while chunk := await reader.read(65536):
                    got += chunk
        except TimeoutError:
            return None
        except (ConnectionError, OSError):
            pass  # reset after an early close: also an end
        return bytes(got)
    finally:
        writer.close()


def status_codes(data: bytes) -> list[int]:
    """Status codes of the responses in *data* (our bodies never contain a status line)."""
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def test_oversized_headers_431_and_bodies_413(run, http_log):
    async def main():
        server = await start_http_server(limits=FAST)
        port = server.port
        try:
            big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 9000 + b"\r\n\r\n"
            assert status_codes(await raw_exchange(port, big)) == [431]
            many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 2000 + b"\r\n"
            assert status_codes(await raw_exchange(port, many)) == [431]
            long_target = b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
            assert status_codes(await raw_exchange(port, long_target)) == [431]
            announced = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
            assert status_codes(await raw_exchange(port, announced, eof=False)) == [413]
            small = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
            assert status_codes(await raw_exchange(port, small)) == [200]
            chunked_ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            assert status_codes(await raw_exchange(port, chunked_ok)) == [200]
            chunk = b"400\r\n" + b"z" * 0x400 + b"\r\n"
            chunked_big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 4
            assert status_codes(await raw_exchange(port, chunked_big, eof=False)) == [413]
            waits = b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nExpect: 100-continue\r\n\r\n"
            assert status_codes(await raw_exchange(port, waits, eof=False)) == [405]
            # Still serving.
            c = await Client.open(port)
            assert (await c.request("GET", "/healthz"))[0].status_code == 200
            c.close()
        finally:
            await server.close()

    run(main)
    no_tracebacks(http_log)


def test_max_requests_per_connection(run):
    async def main():
        server = await start_http_server(limits=HttpLimits(max_requests_per_connection=3))
        c = await Client.open(server.port)
        try:
            for _ in range(2):
                r, _ = await c.request("GET", "/healthz")
                assert header(r, b"connection") is None
            r, _ = await c.request("GET", "/healthz")
            assert r.status_code == 200 and header(r, b"connection") == b"close"
            assert await c.at_eof()
        finally:
            c.close()
            await server.close()

    run(main)


def test_connection_limit(run):
    async def main():
        metrics = NodeMetrics()
        server = await start_http_server(metrics=metrics, limits=HttpLimits(max_connections=2))
        a, b = await Client.open(server.port), await Client.open(server.port)
        try:
            for c in (a, b):
                assert (await c.request("GET", "/healthz"))[0].status_code == 200
            assert server.connection_count == 2
            over = await raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_codes(over) == [503]
            assert metrics.registry.get_sample_value("qudag_ratelimit_drops_total", {"limiter": "http"}) == 1
            a.close()
            async with asyncio.timeout(5):
                while server.connection_count != 1:
                    await asyncio.sleep(0.01)
            c = await Client.open(server.port)
            assert (await c.request("GET", "/healthz"))[0].status_code == 200
            c.close()
        finally:
            b.close()
            await server.close()

    run(main)


def test_slow_client_cut_off(run, http_log):
    """One header byte per second: cut off (408) after request_timeout = 0.5 s."""
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

    async def trickle(writer: asyncio.StreamWriter) -> None:
        try:
            for i in range(len(request)):
                writer.write(request[i : i + 1])
                await writer.drain()
                await asyncio.sleep(1.0)
        except (ConnectionError, OSError):
            pass

    async def main():
        server = await start_http_server(limits=HttpLimits(request_timeout=0.5, idle_timeout=30.0))
        try:
            # On a fresh connection.
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            t0 = time.monotonic()
            task = asyncio.create_task(trickle(writer))
            data = await asyncio.wait_for(reader.read(), 3)
            elapsed = time.monotonic() - t0
            task.cancel()
            writer.close()
            assert status_codes(data) == [408]
            assert 0.4 <= elapsed < 1.5, elapsed

            # On a kept-alive connection: the idle wait is long, but once a request has
            # begun it must complete within request_timeout.
            c = await Client.open(server.port)
            assert (await c.request("GET", "/healthz"))[0].status_code == 200
            await asyncio.sleep(0.7)  # idle longer than request_timeout: still open
            t0 = time.monotonic()
            task = asyncio.create_task(trickle(c.writer))
            data = await asyncio.wait_for(c.reader.read(), 3)
            elapsed = time.monotonic() - t0
            task.cancel()
            c.close()
            assert status_codes(data) == [408]
            assert 0.4 <= elapsed < 1.5, elapsed
            assert server.connection_count <= 1
        finally:
            await server.close()

    run(main)
    no_tracebacks(http_log)


def test_idle_connections_closed_silently(run):
    async def main():
        server = await start_http_server(limits=FAST)
        try:
            t0 = time.monotonic()
            assert await raw_exchange(server.port, b"", eof=False, timeout=3) == b""
            assert 0.4 <= time.monotonic() - t0 < 1.5
            c = await Client.open(server.port)
            assert (await c.request("GET", "/healthz"))[0].status_code == 200
            assert await c.at_eof(timeout=3)
            c.close()
        finally:
            await server.close()

    run(main)


def test_client_not_reading_is_backpressured(run):
    """500 pipelined /metrics requests (about 12 MB of responses) from a client that does
    not read: the server's write buffer stays bounded, and everything arrives once it does."""
    n = 500

    async def main():
        metrics = NodeMetrics()
        server = await start_http_server(metrics=metrics, limits=HttpLimits(request_timeout=5.0, idle_timeout=5.0))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            one = len(metrics.render())
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * n)
            await asyncio.sleep(0.5)
            (proto,) = server._clients
            buffered = proto.transport.get_write_buffer_size()
            print(f"one /metrics response {one} B; server write buffer while client not reading: {buffered} B")
            assert buffered < 2 * one + 256 * 1024
            got = 0
            data = bytearray()
            async with asyncio.timeout(20):
                while got < n:
                    data += await reader.read(1 << 20)
                    got = data.count(b"HTTP/1.1 200 OK\r\n")
            assert got == n
        finally:
            writer.close()
            await server.close()

    run(main)


def test_pipelined_burst_answered_in_order(run):
    """5,000 pipelined requests in one write (a mix of paths) are all answered, in order."""
    paths = [b"/healthz", b"/nope", b"/status"]
    n = 5000

    async def main():
        server = await start_http_server(status_provider=lambda: {"n": 1}, limits=HttpLimits(max_requests_per_connection=n))
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"".join(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % paths[i % 3] for i in range(n)))
            t0 = time.monotonic()
            data = await asyncio.wait_for(reader.read(), 20)  # the n-th response closes
            elapsed = time.monotonic() - t0
        finally:
            writer.close()
            await server.close()
        assert status_codes(data) == [(200, 404, 200)[i % 3] for i in range(n)]
        return elapsed

    elapsed = run(main)
    print(f"{n} pipelined requests answered in {elapsed:.2f}s")


def test_close_ends_client_connections(run):
    async def main():
        server = await start_http_server(limits=HttpLimits(shutdown_grace=0.5))
        port = server.port
        clients = [await Client.open(port) for _ in range(3)]
        for c in clients:
            assert (await c.request("GET", "/healthz"))[0].status_code == 200
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(b"GET /heal")
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        await server.close()
        assert time.monotonic() - t0 < 1.5
        for c in clients:
            assert await c.at_eof()
            c.close()
        assert await Client(*half).at_eof()
        half[1].close()
        assert server.connection_count == 0
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run(main)


# -- 1,000 malformed requests ------------------------------------------------------------------

VALID = b"GET /healthz HTTP/1.1\r\nHost: node\r\n\r\n"


def malformed_corpus(n: int, seed: int = 20261124) -> list[tuple[str, bytes, bool]]:
    """(kind, bytes, half_close) cases: broken request lines, bad headers, oversized
    headers, invalid chunking, binary garbage, truncated requests and bad bodies."""
    rnd = random.Random(seed)

    def token(k: int) -> bytes:
        return bytes(rnd.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-!#$%&'*+.^_`|~") for _ in range(k))

    def noise(k: int) -> bytes:
        return rnd.randbytes(k)

    request_lines = [
        b"GET\r\n", b"GET /healthz\r\n", b"GET /healthz HTTP/9.9\r\n", b"GET /healthz HTTP/1.1 extra\r\n",
        b"GET  /healthz  HTTP/1.1\r\n", b" GET /healthz HTTP/1.1\r\n", b"GET /health\x00z HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.1\n", b"GET /he alth HTTP/1.1\r\n", b"G\xe9T /healthz HTTP/1.1\r\n",
        b"GET /healthz HTTP/1.\r\n", b"GET /healthz HTTPS/1.1\r\n", b"\r\n\r\n\r\n", b"GET\t/healthz\tHTTP/1.1\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"GET /\x7f HTTP/1.1\r\n", b"CONNECT node:443 HTTP/1.1\r\n",
    ]
    bad_headers = [
        b"Host node\r\n", b"Host: node\r\nNoColon\r\n", b"Host : node\r\n", b"Host: node\r\n folded: yes\r\n",
        b"Host: no\x00de\r\n", b"Host: a\r\nHost: b\r\n", b"Host: node\r\nContent-Length: 1\r\nContent-Length: 2\r\n",
        b"Host: node\r\nContent-Length: -1\r\n", b"Host: node\r\nContent-Length: 1e3\r\n",
        b"Host: node\r\nContent-Length: 99999999999999999999999\r\n", b"Host: node\r\nTransfer-Encoding: gzip\r\n",
        b"Host: node\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n", b"\xff\xfe: \xff\r\nHost: node\r\n",
        b"Host: node\r\nX: \r\r\n", b"Host: node\r\n: empty-name\r\n", b"Host: node\r\nConnection: upgrade\r\nUpgrade: h2c\r\n",
        b"",  # no Host header at all
    ]
    chunk_bodies = [
        b"zz\r\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n", b"5\r\nhel", b"fffffffffffffffffffff\r\n", b"-5\r\nhello\r\n",
        b"5;ext=\x00\r\nhello\r\n0\r\n\r\n", b"5\r\nhello\r\n0\r\nTrailer\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n",
        b"5 \r\nhello\r\n0\r\n\r\n", b"\r\n",
    ]
    cases: list[tuple[str, bytes, bool]] = []
    kinds = ["request_line", "header", "oversized", "chunking", "garbage", "truncated", "body", "after_valid", "random_edit"]
    for i in range(n):
        kind = kinds[i % len(kinds)]
        if kind == "request_line":
            data = rnd.choice(request_lines) + b"Host: node\r\n\r\n"
            if rnd.random() < 0.3:
                data = token(rnd.randrange(1, 12)) + b" " + token(rnd.randrange(0, 20)) + b" " + token(rnd.randrange(0, 10)) + b"\r\n\r\n"
        elif kind == "header":
            data = b"GET /healthz HTTP/1.1\r\n" + rnd.choice(bad_headers) + b"\r\n"
        elif kind == "oversized":
            size = rnd.choice([8 * 1024, 9000, 20_000, 70_000])
            if rnd.random() < 0.5:
                data = b"GET /healthz HTTP/1.1\r\nHost: node\r\nX-Big: " + b"b" * size + b"\r\n\r\n"
            else:
                data = b"GET /healthz HTTP/1.1\r\nHost: node\r\n" + b"X-" + token(4) + b": v\r\n" * (size // 10) + b"\r\n"
        elif kind == "chunking":
            data = b"GET /healthz HTTP/1.1\r\nHost: node\r\nTransfer-Encoding: chunked\r\n\r\n" + rnd.choice(chunk_bodies)
        elif kind == "garbage":
            data = rnd.choice([noise(rnd.randrange(1, 2000)), b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + noise(200), b"\x00" * 64])
        elif kind == "truncated":
            full = VALID if rnd.random() < 0.5 else b"GET /status HTTP/1.1\r\nHost: node\r\nContent-Length: 10\r\n\r\n01234"
            data = full[: rnd.randrange(1, len(full))]
        elif kind == "body":
            data = rnd.choice([
                b"GET /healthz HTTP/1.1\r\nHost: node\r\nContent-Length: 100000\r\n\r\n" + noise(100),
                b"GET /healthz HTTP/1.1\r\nHost: node\r\nContent-Length: 5\r\n\r\nab",
                b"POST /metrics HTTP/1.1\r\nHost: node\r\nContent-Length: 2000\r\n\r\n" + noise(2000),
            ])
        elif kind == "after_valid":
            data = VALID + rnd.choice([noise(50), b"GET / HTTP/1.1\r\nHost\r\n\r\n", b"\r\n\r\nxx", VALID[:20]])
        else:  # random byte edits of a valid request
            buf = bytearray(VALID)
            for _ in range(rnd.randrange(1, 4)):
                buf[rnd.randrange(len(buf))] = rnd.randrange(256)
            data = bytes(buf)
        # Mostly half-close after sending (fast); one in eight leaves the connection open,
        # so the request timeout has to end it.
        cases.append((kind, data, i % 8 != 0))
    return cases


def test_malformed_corpus_is_covered():
    cases = malformed_corpus(1000)
    assert len(cases) == 1000 and len({d for _, d, _ in cases}) > 400
    assert {k for k, _, _ in cases} >= {"request_line", "header", "oversized", "chunking", "garbage", "truncated"}


def test_1000_malformed_requests_leave_server_serving(run, http_log):
    cases = malformed_corpus(1000)
    allowed = {200, 400, 404, 405, 408, 413, 431}

    async def main():
        metrics = NodeMetrics()
        server = await start_http_server(metrics=metrics, status_provider=lambda: {"ok": True}, limits=FAST)
        sem = asyncio.Semaphore(16)
        seen: dict[int, int] = {}
        hangs: list[tuple[str, bytes]] = []
        bad: list[tuple[str, bytes, bytes]] = []

        async def one(kind: str, data: bytes, eof: bool) -> None:
            async with sem:
                got = await raw_exchange(server.port, data, eof=eof, timeout=3.0)
            if got is None:
                hangs.append((kind, data[:80]))
                return
            codes = status_codes(got)
            if got and (not got.startswith(b"HTTP/1.1 ") or not codes or not set(codes) <= allowed):
                bad.append((kind, data[:80], got[:80]))
            for code in codes:
                seen[code] = seen.get(code, 0) + 1

        t0 = time.monotonic()
        try:
            await asyncio.gather(*(one(*case) for case in cases))
            elapsed = time.monotonic() - t0
            assert not hangs, hangs[:5]
            assert not bad, bad[:5]
            # The corpus reached the error paths it was written for.
            assert seen.get(400, 0) > 100 and seen.get(431, 0) > 10 and seen.get(408, 0) > 10, seen
            assert seen.get(413, 0) > 0, seen
            # And the server is still serving, with every client connection gone.
            c = await Client.open(server.port)
            assert (await c.request("GET", "/healthz"))[1] == b"ok"
            assert (await c.request("GET", "/metrics"))[0].status_code == 200
            c.close()
            async with asyncio.timeout(5):
                while server.connection_count:
                    await asyncio.sleep(0.02)
            return elapsed, seen
        finally:
            await server.close()

    elapsed, seen = run(main, timeout=90)
    print(f"1000 malformed requests in {elapsed:.2f}s, responses by status: {dict(sorted(seen.items()))}")
    assert elapsed < 60, elapsed
    no_tracebacks(http_log)
