"""Per-node Prometheus metrics with bounded, anonymous label values.

Every node owns one :class:`NodeMetrics`, which owns its own ``CollectorRegistry``; the
process-wide default registry is never touched, so several nodes in one process (tests,
the simulator) do not collide and each exports only its own figures.

The decision a reader would ask about: **every label value comes from a small fixed
enum, and anything else is recorded as** ``"other"``.  Callers pass reasons and operation
names straight from code paths that also know peer ids, IP addresses and dark addresses;
if one of those ever reached a label it would both leak it to whoever scrapes
``/metrics`` and create one time series per peer.  Normalising at this one boundary keeps
the exposition anonymous and the series count constant whatever the number of peers.  All
label combinations are created up front, so the set of series is also the same before
and after activity (Prometheus' advice for labelled metrics: absent series break
``rate()`` and alerts).

Figures that other objects already count (the relay core's cells and circuits, a link's
wire bytes, a rate limiter's drops) are read when the registry is collected: callbacks
added with :meth:`NodeMetrics.add_collect_hook` run first on every scrape (both text
formats) and turn the counts into counter increments, so hot paths pay one integer
addition and no call into this module.

Latency histograms (``qudag_dht_operation_duration_seconds``) observe successful
operations only: a timed-out query's "latency" is the configured timeout, and counting it
would pin the upper quantiles there.  Timeouts and errors are counted in
``qudag_dht_operations_total``.  The full list of metrics is in ``docs/metrics.md``.
"""
from __future__ import annotations

import enum
import logging
import math
from typing import Callable, Iterable, Iterator, Union

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = [
    "CellDropReason",
    "CircuitRole",
    "DHT_LATENCY_BUCKETS",
    "DhtOp",
    "DhtOutcome",
    "Direction",
    "HandshakeFailure",
    "Limiter",
    "NodeMetrics",
    "Transport",
]

OTHER = "other"

log = logging.getLogger("qudag.metrics")


class Direction(enum.StrEnum):
    """Who opened a connection."""

    INBOUND = "inbound"
    OUTBOUND = "outbound"
    OTHER = OTHER


class HandshakeFailure(enum.StrEnum):
    """Why a link handshake failed (label ``reason``)."""

    TIMEOUT = "timeout"
    BAD_MESSAGE = "bad_message"
    AUTH_FAILED = "auth_failed"
    VERSION = "version"
    COOKIE = "cookie"
    CLOSED = "closed"  #: the peer closed (or reset) the connection before the handshake ended
    OTHER = OTHER


class Transport(enum.StrEnum):
    """Which socket type the bytes went through (label ``transport``)."""

    TCP = "tcp"
    UDP = "udp"
    OTHER = OTHER


class DhtOp(enum.StrEnum):
    """DHT operation (label ``op``): BEP 5 queries, BEP 44 get/put and qudag records."""

    PING = "ping"
    FIND_NODE = "find_node"
    GET_PEERS = "get_peers"
    ANNOUNCE_PEER = "announce_peer"
    GET = "get"
    PUT = "put"
    QD_GET = "qd_get"
    QD_PUT = "qd_put"
    OTHER = OTHER


class DhtOutcome(enum.StrEnum):
    """How a DHT operation ended (label ``outcome``)."""

    OK = "ok"
    TIMEOUT = "timeout"
    ERROR = "error"
    OTHER = OTHER


class CircuitRole(enum.StrEnum):
    """This node's part in an onion circuit (label ``role``)."""

    CLIENT = "client"  #: it built the circuit
    RELAY = "relay"  #: it carries the circuit for someone else (any hop, exit included)
    OTHER = OTHER


