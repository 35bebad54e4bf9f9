"""Hypothesis properties of the handshake state machines (STYLE.md §2-§4): arbitrary
bytes into every state, and random interleavings of deliveries, splits, corruption,
garbage, timers and alerts.  Only declared events come out, failure is sticky, and
whenever both sides complete they agree on the keys."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from handshake_helpers import NOW, clone, handshake_pair, responder_context

from qudag_core.errors import QudagError
from qudag_core.handshake import HandshakeComplete, HandshakeUsageError, State, Terminated

_CTX = responder_context("prop-responder")


def _states():
    """One object parked in each waiting state."""
    i_cert, r_init = handshake_pair(_CTX, peer=None)
    i_resp, r0 = handshake_pair(_CTX)
    r0.receive_data(i_resp.data_to_send())
    return {
        "initiator EXPECT_CERT": i_cert,
        "initiator EXPECT_RESPONSE": i_resp,
        "responder EXPECT_INIT": r_init,
        "responder EXPECT_FINISH": r0,
    }


_PARKED = _states()


def _declared(events):
    for e in events:
        assert isinstance(e, (HandshakeComplete, Terminated))
        if isinstance(e, Terminated):
            assert isinstance(e.error, QudagError)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(_PARKED)), st.binary(max_size=400), st.integers(0, 3))
def test_arbitrary_bytes_into_each_state(name, data, prefix_kind):
    obj = clone(_PARKED[name])
    # Make some inputs start with a plausible frame header so bodies get parsed too.
    prefixes = [b"", b"\x05", b"\x06\x00\x20", b"\x03\x23\x13"]
    events = obj.receive_data(prefixes[prefix_kind] + data)
    _declared(events)
    assert not any(isinstance(e, HandshakeComplete) for e in events)
    assert obj.state in (State.FAILED, State.EXPECT_CERT, State.EXPECT_INIT, State.EXPECT_RESPONSE, State.EXPECT_FINISH)
    if obj.state == State.FAILED:
        assert obj.receive_data(b"more") == []


class HandshakeMachine(RuleBasedStateMachine):
    """Two peers with a hostile network between them."""

    def __init__(self):
        super().__init__()
        self.ctx = responder_context("machine-responder")
        self.init, self.resp = handshake_pair(self.ctx)
        self.to_r = bytearray()
        self.to_i = bytearray()
        self.now = NOW
        self.done = {"i": None, "r": None}
        self.failed = {"i": False, "r": False}
        self.tampered = False

    def _collect(self, side, events):
        _declared(events)
        for e in events:
            if isinstance(e, HandshakeComplete):
                assert self.done[side] is None and not self.failed[side]
                self.done[side] = e
            else:
                self.failed[side] = True

    def _pump_out(self):
        self.to_r += self.init.data_to_send()
        self.to_i += self.resp.data_to_send()

    def _feed(self, side, data):
        obj = self.init if side == "i" else self.resp
        if obj.state == State.DONE:
            if data:
                try:
                    obj.receive_data(data)
                except HandshakeUsageError:
                    pass
                else:
                    raise AssertionError("data after DONE must raise HandshakeUsageError")
            return
        self._collect(side, obj.receive_data(data, now=self.now))
        self._pump_out()

    @rule(n=st.integers(1, 12000))
    def deliver_to_responder(self, n):
        self._pump_out()
        chunk, self.to_r[:] = bytes(self.to_r[:n]), self.to_r[n:]
        self._feed("r", chunk)

    @rule(n=st.integers(1, 3000))
    def deliver_to_initiator(self, n):
        self._pump_out()
        chunk, self.to_i[:] = bytes(self.to_i[:n]), self.to_i[n:]
        self._feed("i", chunk)

    @precondition(lambda self: len(self.to_r) > 0 or len(self.to_i) > 0)
    @rule(pos=st.integers(0, 20000), xor=st.integers(1, 255), to_r=st.booleans())
    def corrupt_in_flight(self, pos, xor, to_r):
        buf = self.to_r if to_r and self.to_r else self.to_i if self.to_i else self.to_r
        buf[pos % len(buf)] ^= xor
        self.tampered = True

    @rule(data=st.binary(min_size=1, max_size=64), to_r=st.booleans())
    def inject_garbage(self, data, to_r):
        self._feed("r" if to_r else "i", data)
        self.tampered = True

    @rule(dt=st.floats(0, 15))
    def time_passes(self, dt):
        self.now += dt
        self._collect("i", self.init.handle_timer(self.now))
        self._collect("r", self.resp.handle_timer(self.now))
        self._pump_out()

    @invariant()
    def agree_when_both_done(self):
        a, b = self.done["i"], self.done["r"]
        if a is not None and b is not None:
            assert a.tx_key == b.rx_key and a.rx_key == b.tx_key and a.session_id == b.session_id

    @invariant()
    def sticky(self):
        for side, obj in (("i", self.init), ("r", self.resp)):
            if self.failed[side]:
                assert obj.state == State.FAILED and self.done[side] is None


HandshakeMachine.TestCase.settings = settings(
    max_examples=40, stateful_step_count=12, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestHandshakeMachine = HandshakeMachine.TestCase
