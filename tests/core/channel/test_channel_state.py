"""The state table, walked exhaustively, and two channels under random operation orders."""
from __future__ import annotations

import os

import pytest
from channel_helpers import make_pair
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from qudag_core.channel import (
    ChannelConfig,
    ChannelNotOpen,
    ChannelState,
    KeyUpdated,
    MessageReceived,
    NonceLimitReached,
    PingReceived,
    PongReceived,
    Terminated,
)
from qudag_core.channel.state import TRANSITIONS, Input, next_state

LONG = os.environ.get("QUDAG_LONG") == "1"


def test_table_covers_every_pair_and_ended_states_are_sticky():
    for state in ChannelState:
        for inp in Input:
            nxt = next_state(state, inp)
            if state is not ChannelState.OPEN:
                assert nxt in (None, state), (state, inp)
    assert {s for (s, _) in TRANSITIONS} == set(ChannelState)
    # every input is allowed in OPEN; only timers and close() in ended states
    assert all(next_state(ChannelState.OPEN, i) is not None for i in Input)
    for state in (ChannelState.CLOSED, ChannelState.ERROR):
        allowed = {i for i in Input if next_state(state, i) is not None}
        assert allowed == {Input.TIMER, Input.LOCAL_CLOSE}


@pytest.mark.parametrize("state_after", ["closed", "error"])
def test_local_inputs_missing_from_the_table_raise(state_after):
    a, b = make_pair()
    if state_after == "closed":
        a.close()
    else:
        a.receive_data(b"\x00\x00\x00\x00")
    assert next_state(a.state, Input.SEND) is None
    for op in (lambda: a.send_message(b""), a.ping, a.update_key):
        with pytest.raises(ChannelNotOpen):
            op()


class ChannelPair(RuleBasedStateMachine):
    """A and B exchange messages through two in-flight byte queues, in random order."""

    def __init__(self) -> None:
        super().__init__()
        cfg = ChannelConfig(max_frame_size=300, rekey_after_messages=4, rekey_after_bytes=700,
                            rekey_after_seconds=50.0, keepalive_interval=20.0, nonce_limit=6)
        self.a, self.b = make_pair(cfg)
        self.now = 0.0
        self.side = {"a": self.a, "b": self.b}
        self.peer = {"a": "b", "b": "a"}
        self.sent = {"a": [], "b": []}  # messages each side queued
        self.got = {"a": [], "b": []}  # messages each side received
        self.wire = {"a": b"", "b": b""}  # bytes in flight from each side
        self.terminated = {"a": 0, "b": 0}
        self.corrupted = {"a": False, "b": False}  # stream towards this side was tampered
        self.closed_by = None

    def _pull(self, name: str) -> None:
        self.wire[name] += self.side[name].data_to_send()

    def _events(self, name: str, events: list) -> None:
        for e in events:
            assert isinstance(e, (MessageReceived, KeyUpdated, PingReceived, PongReceived, Terminated))
            assert self.terminated[name] == 0, "event after Terminated"
            if isinstance(e, MessageReceived):
                self.got[name].append(e.data)
            elif isinstance(e, Terminated):
                self.terminated[name] += 1

    @rule(who=st.sampled_from("ab"), data=st.binary(max_size=300))
    def send(self, who, data):
        ch = self.side[who]
        try:
            ch.send_message(data)
        except ChannelNotOpen:
            assert ch.state is not ChannelState.OPEN
            return
        self.sent[who].append(data)
        self._pull(who)

    @rule(who=st.sampled_from("ab"))
    def ping(self, who):
        try:
            self.side[who].ping(b"p")
        except ChannelNotOpen:
            return
        self._pull(who)

    @rule(who=st.sampled_from("ab"))
    def update_key(self, who):
        try:
            self.side[who].update_key()
        except ChannelNotOpen:
            return
        self._pull(who)

    @rule(who=st.sampled_from("ab"), code=st.integers(0, 0xFFFF), dice=st.integers(0, 7))
    def close(self, who, code, dice):
        if dice:  # closing ends the interesting part of a run: keep it rare
            return
        self.side[who].close(code, "bye")
        self._pull(who)

    @rule(who=st.sampled_from("ab"), frac=st.one_of(st.just(1.0), st.floats(0, 1)))
    def deliver(self, who, frac):
        """Move part of ``who``'s in-flight bytes to its peer."""
        n = int(len(self.wire[who]) * frac)
        chunk, self.wire[who] = self.wire[who][:n], self.wire[who][n:]
        dst = self.peer[who]
        self._events(dst, self.side[dst].receive_data(chunk, now=self.now))
        self._pull(dst)  # PONGs and ALERTs go back

    @rule()
    def deliver_everything(self):
        for who in "abab":  # twice: replies (PONG, ALERT) to what was just delivered
            self.deliver(who, 1.0)

    @rule(who=st.sampled_from("ab"), pos=st.integers(0, 10**6), dice=st.integers(0, 7))
    def corrupt(self, who, pos, dice):
        if self.wire[who] and not dice:
            w = bytearray(self.wire[who])
            w[pos % len(w)] ^= 0x40
            self.wire[who] = bytes(w)
            self.corrupted[self.peer[who]] = True

    @rule(dt=st.floats(0, 40))
    def tick(self, dt):
        self.now += dt
        for name in "ab":
            ch = self.side[name]
            t = ch.get_timer()
            if t is not None and t <= self.now:
                self._events(name, ch.handle_timer(self.now))
                self._pull(name)

    @invariant()
    def delivered_in_order_and_bounded(self):
        for name in "ab":
            peer = self.peer[name]
            assert self.got[name] == self.sent[peer][: len(self.got[name])]
            ch = self.side[name]
            assert ch.buffered_bytes <= ch.max_buffered_bytes
            assert self.terminated[name] <= 1
            if self.terminated[name]:
                assert ch.state is not ChannelState.OPEN and ch.get_timer() is None

    @invariant()
    def counters_within_nonce_limit(self):
        for ch in (self.a, self.b):
            assert ch.tx_counter <= ch.config.nonce_limit and ch.rx_counter <= ch.config.nonce_limit

    @precondition(lambda self: not any(self.corrupted.values()))
    @invariant()
    def untampered_streams_never_fail(self):
        for name in "ab":
            assert self.side[name].state is not ChannelState.ERROR


ChannelPair.TestCase.settings = settings(
    max_examples=1000 if LONG else 150, stateful_step_count=40, deadline=None
)
TestChannelPair = ChannelPair.TestCase


def test_nonce_limit_never_reached_with_rekey_on():
    """With rekeying on, even a tiny nonce_limit never stops the sender."""
    a, b = make_pair(ChannelConfig(nonce_limit=2, rekey_after_messages=1))
    for i in range(20):
        try:
            a.send_message(bytes([i]))
        except NonceLimitReached:  # pragma: no cover - would be the bug
            pytest.fail("rekey should have come first")
    got = [e.data for e in b.receive_data(a.data_to_send()) if isinstance(e, MessageReceived)]
    assert got == [bytes([i]) for i in range(20)] and a.tx_epoch == 19
