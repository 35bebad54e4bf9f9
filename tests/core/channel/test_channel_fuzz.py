"""Hostile input to ``receive_data``: only declared events, bounded memory, no exceptions.

Arbitrary bytes and mutated valid streams (bit flips, insertions, deletions,
truncations, duplicated spans) in arbitrary chunkings.  Whatever happens, the delivered
messages are a prefix of what was sent, at most one ``Terminated`` is reported and it
is the last event, and nothing is delivered afterwards.
"""
from __future__ import annotations

import os

from channel_helpers import make_pair
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.channel import (
    ChannelConfig,
    ChannelState,
    ErrorCode,
    KeyUpdated,
    MessageReceived,
    PingReceived,
    PongReceived,
    Terminated,
    UnknownFrameReceived,
)

LONG = os.environ.get("QUDAG_LONG") == "1"
EXAMPLES = 2000 if LONG else 400
CFG = ChannelConfig(max_frame_size=512, rekey_after_messages=3)
DECLARED = (MessageReceived, KeyUpdated, PingReceived, PongReceived, UnknownFrameReceived, Terminated)


def chunked(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in points + [len(data)]:
        out.append(data[prev:p])
        prev = p
    return out


def run(receiver, chunks) -> list:
    events: list = []
    for c in chunks:
        events += receiver.receive_data(c)  # must never raise
        assert receiver.buffered_bytes <= receiver.max_buffered_bytes
    return events


def check_invariants(events, sent: list[bytes], receiver) -> None:
    assert all(isinstance(e, DECLARED) for e in events)
    got = [e.data for e in events if isinstance(e, MessageReceived)]
    assert got == sent[: len(got)]
    terms = [i for i, e in enumerate(events) if isinstance(e, Terminated)]
    assert len(terms) <= 1
    if terms:
        assert terms[0] == len(events) - 1
        assert receiver.state is not ChannelState.OPEN
        t = events[-1]
        assert isinstance(t.error_code, int) and isinstance(t.reason, str)
        if not t.by_peer:
            assert isinstance(t.error_code, ErrorCode) and t.is_alert


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 5000), max_size=8))
def test_arbitrary_bytes(data, cuts):
    _, b = make_pair(CFG)
    events = run(b, chunked(data, cuts))
    check_invariants(events, [], b)
    # random bytes essentially never authenticate; anything complete must have failed
    assert not any(isinstance(e, MessageReceived) for e in events)


def valid_stream(msgs: list[bytes], pings: int):
    a, b = make_pair(CFG)
    for i, m in enumerate(msgs):
        a.send_message(m)
        if i < pings:
            a.ping(bytes([i]))
    return a.data_to_send(), b


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 7)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("dup"), st.integers(0, 10**6), st.integers(1, 60)),
)


def mutate(wire: bytes, ops) -> bytes:
    buf = bytearray(wire)
    for op in ops:
        if not buf:
            break
        pos = op[1] % len(buf)
        if op[0] == "flip":
            buf[pos] ^= 1 << op[2]
        elif op[0] == "insert":
            buf[pos:pos] = op[2]
        elif op[0] == "delete":
            del buf[pos : pos + op[2]]
        elif op[0] == "truncate":
            del buf[pos:]
        else:
            buf[pos:pos] = buf[pos : pos + op[2]]
    return bytes(buf)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    msgs=st.lists(st.binary(max_size=600).map(lambda b: b[:512]), min_size=1, max_size=10),
    pings=st.integers(0, 3),
    ops=st.lists(mutation, min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 10**5), max_size=6),
)
def test_mutated_valid_streams(msgs, pings, ops, cuts):
    wire, b = valid_stream(msgs, pings)
    bad = mutate(wire, ops)
    events = run(b, chunked(bad, cuts))
    check_invariants(events, msgs, b)
    # Exactly the frames wholly before the first changed byte are delivered: the
    # changed frame fails its tag and nothing after it is looked at.
    first_diff = next((i for i, (x, y) in enumerate(zip(bad, wire)) if x != y), min(len(bad), len(wire)))
    _, ref = valid_stream(msgs, pings)
    expected = [e.data for e in ref.receive_data(wire[:first_diff]) if isinstance(e, MessageReceived)]
    assert [e.data for e in events if isinstance(e, MessageReceived)] == expected
    # the stream ends either waiting for more bytes or terminated, never half-delivered
    after = b.receive_data(wire)
    assert all(isinstance(e, DECLARED) for e in after)


@settings(max_examples=EXAMPLES // 3, deadline=None)
@given(msgs=st.lists(st.binary(max_size=512), min_size=1, max_size=6), cuts=st.lists(st.integers(0, 10**5), max_size=10))
def test_valid_streams_in_any_chunking(msgs, cuts):
    wire, b = valid_stream(msgs, 0)
    events = run(b, chunked(wire, cuts))
    assert [e.data for e in events if isinstance(e, MessageReceived)] == msgs
    assert not any(isinstance(e, Terminated) for e in events)
