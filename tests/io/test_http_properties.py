"""Hypothesis properties of the HTTP server over real loopback sockets.

The server runs on its own event loop (asyncio's default or uvloop) in a thread, so each
Hypothesis example is a plain blocking client connection:

* any HTTP-ish byte stream, however segmented, is answered with well-formed responses of
  the expected statuses (or a silent close) and the connection ends: no hang, and
  nothing reaches the loop's exception handler or the log as a traceback;
* the statuses do not depend on how the bytes were segmented (whole vs. chunked);
* the server keeps serving valid requests throughout.
"""
from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading

import pytest
import uvloop
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qudag_io.http import HttpLimits, start_http_server
from qudag_io.metrics import NodeMetrics

ALLOWED = {200, 400, 404, 405, 408, 413, 431, 500}
LIMITS = HttpLimits(request_timeout=1.0, idle_timeout=1.0, linger_timeout=1.0, shutdown_grace=0.5)


class ServerThread:
    def __init__(self, kind: str) -> None:
        self.loop = uvloop.new_event_loop() if kind == "uvloop" else asyncio.new_event_loop()
        self.loop_errors: list[dict] = []
        self.loop.set_exception_handler(lambda loop, ctx: self.loop_errors.append(ctx))
        self.thread = threading.Thread(target=self.loop.run_forever, name=f"http-{kind}", daemon=True)
        self.thread.start()
        self.server = self.call(start_http_server(metrics=NodeMetrics(), status_provider=lambda: {"peers": 1}, limits=LIMITS))
        self.port = self.server.port

    def call(self, coro, timeout: float = 5.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        try:
            self.call(self.server.close())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


@pytest.fixture(scope="module", params=["asyncio", "uvloop"], name="srv")
def _srv(request):
    s = ServerThread(request.param)
    yield s
    s.stop()
    assert not s.loop_errors, s.loop_errors


def exchange(port: int, chunks: list[bytes], timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send *chunks*, half-close, read to EOF. Returns (bytes read, reset seen).

    Raises TimeoutError if the server neither closes nor answers in time (a hang).
    """
    reset = False
    got = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            reset = True
        try:
            while data := sock.recv(65536):
                got += data
        except ConnectionResetError:
            reset = True
        except socket.timeout:
            raise TimeoutError("server neither answered nor closed") from None
    return bytes(got), reset


def statuses(data: bytes) -> list[int]:
    return [int(c) for c in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def well_formed(data: bytes) -> None:
    if data:
        assert data.startswith(b"HTTP/1.1 "), data[:60]
        codes = statuses(data)
        assert codes and set(codes) <= ALLOWED, codes


GOOD_HEADERS = [b"Connection: close", b"Connection: keep-alive", b"Accept: */*", b"Content-Length: 3", b"X-Forwarded-For: 10.0.0.1"]
BAD_HEADERS = [
    b"Content-Length: 5000", b"Transfer-Encoding: chunked", b"Expect: 100-continue", b"Upgrade: h2c",
    b"Host:", b"Content-Length: x", b" folded", b"NoColon", b"Host: a\r\nHost: b",
]


def mostly(good: list[bytes], bad: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly well-formed, sometimes broken, so every stage of parsing is reached."""
    # (one_of would merge repeated branches, so weight with a uniform draw instead)
    return st.tuples(st.sampled_from(range(10)), st.sampled_from(good), bad).map(lambda t: t[2] if t[0] == 9 else t[1])


requests = st.builds(
    lambda m, t, v, host, hs, body: m + b" " + t + b" " + v + b"\r\n" + host + b"".join(h + b"\r\n" for h in hs) + b"\r\n" + body,
    mostly([b"GET", b"HEAD", b"POST", b"OPTIONS"], st.sampled_from([b"get", b"G T", b"", b"\x00"])),
    mostly([b"/healthz", b"/status", b"/metrics", b"/nope", b"http://node/status", b"/healthz?x=1"], st.one_of(st.sampled_from([b"*", b"/%zz"]), st.binary(max_size=16))),
    mostly([b"HTTP/1.1", b"HTTP/1.0"], st.sampled_from([b"HTTP/2.0", b"", b"HTTP/1.1 x", b"http/1.1"])),
    mostly([b"Host: node\r\n"], st.just(b"")),
    st.lists(mostly(GOOD_HEADERS, st.one_of(st.sampled_from(BAD_HEADERS), st.binary(max_size=24))), max_size=3),
    mostly([b""], st.one_of(st.sampled_from([b"3\r\nabc\r\n0\r\n\r\n", b"zz\r\n"]), st.binary(max_size=24))),
)
streams = st.tuples(
    st.lists(requests, min_size=1, max_size=3).map(b"".join),
    st.one_of(st.just(b""), st.just(b""), st.binary(max_size=16)),
).map(lambda t: t[0] + t[1])


def split(data: bytes, sizes: list[int]) -> list[bytes]:
    chunks, i = [], 0
    for n in sizes:
        if i >= len(data):
            break
        chunks.append(data[i : i + n])
        i += n
    if i < len(data):
        chunks.append(data[i:])
    return chunks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=streams, sizes=st.lists(st.integers(1, 40), max_size=20))
def test_any_request_stream_is_answered_or_closed(srv, caplog, data, sizes):
    caplog.set_level(logging.DEBUG, logger="qudag.http")
    whole, reset_whole = exchange(srv.port, [data])
    event(f"statuses {sorted(set(statuses(whole)))}")
    well_formed(whole)
    pieces, reset_pieces = exchange(srv.port, split(data, sizes))
    well_formed(pieces)
    if not reset_whole and not reset_pieces:
        assert statuses(whole) == statuses(pieces)
    ok, _ = exchange(srv.port, [b"GET /healthz HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n"])
    assert statuses(ok) == [200] and ok.endswith(b"\r\n\r\nok")
    tracebacks = [r for r in caplog.records if r.name == "qudag.http" and (r.exc_info or r.levelno >= logging.WARNING)]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.integers(2000, 200_000))
def test_oversized_body_still_gets_its_413(srv, body):
    """The 413 arrives although the client is still sending the body it announced."""
    head = b"POST /metrics HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n" % body
    got, _ = exchange(srv.port, [head, b"x" * body])
    assert statuses(got) == [413]
