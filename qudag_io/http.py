"""The node's metrics and status HTTP/1.1 server: h11 driven by an ``asyncio.Protocol``.

Serves ``GET``/``HEAD`` on ``/metrics`` (Prometheus exposition of the node's own
:class:`~qudag_io.metrics.NodeMetrics` registry), ``/healthz`` and ``/status`` (JSON from
a callback the node supplies); 404 for other paths, 405 for other methods.  It binds to
127.0.0.1 unless told otherwise: the status page describes the node's peers and circuits.

The adapter is thin in the sense of STYLE.md §11: bytes from the socket go to
``h11.Connection.receive_data``, events come back, and the response goes out through
``h11.Connection.send``.  HTTP framing and keep-alive rules (RFC 9112) are h11's; this
module only adds what a server facing the network needs on top:

* ``max_incomplete_event_size`` (8 KiB by default) bounds the request line plus headers,
  ``max_body_size`` bounds a body (a GET needs none; one that is announced or grows too
  large gets 413 and the connection is closed);
* one deadline per request, ``request_timeout`` (5 s by default): the *whole* request,
  headers and body, must arrive within it, counted from the connection being accepted or
  from the request's first byte on a kept-alive connection; a client too slow for it is
  sent 408 and cut off, which is what defeats slowloris-style trickling.
  ``idle_timeout`` bounds the wait for the next request on a kept-alive connection;
* at most ``max_connections`` clients at a time; one more is answered 503 and closed;
* a client that stops reading responses stops being read (write-buffer backpressure),
  so pipelined requests cannot make the server buffer responses without bound;
* closing is done in stages (RFC 9112 §9.6): write side first, then input is discarded
  until the client's EOF or ``linger_timeout``, so a final 4xx is not lost to a reset.

The decision a reader would ask about: client errors are *never* exceptions that leave
the protocol.  h11's ``RemoteProtocolError`` becomes a 4xx response (when h11 says one
can still be sent; its ``error_status_hint`` gives 400 or 431) and a close, logged at
debug level without a traceback.  Only a bug on our side (or in the node's
``status_provider``) is logged with a traceback, and still answered 500.
"""
from __future__ import annotations

import asyncio
import email.utils
import json
import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

import h11
from prometheus_client.openmetrics import exposition as openmetrics

from qudag_io.metrics import Limiter, NodeMetrics

__all__ = ["HttpLimits", "HttpServer", "start_http_server"]

log = logging.getLogger("qudag.http")

StatusProvider = Callable[[], dict]


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpLimits:
    """Resource limits of the HTTP server."""

    max_incomplete_event_size: int = 8 * 1024
    """Largest request line + headers h11 will buffer (larger: 431)."""
    max_body_size: int = 1024
    """Largest request body accepted (and discarded); larger: 413 and close."""
    request_timeout: float = 5.0
    """Seconds within which a whole request must arrive (larger: 408 and close)."""
    idle_timeout: float = 5.0
    """Seconds a kept-alive connection may wait for its next request's first byte."""
    max_connections: int = 64
    """Clients served at once; one more is answered 503 and closed."""
    max_requests_per_connection: int = 1000
    """After this many requests a connection is closed (``Connection: close``)."""
    linger_timeout: float = 2.0
    """Seconds a closing connection may take to drain our output and send its EOF."""
    shutdown_grace: float = 1.0
    """Seconds ``close()`` lets clients take their last bytes before aborting them."""


_ALLOWED_METHODS = (b"GET", b"HEAD")
_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
_TEXT = b"text/plain; charset=utf-8"


