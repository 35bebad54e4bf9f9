"""RFC 5780 behaviour discovery against a simulated NAT and a simulated two-address STUN
server (the server side is the codec's ``binding_response``), for every combination of
mapping and filtering behaviour; plus the (state, outcome) table walk."""
from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testutil import DeterministicRng
from qudag_core.nat import behaviour as B
from qudag_core.nat import stun as S
from qudag_core.nat.events import (
    BindingSucceeded,
    FilteringBehaviour,
    MappingBehaviour,
    NatBehaviourDiscovered,
    TransactionFailed,
    TransactionTimedOut,
)

EI, AD, APD = "EI", "AD", "APD"
PRIMARY = ("198.51.100.1", 3478)
ALTERNATE = ("198.51.100.2", 3479)
LOCAL = ("10.0.0.2", 5000)
PUBLIC_IP = "203.0.113.5"


class SimNat:
    """RFC 4787 NAT: mapping keyed by (internal, destination part) and filtering keyed by
    the remote endpoints we have sent to."""

    def __init__(self, mapping, filtering):
        self.mapping, self.filtering = mapping, filtering
        self.ports = {}
        self.sent_to = set()
        self.next_port = 40000

    def _key(self, src, dst):
        return {EI: (src,), AD: (src, dst[0]), APD: (src, dst)}[self.mapping]

    def outbound(self, src, dst):
        key = self._key(src, dst)
        if key not in self.ports:
            self.ports[key] = self.next_port
            self.next_port += 1
        pub = (PUBLIC_IP, self.ports[key])
        self.sent_to.add((pub, dst))
        return pub

    def inbound_allowed(self, remote, pub):
        seen = [d for p, d in self.sent_to if p == pub]
        if self.filtering == EI:
            return bool(seen)
        if self.filtering == AD:
            return any(d[0] == remote[0] for d in seen)
        return remote in seen


class SimServer:
    """RFC 5780 server with four transport addresses (2 IPs x 2 ports)."""

    def __init__(self, with_alternate=True):
        self.with_alternate = with_alternate

    def handle(self, data, source, local):
        if self.with_alternate:
            other = (ALTERNATE[0] if local[0] == PRIMARY[0] else PRIMARY[0],
                     ALTERNATE[1] if local[1] == PRIMARY[1] else PRIMARY[1])
            return S.binding_response(data, source, local, other_address=other)
        if local != PRIMARY:
            return None  # nothing listens there
        return S.binding_response(data, source, local)


def run(disc, nat, server, loss=None, max_steps=500):
    """Shuttle datagrams between core, NAT and server; advance virtual time via get_timer."""
    now = 0.0
    disc.start(now)
    events = []
    step = 0
    for _ in range(max_steps):
        # Deliver everything queued (answers may queue the next test at once).
        while True:
            out = disc.datagrams_to_send(now)
            if not out:
                break
            for data, dst in out:
                step += 1
                src = nat.outbound(LOCAL, dst) if nat else LOCAL
                if loss and loss(step):
                    continue
                reply = server.handle(data, src, dst)
                if reply is None:
                    continue
                resp, origin = reply
                if nat and not nat.inbound_allowed(origin, src):
                    continue
                events += disc.receive_datagram(resp, origin, now)
        if disc.state in (B.DONE, B.FAILED):
            return events, now
        t = disc.get_timer()
        assert t is not None
        now = t
        events += disc.handle_timer(now)
    raise AssertionError("discovery did not finish")


MAPPING = {EI: MappingBehaviour.ENDPOINT_INDEPENDENT, AD: MappingBehaviour.ADDRESS_DEPENDENT,
           APD: MappingBehaviour.ADDRESS_AND_PORT_DEPENDENT}
FILTERING = {EI: FilteringBehaviour.ENDPOINT_INDEPENDENT, AD: FilteringBehaviour.ADDRESS_DEPENDENT,
             APD: FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT}


@pytest.mark.parametrize("mapping,filtering", list(itertools.product([EI, AD, APD], repeat=2)))
def test_every_nat_combination_is_detected(mapping, filtering):
    disc = B.NatBehaviourDiscovery(PRIMARY, rng=DeterministicRng(b"nat"), local_address=LOCAL)
    events, end = run(disc, SimNat(mapping, filtering), SimServer())
    [ev] = events
    assert isinstance(ev, NatBehaviourDiscovered) and ev.result is disc.result
    r = disc.result
    assert (r.mapping, r.filtering) == (MAPPING[mapping], FILTERING[filtering])
    assert r.nat_detected is True and r.alternate_offered and r.mapped_address[0] == PUBLIC_IP
    assert disc.state == B.DONE
    # Filtering answered by a timeout takes the (shorter) filtering budget per test.
    expected_timeouts = {EI: 0, AD: 1, APD: 2}[filtering]
    assert end == pytest.approx(expected_timeouts * (0.5 + 1.0 + 16 * 0.5))