class CellDropReason(enum.StrEnum):
    """Why the onion layer dropped a cell (label ``reason``): one it was about to send
    (``mixer_full``, ``link_closed``) or one it received and discarded (the rest, the
    reasons of ``qudag_core.onion.relay.DISCARD_REASONS``)."""

    MIXER_FULL = "mixer_full"  #: the relay's outgoing-cell mixer queue was full
    LINK_CLOSED = "link_closed"  #: the link it was for had closed (or closed with it queued)
    UNKNOWN_CIRCUIT = "unknown_circuit"  #: received for a circuit this node does not carry
    AFTER_DESTROY = "after_destroy"  #: later in one link message than a cell that destroyed its circuit
    MALFORMED = "malformed"  #: not a whole cell
    REJECTED = "rejected"  #: not allowed on its circuit (state, content, integrity): the circuit is destroyed
    CIRCUIT_LIMIT = "circuit_limit"  #: a CREATE fragment refused at the relay's circuit limits
    OTHER = OTHER


class Limiter(enum.StrEnum):
    """Which rate limiter dropped something (label ``limiter``)."""

    CONNECTIONS = "connections"
    HANDSHAKES = "handshakes"
    DHT_QUERIES = "dht_queries"
    CELLS = "cells"
    CIRCUITS = "circuits"
    HTTP = "http"
    OTHER = OTHER


#: Seconds; from a loopback round trip to a slow intercontinental one.
DHT_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_Label = Union[str, enum.Enum]


def _canon(kind: type[enum.StrEnum]) -> dict[str, str]:
    return {member.value: member.value for member in kind}


_DIRECTIONS = _canon(Direction)
_HANDSHAKE_REASONS = _canon(HandshakeFailure)
_TRANSPORTS = _canon(Transport)
_DHT_OPS = _canon(DhtOp)
_DHT_OUTCOMES = _canon(DhtOutcome)
_LIMITERS = _canon(Limiter)
_ROLES = _canon(CircuitRole)
_CELL_DROP_REASONS = _canon(CellDropReason)


def _label(value: object, allowed: dict[str, str]) -> str:
    """The canonical label value for *value*, or ``"other"`` if it is not in the enum.

    Only an exact match counts (``"Timeout"`` is "other"), and the string returned is
    always the enum's own object, never the caller's, so nothing the caller computed can
    reach the exposition.
    """
    if isinstance(value, str):  # StrEnum members are str too
        return allowed.get(str.__str__(value), OTHER)
    return OTHER


def _amount(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"expected a non-negative int, got {n!r}")
    return n