def _json_default(obj: Any) -> Any:
    """Status values that JSON has no type for: bytes as hex, sets as lists, else str()."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).hex()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


class _Response:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, body: bytes, content_type: bytes = _TEXT, headers: tuple = ()) -> None:
        self.status = status
        self.body = body
        self.headers = [(b"content-type", content_type), *headers]


class _HttpProtocol(asyncio.Protocol):
    def __init__(self, server: "HttpServer") -> None:
        self._server = server
        self._limits = server.limits
        self._loop = server.loop
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limits.max_incomplete_event_size)
        self.transport: Optional[asyncio.Transport] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._closing = False
        self._lingering = False  # half-closed by us, discarding input (RFC 9112 §9.6)
        self._eof = False
        self._write_paused = False
        self._request: Optional[h11.Request] = None
        self._body_size = 0
        self._request_bytes_seen = False  # has the current request begun to arrive?
        self._idle = False  # kept alive, waiting for the next request's first byte
        self._requests_served = 0

    # -- asyncio.Protocol ------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        if not self._server._admit(self):
            # Over the connection limit: answer before reading anything, then go, without
            # lingering: shedding load quickly matters more here than a reset.
            self._send_error(503, b"too many connections\n", linger=False)
            return
        self._arm_timer(self._limits.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._closing or not data:
            return
        self._request_bytes_seen = True
        if self._idle:
            # The first byte of a request on a kept-alive connection: from now on the
            # whole request must arrive within request_timeout.
            self._idle = False
            self._arm_timer(self._limits.request_timeout)
        self._conn.receive_data(data)
        self._pump()

    def eof_received(self) -> Optional[bool]:
        self._eof = True
        if self._lingering:
            assert self.transport is not None
            self.transport.close()
        elif not self._closing:
            self._conn.receive_data(b"")
            self._pump()
        # Keep the write side open so a final response (e.g. 400) can still be sent;
        # _close() ends the transport.
        return True

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._closing = True
        self._cancel_timer()
        self._server._forget(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self.transport is not None and not self._closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.transport is not None and (self._lingering or not self._closing):
            self.transport.resume_reading()
        if not self._closing:
            self._pump()

    # -- driving h11 -------------------------------------------------------------------
    def _pump(self) -> None:
        """Process every complete event h11 has buffered (pipelined requests in order)."""
        try:
            self._pump_events()
        except Exception:  # a bug on our side: never let it take the loop's handler path
            log.exception("internal error in the HTTP server; closing the connection")
            self._abort()

    def _pump_events(self) -> None:
        conn = self._conn
        while not self._closing and not self._write_paused:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                log.debug("bad HTTP request: %s", exc)
                self._send_error(exc.error_status_hint, b"bad request\n")
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if not self._maybe_next_cycle():
                    return
            elif isinstance(event, h11.Request):
                self._on_request(event)
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > self._limits.max_body_size:
                    self._send_error(413, b"request body too large\n")
            elif isinstance(event, h11.EndOfMessage):
                self._cancel_timer()
                self._respond()
                self._maybe_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                self._close()

    def _on_request(self, request: h11.Request) -> None:
        self._request = request
        self._body_size = 0
        # h11 only enforces max_incomplete_event_size on a head that is still incomplete;
        # one that arrived in a single read is measured here, so the limit does not
        # depend on how the bytes were segmented.
        head_size = len(request.method) + len(request.target) + 12
        for name, value in request.headers.raw_items():
            head_size += len(name) + len(value) + 4
        if head_size > self._limits.max_incomplete_event_size:
            self._send_error(431, b"request header fields too large\n")
            return
        for name, value in request.headers:
            if name == b"content-length" and int(value) > self._limits.max_body_size:
                # Refuse before reading it; the connection cannot be reused afterwards.
                self._send_error(413, b"request body too large\n")
                return
        if self._conn.client_is_waiting_for_100_continue:
            # We want no body: answer now (no 100 Continue) and close afterwards.
            self._respond(close=True)

    def _maybe_next_cycle(self) -> bool:
        """After a response: start the next request cycle, or close. True to continue."""
        conn = self._conn
        if self._closing:
            return False
        if conn.our_state is h11.MUST_CLOSE or conn.our_state is h11.CLOSED:
            self._close()
            return False
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self._request = None
            self._body_size = 0
            pending, _ = conn.trailing_data  # a copy, but of at most one read's worth
            self._request_bytes_seen = bool(pending)
            self._idle = not pending
            self._arm_timer(self._limits.idle_timeout if self._idle else self._limits.request_timeout)
            return True
        return False

    # -- responses -------------------------------------------------------------------------
    def _respond(self, *, close: bool = False) -> None:
        request = self._request
        if request is None or self._conn.our_state is not h11.SEND_RESPONSE:
            return
        self._requests_served += 1
        try:
            response = self._server._route(request)
        except Exception:
            log.exception("error while producing the response to %s", request.method.decode("ascii", "replace"))
            response = _Response(500, b"internal error\n")
        if self._requests_served >= self._limits.max_requests_per_connection:
            close = True
        self._send(response, head=request.method == b"HEAD", close=close)
        if close:
            self._close()

    def _send_error(self, status: int, body: bytes, *, linger: bool = True) -> None:
        """A client error: answer it if h11 still can, then close the connection."""
        if status not in _REASONS or status < 400:
            status = 400
        if self._conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            head = self._request is not None and self._request.method == b"HEAD"
            self._send(_Response(status, body), head=head, close=True)
        self._close(linger=linger)

    def _send(self, response: _Response, *, head: bool, close: bool) -> None:
        """Write one complete response; ``close`` announces ``Connection: close``."""
        headers = [
            *response.headers,
            (b"content-length", b"%d" % len(response.body)),
            (b"date", email.utils.formatdate(usegmt=True).encode("ascii")),
            (b"cache-control", b"no-store"),
            (b"x-content-type-options", b"nosniff"),
        ]
        if close:
            headers.append((b"connection", b"close"))
        conn = self._conn
        out = conn.send(h11.Response(status_code=response.status, headers=headers, reason=_REASONS.get(response.status, b"")))
        if not head and response.body:
            out += conn.send(h11.Data(data=response.body))
        out += conn.send(h11.EndOfMessage())
        assert self.transport is not None
        self.transport.write(out)

    # -- timers and closing -----------------------------------------------------------
    def _arm_timer(self, delay: float) -> None:
        self._cancel_timer()
        self._timer = self._loop.call_later(delay, self._on_timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self._closing or self.transport is None:
            return
        if self.transport.get_write_buffer_size():
            # It is not reading what we already sent: nothing more is worth sending.
            log.debug("HTTP client not reading; aborting")
            self._abort()
        elif self._request_bytes_seen or self._request is not None:
            log.debug("HTTP request not complete within %.3gs; closing", self._limits.request_timeout)
            self._send_error(408, b"request timeout\n")
        else:
            self._close()  # idle: nothing to answer

    def _close(self, *, linger: bool = True) -> None:
        """Close gracefully: the response already written must reach the client.

        RFC 9112 §9.6: closing outright while the client's input is still unread makes
        the kernel send a reset, which can destroy the response (typically the very 400
        or 413 explaining why we close).  So the write side is shut down first (after the
        buffer drains) and input is read and discarded until the client closes too, for
        at most ``linger_timeout``.
        """
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        transport = self.transport
        if transport is None:
            return
        if not linger or self._eof or not transport.can_write_eof():
            transport.close()
        else:
            self._lingering = True
            transport.write_eof()
        # Neither drain nor linger may keep a connection slot for long (a client that
        # never reads, or never closes).
        self._timer = self._loop.call_later(self._limits.linger_timeout, self._end_linger)

    def _end_linger(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None:
            return
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    def _abort(self) -> None:
        self._closing = True
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()


class HttpServer:
    """A running metrics/status server; create it with :func:`start_http_server`."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        metrics: Optional[NodeMetrics],
        status_provider: Optional[StatusProvider],
        limits: HttpLimits,
    ) -> None:
        self.loop = loop
        self.metrics = metrics
        self.status_provider = status_provider
        self.limits = limits
        self._server: Optional[asyncio.AbstractServer] = None
        self._clients: set[_HttpProtocol] = set()
        self._all: set[_HttpProtocol] = set()  # also rejected ones, until they are gone
        self._gone: Optional[asyncio.Event] = None
        self._shutting_down = False

    @property
    def sockets(self) -> tuple:
        return tuple(self._server.sockets) if self._server is not None else ()

    @property
    def host(self) -> str:
        return self.sockets[0].getsockname()[0]

    @property
    def port(self) -> int:
        """The listening port (useful with ``port=0``)."""
        return self.sockets[0].getsockname()[1]

    @property
    def connection_count(self) -> int:
        """Client connections currently served (rejected ones not included)."""
        return len(self._clients)

    # -- bookkeeping for _HttpProtocol -------------------------------------------------
    def _admit(self, proto: _HttpProtocol) -> bool:
        self._all.add(proto)
        if self._shutting_down or len(self._clients) >= self.limits.max_connections:
            if self.metrics is not None:
                self.metrics.ratelimit_drop(Limiter.HTTP)
            return False
        self._clients.add(proto)
        return True

    def _forget(self, proto: _HttpProtocol) -> None:
        self._clients.discard(proto)
        self._all.discard(proto)
        if not self._all and self._gone is not None:
            self._gone.set()

    # -- routing ---------------------------------------------------------------------
    def _route(self, request: h11.Request) -> _Response:
        if request.method not in _ALLOWED_METHODS:
            return _Response(405, b"method not allowed\n", headers=((b"allow", b"GET, HEAD"),))
        path = _path_of(request.target)
        if path == "/healthz":
            return _Response(200, b"ok")
        if path == "/metrics" and self.metrics is not None:
            return self._metrics_response(request)
        if path == "/status" and self.status_provider is not None:
            status = self.status_provider()
            if not isinstance(status, dict):
                raise TypeError(f"status_provider returned {type(status).__name__}, not dict")
            body = json.dumps(status, default=_json_default, indent=1).encode("utf-8") + b"\n"
            return _Response(200, body, b"application/json")
        return _Response(404, b"not found\n")

    def _metrics_response(self, request: h11.Request) -> _Response:
        """Prometheus text 0.0.4, or OpenMetrics 1.0 when the scraper asks for it.

        Negotiation is by media type only: nothing from the Accept header is echoed in
        the response (prometheus_client's ``choose_encoder`` copies its ``version``).
        """
        assert self.metrics is not None
        wants_openmetrics = any(
            n == b"accept" and b"application/openmetrics-text" in v.lower() for n, v in request.headers
        )
        if wants_openmetrics:
            return _Response(200, openmetrics.generate_latest(self.metrics.registry), openmetrics.CONTENT_TYPE_LATEST.encode("ascii"))
        return _Response(200, self.metrics.render(), self.metrics.content_type.encode("ascii"))

    # -- lifecycle ---------------------------------------------------------------------
    async def _start(self, host: str, port: int) -> None:
        self._server = await self.loop.create_server(lambda: _HttpProtocol(self), host, port, reuse_address=True)

    async def close(self) -> None:
        """Stop listening and end every client connection (after ``shutdown_grace``)."""
        if self._server is None:
            return
        server, self._server = self._server, None
        self._shutting_down = True
        server.close()
        if self._all:
            self._gone = asyncio.Event()
            for proto in list(self._all):
                proto._close()
            try:
                await asyncio.wait_for(self._gone.wait(), self.limits.shutdown_grace)
            except asyncio.TimeoutError:
                for proto in list(self._all):
                    proto._abort()
                await asyncio.sleep(0)
        await server.wait_closed()

    async def __aenter__(self) -> "HttpServer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _path_of(target: bytes) -> str:
    """The path of an origin-form or absolute-form target, without the query."""
    text = target.decode("ascii", "replace")  # h11 has already restricted the bytes
    if text.startswith("/"):
        return text.split("?", 1)[0].split("#", 1)[0]
    try:
        return urlsplit(text).path or "/"
    except ValueError:
        return ""


async def start_http_server(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    metrics: Optional[NodeMetrics] = None,
    status_provider: Optional[StatusProvider] = None,
    limits: HttpLimits = HttpLimits(),
) -> HttpServer:
    """Listen on ``host:port`` (loopback by default; ``port=0`` picks a free port).

    ``metrics`` is served on ``/metrics`` and ``status_provider()`` (called once per
    request, on the event loop, so it must be quick) on ``/status``; a path whose source
    is ``None`` is a 404.
    """
    server = HttpServer(asyncio.get_running_loop(), metrics=metrics, status_provider=status_provider, limits=limits)
    await server._start(host, port)
    return server
