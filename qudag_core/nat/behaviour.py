"""NAT behaviour discovery (RFC 5780 §4.3 mapping test, §4.4 filtering test), sans-IO.

Built on :class:`StunClient` and driven the same way (``receive_datagram``,
``datagrams_to_send``, ``get_timer``, ``handle_timer``); it emits one
:class:`NatBehaviourDiscovered` event and then stays in ``DONE``.

Tests, one transaction at a time, from one local socket:

* test I: Binding to the primary address -> mapped address X1 and OTHER-ADDRESS.  No
  OTHER-ADDRESS: the server cannot do RFC 5780, both behaviours are UNKNOWN
  (``alternate_offered=False``).  X1 equal to our local address: no NAT, so mapping is
  endpoint-independent and the mapping tests II/III are skipped.
* filtering II: CHANGE-REQUEST change-IP+port; a response (from the alternate IP and
  port) means endpoint-independent filtering.  On timeout, filtering III: CHANGE-REQUEST
  change-port; a response (from the primary IP, alternate port) means address-dependent,
  a timeout address-and-port-dependent.
* mapping II: Binding to (alternate IP, primary port) -> X2.  X2 == X1: endpoint-
  independent.  Mapping III: Binding to (alternate IP, alternate port) -> X3.  X3 == X2:
  address-dependent, otherwise address-and-port-dependent.

The decisions a reader would ask about.  The filtering tests run *before* mapping
tests II and III because all tests share one local port: once mapping test II has sent
to the alternate IP, an address-dependent filter would let the CHANGE-REQUEST answer
from that IP through and the NAT would look endpoint-independent (the simulation test
caught exactly that).  And filtering is inferred from *timeouts*, so the filtering
tests use their own, smaller Rc (``filtering_rc``, default 3: 0, RTO, 3·RTO, then
Rm·RTO); loss can make filtering look stricter than it is, never mapping wrong.  The state machine is a table:
``(state, outcome) -> handler``; a missing pair moves to the sticky ``FAILED`` state.
"""
from __future__ import annotations

from typing import Callable

from qudag_core.errors import LocalProtocolError
from qudag_core.nat import stun as S
from qudag_core.nat.events import (
    BindingSucceeded,
    Event,
    FilteringBehaviour,
    MappingBehaviour,
    NatBehaviour,
    NatBehaviourDiscovered,
    TransactionFailed,
    TransactionTimedOut,
)
from qudag_core.nat.stun_client import StunClient, normalise_address

__all__ = ["NatBehaviourDiscovery", "STATES", "TRANSITIONS"]

# States, named for what they wait for.
EXPECT_TEST_I = "EXPECT_TEST_I"
EXPECT_MAPPING_II = "EXPECT_MAPPING_II"
EXPECT_MAPPING_III = "EXPECT_MAPPING_III"
EXPECT_FILTERING_II = "EXPECT_FILTERING_II"
EXPECT_FILTERING_III = "EXPECT_FILTERING_III"
DONE = "DONE"
FAILED = "FAILED"
STATES = (EXPECT_TEST_I, EXPECT_MAPPING_II, EXPECT_MAPPING_III, EXPECT_FILTERING_II,
          EXPECT_FILTERING_III, DONE, FAILED)

# Outcomes of one transaction.
SUCCESS = "SUCCESS"
ERROR = "ERROR"
TIMEOUT = "TIMEOUT"
OUTCOMES = (SUCCESS, ERROR, TIMEOUT)

#: (state, outcome) -> name of the handler method.  Anything missing -> FAILED.
TRANSITIONS = {
    (EXPECT_TEST_I, SUCCESS): "_test_i_done",
    (EXPECT_MAPPING_II, SUCCESS): "_mapping_ii_done",
    (EXPECT_MAPPING_III, SUCCESS): "_mapping_iii_done",
    (EXPECT_FILTERING_II, SUCCESS): "_filtering_ii_answered",
    (EXPECT_FILTERING_II, TIMEOUT): "_filtering_ii_silent",
    (EXPECT_FILTERING_III, SUCCESS): "_filtering_iii_answered",
    (EXPECT_FILTERING_III, TIMEOUT): "_filtering_iii_silent",
}