class _HookedRegistry(CollectorRegistry):
    """A registry that runs its owner's collect hooks before every collection."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.hooks: list[Callable[[], None]] = []

    def collect(self) -> Iterator:
        for hook in list(self.hooks):
            try:
                hook()
            except Exception:  # a broken source must not take /metrics down with it
                log.exception("metrics collect hook failed")
        yield from super().collect()


class NodeMetrics:
    """The metrics of one node, in a private ``CollectorRegistry``.

    The node calls the recording methods (``handshake_ok()``, ``dht_op(op, outcome,
    seconds)``...); ``render()`` produces the Prometheus text exposition.  Label
    arguments accept the enum members above or their string values; anything else is
    recorded as ``"other"``.  Recording never raises for a label value; counts must be
    non-negative ints (``ValueError`` otherwise, as that is a bug in the caller).
    """

    def __init__(self, *, namespace: str = "qudag") -> None:
        self.registry: CollectorRegistry = _HookedRegistry()
        reg = self.registry
        ns = namespace

        self._conn_opened = Counter("connections_opened", "Link connections opened.", ["direction"], namespace=ns, registry=reg)
        self._conn_closed = Counter("connections_closed", "Link connections closed.", ["direction"], namespace=ns, registry=reg)
        self._conn_active = Gauge("connections_active", "Link connections currently open.", ["direction"], namespace=ns, registry=reg)

        self._hs_ok = Counter("handshakes_ok", "Link handshakes completed.", namespace=ns, registry=reg)
        self._hs_failed = Counter("handshakes_failed", "Link handshakes that failed, by reason.", ["reason"], namespace=ns, registry=reg)

        self._bytes_in = Counter("bytes_received", "Bytes received from the network (TCP stream bytes, UDP datagram payloads).", ["transport"], namespace=ns, registry=reg)
        self._bytes_out = Counter("bytes_sent", "Bytes sent to the network (TCP stream bytes, UDP datagram payloads).", ["transport"], namespace=ns, registry=reg)

        self._dht_ops = Counter("dht_operations", "DHT operations this node started, by operation and outcome.", ["op", "outcome"], namespace=ns, registry=reg)
        self._dht_table = Gauge("dht_routing_table_nodes", "Nodes in the DHT routing table.", namespace=ns, registry=reg)
        self._dht_latency = Histogram(
            "dht_operation_duration_seconds",
            "Latency of DHT operations that succeeded, by operation.",
            ["op"],
            namespace=ns,
            registry=reg,
            buckets=DHT_LATENCY_BUCKETS,
        )

        self._circ_built = Counter("circuits_built", "Onion circuits built (client) or accepted (relay).", ["role"], namespace=ns, registry=reg)
        self._circ_failed = Counter("circuits_failed", "Onion circuits that failed before they were built (client) or accepted (relay).", ["role"], namespace=ns, registry=reg)
        self._circ_active = Gauge("circuits_active", "Onion circuits currently open.", ["role"], namespace=ns, registry=reg)
        self._cells_relayed = Counter("cells_relayed", "Onion cells relayed for other nodes.", namespace=ns, registry=reg)
        self._cells_dropped = Counter("cells_dropped", "Onion cells dropped, received (discarded by the relay) or on their way out, by reason.", ["reason"], namespace=ns, registry=reg)

        self._resolver_hits = Counter("resolver_cache_hits", "Dark-address resolutions answered from the cache.", namespace=ns, registry=reg)
        self._resolver_misses = Counter("resolver_cache_misses", "Dark-address resolutions that missed the cache.", namespace=ns, registry=reg)

        self._ratelimit_drops = Counter("ratelimit_drops", "Messages, connections or requests dropped by a rate limiter.", ["limiter"], namespace=ns, registry=reg)

        # Every label combination exists from the start: a constant set of series.
        for d in _DIRECTIONS:
            self._conn_opened.labels(d)
            self._conn_closed.labels(d)
            self._conn_active.labels(d)
        for r in _HANDSHAKE_REASONS:
            self._hs_failed.labels(r)
        for t in _TRANSPORTS:
            self._bytes_in.labels(t)
            self._bytes_out.labels(t)
        for op in _DHT_OPS:
            self._dht_latency.labels(op)
            for outcome in _DHT_OUTCOMES:
                self._dht_ops.labels(op, outcome)
        for lim in _LIMITERS:
            self._ratelimit_drops.labels(lim)
        for role in _ROLES:
            self._circ_built.labels(role)
            self._circ_failed.labels(role)
            self._circ_active.labels(role)
        for r in _CELL_DROP_REASONS:
            self._cells_dropped.labels(r)

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Run ``hook()`` before every collection of this registry (each scrape), e.g. to
        turn counts another object keeps into increments here.  A hook that raises is
        logged and skipped; the exposition goes on."""
        self.registry.hooks.append(hook)  # type: ignore[attr-defined]

    # -- connections --------------------------------------------------------------
    def connection_opened(self, direction: _Label = Direction.INBOUND) -> None:
        d = _label(direction, _DIRECTIONS)
        self._conn_opened.labels(d).inc()
        self._conn_active.labels(d).inc()

    def connection_closed(self, direction: _Label = Direction.INBOUND) -> None:
        """Pair with :meth:`connection_opened` (same direction) for every connection."""
        d = _label(direction, _DIRECTIONS)
        self._conn_closed.labels(d).inc()
        self._conn_active.labels(d).dec()

    # -- handshakes ---------------------------------------------------------------
    def handshake_ok(self) -> None:
        self._hs_ok.inc()

    def handshake_failed(self, reason: _Label) -> None:
        self._hs_failed.labels(_label(reason, _HANDSHAKE_REASONS)).inc()

    # -- traffic ------------------------------------------------------------------
    def bytes_received(self, n: int, transport: _Label = Transport.TCP) -> None:
        self._bytes_in.labels(_label(transport, _TRANSPORTS)).inc(_amount(n))

    def bytes_sent(self, n: int, transport: _Label = Transport.TCP) -> None:
        self._bytes_out.labels(_label(transport, _TRANSPORTS)).inc(_amount(n))

    # -- DHT ----------------------------------------------------------------------
    def dht_op(self, op: _Label, outcome: _Label, seconds: float) -> None:
        """Count one finished DHT operation; successful ones also feed the histogram.

        A latency that is not a finite non-negative number (a clock step, a caller bug)
        is not observed, so it cannot poison ``_sum``; the operation is still counted.
        """
        o = _label(op, _DHT_OPS)
        out = _label(outcome, _DHT_OUTCOMES)
        self._dht_ops.labels(o, out).inc()
        if out == DhtOutcome.OK.value and isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            s = float(seconds)
            if math.isfinite(s) and s >= 0.0:
                self._dht_latency.labels(o).observe(s)

    def set_dht_routing_table_nodes(self, n: int) -> None:
        """The number of nodes in the DHT routing table now (read from the DHT core)."""
        self._dht_table.set(_amount(n))

    # -- onion --------------------------------------------------------------------
    def circuit_built(self, role: _Label = CircuitRole.CLIENT, n: int = 1) -> None:
        """``n`` circuits finished building (``client``) or were accepted (``relay``: the
        CREATE handshake completed here); they count as active until
        :meth:`circuit_closed` (or :meth:`set_circuits_active` says otherwise)."""
        r = _label(role, _ROLES)
        self._circ_built.labels(r).inc(_amount(n))
        self._circ_active.labels(r).inc(n)

    def circuit_failed(self, role: _Label = CircuitRole.CLIENT, n: int = 1) -> None:
        """``n`` circuits died before they were built / accepted (never active)."""
        self._circ_failed.labels(_label(role, _ROLES)).inc(_amount(n))

    def circuit_closed(self, role: _Label = CircuitRole.CLIENT) -> None:
        self._circ_active.labels(_label(role, _ROLES)).dec()

    def set_circuits_active(self, n: int, role: _Label = CircuitRole.CLIENT) -> None:
        """Set the number of open circuits from a source that tracks them (a relay core's
        circuit table) instead of counting builds and closes."""
        self._circ_active.labels(_label(role, _ROLES)).set(_amount(n))

    def cells_relayed(self, n: int = 1) -> None:
        self._cells_relayed.inc(_amount(n))

    def cells_dropped(self, reason: _Label, n: int = 1) -> None:
        """``n`` onion cells were dropped: ones this node was about to send (relayed cells
        or its own; its mixer was full, or the link they were for had closed), or ones it
        received and discarded (see :class:`CellDropReason`)."""
        self._cells_dropped.labels(_label(reason, _CELL_DROP_REASONS)).inc(_amount(n))

    # -- dark-address resolver -----------------------------------------------------
    def resolver_cache_hit(self, n: int = 1) -> None:
        self._resolver_hits.inc(_amount(n))

    def resolver_cache_miss(self, n: int = 1) -> None:
        self._resolver_misses.inc(_amount(n))

    # -- rate limiting -------------------------------------------------------------
    def ratelimit_drop(self, limiter: _Label, n: int = 1) -> None:
        self._ratelimit_drops.labels(_label(limiter, _LIMITERS)).inc(_amount(n))

    # -- exposition ----------------------------------------------------------------
    #: Content type of :meth:`render`'s output (Prometheus text format 0.0.4).
    content_type = CONTENT_TYPE_PLAIN_0_0_4

    def render(self) -> bytes:
        """The Prometheus text exposition of this node's registry."""
        return generate_latest(self.registry)

    @staticmethod
    def label_values() -> dict[str, Iterable[str]]:
        """Every value each label name may take in any metric (for tests and docs):
        ``reason`` is the label of both ``handshakes_failed`` (:class:`HandshakeFailure`)
        and ``cells_dropped`` (:class:`CellDropReason`)."""
        return {
            "direction": tuple(_DIRECTIONS),
            "reason": tuple(dict.fromkeys([*_HANDSHAKE_REASONS, *_CELL_DROP_REASONS])),
            "transport": tuple(_TRANSPORTS),
            "op": tuple(_DHT_OPS),
            "outcome": tuple(_DHT_OUTCOMES),
            "limiter": tuple(_LIMITERS),
            "role": tuple(_ROLES),
        }
