"""DCUtR-style punch coordination (qudag_core/nat/punch.py): codec and state machines."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from qudag_core.errors import LocalProtocolError
from qudag_core.nat import punch as P
from qudag_core.nat.traversal_events import DialNow, PunchFailed, PunchSendMessage

A_ADDR = ("192.0.2.10", 4001)
B_ADDR = ("198.51.100.20", 4002)
addrs = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)


@given(st.lists(addrs, min_size=1, max_size=P.MAX_ADDRESSES))
def test_connect_roundtrip(lst):
    data = P.encode_connect(lst)
    assert P.decode_message(data) == ("connect", tuple(lst))
    # byte by byte prefixes are all refused (a message is never half-valid)
    for i in range(len(data)):
        with pytest.raises(P.PunchMessageError):
            P.decode_message(data[:i])
    with pytest.raises(P.PunchMessageError):
        P.decode_message(data + b"\x00")


@given(st.binary(max_size=60))
def test_decode_any_bytes(data):
    try:
        kind, lst = P.decode_message(data)
    except P.PunchMessageError:
        return
    assert kind in ("connect", "sync")
    assert (P.encode_connect(lst) if kind == "connect" else P.encode_sync()) == data


def test_known_encoding_and_limits():
    assert P.encode_connect([("203.0.113.5", 80)]) == b"\x01\x01\x04\xcb\x00\x71\x05\x00\x50"
    assert P.encode_sync() == b"\x02"
    with pytest.raises(LocalProtocolError):
        P.encode_connect([])
    with pytest.raises(LocalProtocolError):
        P.encode_connect([A_ADDR] * 9)


def exchange(ini, res, t0=100.0, one_way=0.02):
    """Run one DCUtR round; returns the two DialNow events."""
    out = ini.start(t0) if ini.state is P.PunchState.IDLE else ini.dial_failed(t0)
    (connect,) = out
    (reply,) = res.receive_message(connect.data, t0 + one_way)
    sync, dial_a = ini.receive_message(reply.data, t0 + 2 * one_way)
    assert isinstance(sync, PunchSendMessage) and isinstance(dial_a, DialNow)
    (dial_b,) = res.receive_message(sync.data, t0 + 3 * one_way)
    return dial_a, dial_b


def test_both_sides_dial_at_the_same_instant():
    ini, res = P.PunchInitiator([A_ADDR]), P.PunchResponder([B_ADDR])
    dial_a, dial_b = exchange(ini, res)
    assert dial_a.addresses == (B_ADDR,) and dial_b.addresses == (A_ADDR,)
    assert dial_a.rtt == pytest.approx(0.04)
    # A dials RTT/2 after sending SYNC, which is when SYNC reaches B (one-way delay).
    assert dial_a.at == pytest.approx(dial_b.at)
    ini.succeeded()
    res.succeeded()
    assert ini.state is res.state is P.PunchState.DONE
    assert ini.get_timer() is None


def test_retries_then_gives_up():
    ini, res = P.PunchInitiator([A_ADDR], max_attempts=2), P.PunchResponder([B_ADDR], max_attempts=2)
    exchange(ini, res)
    res.dial_failed(101.0)
    d1, d2 = exchange(ini, res, t0=102.0)
    assert d1.attempt == d2.attempt == 2
    (failed,) = ini.dial_failed(103.0)
    assert isinstance(failed, PunchFailed) and ini.state is P.PunchState.FAILED
    assert ini.receive_message(P.encode_sync(), 104.0) == []  # sticky


def test_timeouts():
    ini = P.PunchInitiator([A_ADDR], timeout=5)
    ini.start(0.0)
    assert ini.get_timer() == 5.0
    assert ini.handle_timer(4.9) == []
    assert isinstance(ini.handle_timer(5.0)[0], PunchFailed)
    res = P.PunchResponder([B_ADDR], timeout=5)
    res.receive_message(P.encode_connect([A_ADDR]), 0.0)
    assert isinstance(res.handle_timer(6.0)[0], PunchFailed)


def test_protocol_violations_fail_sticky():
    res = P.PunchResponder([B_ADDR])
    (f,) = res.receive_message(P.encode_sync(), 0.0)  # SYNC before CONNECT
    assert isinstance(f, PunchFailed) and res.state is P.PunchState.FAILED
    ini = P.PunchInitiator([A_ADDR])
    ini.start(0.0)
    (f,) = ini.receive_message(b"\x07junk", 0.1)
    assert isinstance(f, PunchFailed)
    with pytest.raises(LocalProtocolError):
        P.PunchInitiator([A_ADDR]).succeeded()


inputs = st.lists(st.one_of(
    st.tuples(st.just("msg"), st.sampled_from([P.encode_connect([A_ADDR]), P.encode_sync(), b"", b"\x09"])),
    st.tuples(st.just("timer"), st.floats(0, 20)),
    st.tuples(st.just("dial_failed"), st.just(None)),
    st.tuples(st.just("succeeded"), st.just(None)),
), max_size=25)


@settings(max_examples=200, deadline=None)
@given(st.booleans(), inputs)
def test_random_event_orders(initiator, seq):
    core = P.PunchInitiator([A_ADDR]) if initiator else P.PunchResponder([B_ADDR])
    now = 0.0
    if initiator:
        core.start(now)
    for kind, arg in seq:
        now += 0.5
        before = core.state
        try:
            if kind == "msg":
                evs = core.receive_message(arg, now)
            elif kind == "timer":
                evs = core.handle_timer(now + arg)
            elif kind == "dial_failed":
                evs = core.dial_failed(now)
            else:
                core.succeeded()
                evs = []
        except LocalProtocolError:
            assert core.state is before  # API misuse leaves the state alone
            continue
        for e in evs:
            assert isinstance(e, (PunchSendMessage, DialNow, PunchFailed))
            if isinstance(e, DialNow):
                assert e.at >= now and e.attempt <= core.max_attempts
        if before in (P.PunchState.DONE, P.PunchState.FAILED):
            assert core.state is before  # terminal states are sticky
        assert core.attempt <= core.max_attempts + 1