class NatBehaviourDiscovery:
    """RFC 5780 behaviour discovery against ``server`` from ``local_address``.

    Call :meth:`start` once, then drive it like any datagram core until it emits
    :class:`NatBehaviourDiscovered`; ``result`` then holds the same value."""

    def __init__(
        self,
        server,
        *,
        rng: Callable[[int], bytes],
        local_address=None,
        rto: float = 0.5,
        rc: int = 7,
        rm: int = 16,
        filtering_rc: int = 3,
        software: str | None = None,
    ) -> None:
        self.client = StunClient(rng=rng, rto=rto, rc=rc, rm=rm, software=software)
        self.server = normalise_address(server)
        self.local_address = None if local_address is None else normalise_address(local_address)
        self.filtering_rc = filtering_rc
        self.state = EXPECT_TEST_I
        self.result: NatBehaviour | None = None
        self._started = False
        self._txn: bytes | None = None
        self._x1 = self._x2 = None
        self._other = None
        self._nat: bool | None = None
        self._mapping = MappingBehaviour.UNKNOWN
        self._filtering = FilteringBehaviour.UNKNOWN

    # ---- driving API ---------------------------------------------------------------
    def start(self, now: float) -> None:
        if self._started:
            raise LocalProtocolError("discovery already started")
        self._started = True
        self._txn = self.client.request(self.server, now)

    def datagrams_to_send(self, now: float):
        return self.client.datagrams_to_send(now)

    def get_timer(self) -> float | None:
        return self.client.get_timer()

    def handle_timer(self, now: float) -> list[Event]:
        return self._feed(self.client.handle_timer(now), now)

    def receive_datagram(self, data: bytes, addr, now: float) -> list[Event]:
        return self._feed(self.client.receive_datagram(data, addr, now), now)

    # ---- state machine ---------------------------------------------------------------
    def _feed(self, events: list[Event], now: float) -> list[Event]:
        out: list[Event] = []
        for ev in events:
            if getattr(ev, "transaction_id", None) != self._txn:
                continue
            if isinstance(ev, BindingSucceeded):
                outcome = SUCCESS
            elif isinstance(ev, TransactionTimedOut):
                outcome = TIMEOUT
            elif isinstance(ev, TransactionFailed):
                outcome = ERROR
            else:
                outcome = ERROR
            self._txn = None
            handler = TRANSITIONS.get((self.state, outcome))
            if handler is None:
                out += self._fail(f"{outcome.lower()} in {self.state}", ev)
            else:
                out += getattr(self, handler)(ev, now)
        return out

    def _send(self, state: str, dest, now: float, *, change=None, expect_from=None, rc=None) -> list[Event]:
        self.state = state
        attrs = [] if change is None else [(S.Attr.CHANGE_REQUEST, S.encode_change_request(*change))]
        self._txn = self.client.request(dest, now, attributes=attrs, expect_from=expect_from, rc=rc)
        return []

    def _finish(self, filtering: FilteringBehaviour, note: str = "") -> list[Event]:
        self.state = DONE
        self.result = NatBehaviour(
            mapping=self._mapping, filtering=filtering, mapped_address=self._x1,
            nat_detected=self._nat, alternate_offered=self._other is not None, note=note)
        return [NatBehaviourDiscovered(result=self.result)]

    def _fail(self, why: str, ev=None) -> list[Event]:
        reason = getattr(ev, "reason", "") if ev is not None else ""
        note = why + (f": {reason}" if reason else "")
        self._finish(self._filtering, note)
        self.state = FAILED
        return [NatBehaviourDiscovered(result=self.result)]

    def _start_mapping(self, filtering: FilteringBehaviour, now: float) -> list[Event]:
        self._filtering = filtering
        if self._nat is False:
            self._mapping = MappingBehaviour.ENDPOINT_INDEPENDENT
            return self._finish(filtering)
        return self._send(EXPECT_MAPPING_II, (self._other[0], self.server[1]), now)

    def _test_i_done(self, ev: BindingSucceeded, now: float) -> list[Event]:
        self._x1 = ev.mapped_address
        if self.local_address is not None:
            self._nat = ev.mapped_address != self.local_address
        if ev.other_address is None:
            return self._finish(FilteringBehaviour.UNKNOWN, "server offered no alternate address (no OTHER-ADDRESS)")
        self._other = normalise_address(ev.other_address)
        if self._other[0] == self.server[0] or self._other[1] == self.server[1]:
            return self._finish(FilteringBehaviour.UNKNOWN,
                                "OTHER-ADDRESS does not differ from the primary in both IP and port")
        # Filtering first: so far only the primary address has been contacted, so no
        # filter state for the alternate address exists yet to mask the result.
        return self._send(EXPECT_FILTERING_II, self.server, now, change=(True, True),
                          expect_from=self._other, rc=self.filtering_rc)

    def _filtering_ii_answered(self, ev, now: float) -> list[Event]:
        return self._start_mapping(FilteringBehaviour.ENDPOINT_INDEPENDENT, now)

    def _filtering_ii_silent(self, ev, now: float) -> list[Event]:
        return self._send(EXPECT_FILTERING_III, self.server, now, change=(False, True),
                          expect_from=(self.server[0], self._other[1]), rc=self.filtering_rc)

    def _filtering_iii_answered(self, ev, now: float) -> list[Event]:
        return self._start_mapping(FilteringBehaviour.ADDRESS_DEPENDENT, now)

    def _filtering_iii_silent(self, ev, now: float) -> list[Event]:
        return self._start_mapping(FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT, now)

    def _mapping_ii_done(self, ev: BindingSucceeded, now: float) -> list[Event]:
        self._x2 = ev.mapped_address
        if self._x2 == self._x1:
            self._mapping = MappingBehaviour.ENDPOINT_INDEPENDENT
            return self._finish(self._filtering)
        return self._send(EXPECT_MAPPING_III, self._other, now)

    def _mapping_iii_done(self, ev: BindingSucceeded, now: float) -> list[Event]:
        if ev.mapped_address == self._x2:
            self._mapping = MappingBehaviour.ADDRESS_DEPENDENT
        else:
            self._mapping = MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT
        return self._finish(self._filtering)