def test_no_nat():
    disc = B.NatBehaviourDiscovery(PRIMARY, rng=DeterministicRng(b"x"), local_address=LOCAL)
    run(disc, None, SimServer())
    r = disc.result
    assert r.nat_detected is False and r.mapping is MappingBehaviour.ENDPOINT_INDEPENDENT
    assert r.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT and r.mapped_address == LOCAL


def test_no_alternate_address_offered():
    disc = B.NatBehaviourDiscovery(PRIMARY, rng=DeterministicRng(b"x"), local_address=LOCAL)
    run(disc, SimNat(EI, EI), SimServer(with_alternate=False))
    r = disc.result
    assert not r.alternate_offered
    assert r.mapping is MappingBehaviour.UNKNOWN and r.filtering is FilteringBehaviour.UNKNOWN
    assert "OTHER-ADDRESS" in r.note and r.mapped_address == (PUBLIC_IP, 40000)


def test_server_unreachable_fails():
    disc = B.NatBehaviourDiscovery(PRIMARY, rng=DeterministicRng(b"x"), rto=0.1, rc=2, rm=2)
    events, end = run(disc, SimNat(EI, EI), SimServer(), loss=lambda step: True)
    assert disc.state == B.FAILED and disc.result.mapping is MappingBehaviour.UNKNOWN
    assert "EXPECT_TEST_I" in disc.result.note and len(events) == 1


def test_lossy_path_still_classifies_mapping():
    """Loss of the first transmission of each test only delays it (retransmission)."""
    lost = set()

    def loss(step):
        if step not in lost and step % 2 == 0:
            lost.add(step)
            return True
        return False

    disc = B.NatBehaviourDiscovery(PRIMARY, rng=DeterministicRng(b"x"), local_address=LOCAL, filtering_rc=7)
    run(disc, SimNat(AD, EI), SimServer(), loss=loss)
    assert disc.result.mapping is MappingBehaviour.ADDRESS_DEPENDENT
    assert disc.result.filtering is FilteringBehaviour.ENDPOINT_INDEPENDENT


def _synthetic(kind, txn):
    if kind == B.SUCCESS:
        return BindingSucceeded(transaction_id=txn, server=PRIMARY, mapped_address=(PUBLIC_IP, 1),
                                other_address=ALTERNATE)
    if kind == B.TIMEOUT:
        return TransactionTimedOut(transaction_id=txn, server=PRIMARY, transmissions=7)
    return TransactionFailed(transaction_id=txn, server=PRIMARY, code=500, reason="x")


@pytest.mark.parametrize("state,outcome", list(itertools.product(B.STATES, B.OUTCOMES)))
def test_every_state_outcome_pair(state, outcome):
    """Walk the whole (state, outcome) table: a listed pair moves on, any other pair lands
    in the sticky FAILED state with one NatBehaviourDiscovered event."""
    disc = B.NatBehaviourDiscovery(PRIMARY, rng=DeterministicRng(b"t"), local_address=LOCAL)
    disc.start(0.0)
    disc._other = ALTERNATE
    disc._x1 = disc._x2 = (PUBLIC_IP, 1)
    disc.state = state
    evs = disc._feed([_synthetic(outcome, disc._txn)], 1.0)
    if (state, outcome) in B.TRANSITIONS:
        assert disc.state != B.FAILED
        assert disc.state == B.DONE or disc._txn is not None
    else:
        assert disc.state == B.FAILED and len(evs) == 1
        # Sticky: nothing afterwards changes it.
        disc._feed([_synthetic(B.SUCCESS, disc._txn)], 2.0)
        assert disc.state == B.FAILED


@settings(max_examples=60, deadline=None)
@given(mapping=st.sampled_from([EI, AD, APD]), filtering=st.sampled_from([EI, AD, APD]),
       drops=st.sets(st.integers(0, 60), max_size=15))
def test_random_loss_never_misclassifies_mapping(mapping, filtering, drops):
    """Under random loss, discovery always finishes; when mapping is reported it is the
    true one (loss can only make filtering look stricter, never mapping wrong)."""
    disc = B.NatBehaviourDiscovery(PRIMARY, rng=DeterministicRng(b"loss"), local_address=LOCAL, rc=5)
    run(disc, SimNat(mapping, filtering), SimServer(), loss=lambda step: step in drops, max_steps=2000)
    r = disc.result
    assert r is not None and disc.state in (B.DONE, B.FAILED)
    if r.mapping is not MappingBehaviour.UNKNOWN:
        assert r.mapping is MAPPING[mapping]
    strictness = [FilteringBehaviour.ENDPOINT_INDEPENDENT, FilteringBehaviour.ADDRESS_DEPENDENT,
                  FilteringBehaviour.ADDRESS_AND_PORT_DEPENDENT]
    if r.filtering is not FilteringBehaviour.UNKNOWN:
        assert strictness.index(r.filtering) >= strictness.index(FILTERING[filtering])
