"""Streams and SENDME windows (tor-spec §6, §7.3-7.4 semantics; docs/onion.md §5)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.errors import LocalProtocolError
from qudag_core.onion.cells import RELAY_DATA_MAX, RelayCommand
from qudag_core.onion.events import ExitMessageReceived, RelayMessageReceived
from qudag_core.onion.streams import (
    CIRCUIT_WINDOW,
    STREAM_WINDOW,
    StreamData,
    StreamEnded,
    StreamError,
    StreamMux,
    StreamOpened,
    StreamRequested,
)


class Pair:
    """A client mux and an exit mux wired directly (no circuit)."""

    def __init__(self, **kw):
        self.c = StreamMux(is_client=True, **kw)
        self.e = StreamMux(is_client=False, **kw)
        self.ce: list = []
        self.ee: list = []

    def pump(self, *, to_exit=True, to_client=True):
        for _ in range(100_000):
            a = self.c.messages_to_send() if to_exit else []
            b = self.e.messages_to_send() if to_client else []
            if not a and not b:
                return
            for m in a:
                self.ee += self.e.receive_message(*m)
            for m in b:
                self.ce += self.c.receive_message(*m)


def test_open_transfer_close():
    p = Pair()
    sid = p.c.open_stream(b"example:80")
    p.pump()
    assert p.ee == [StreamRequested(stream_id=sid, target=b"example:80")]
    p.e.accept(sid)
    p.pump()
    assert p.ce == [StreamOpened(stream_id=sid)]
    blob = bytes(range(256)) * 40
    assert p.c.send(sid, blob) == len(blob)
    assert p.e.send(sid, blob[::-1]) == len(blob)
    p.pump()
    assert b"".join(e.data for e in p.ee if isinstance(e, StreamData)) == blob
    assert b"".join(e.data for e in p.ce if isinstance(e, StreamData)) == blob[::-1]
    p.c.close(sid)
    p.pump()
    assert p.ee[-1] == StreamEnded(stream_id=sid, reason=0)


def test_data_waits_for_connected():
    p = Pair()
    sid = p.c.open_stream(b"t")
    p.c.send(sid, b"early")
    assert [m[0] for m in p.c.messages_to_send()] == [RelayCommand.BEGIN]
    p.e.receive_message(RelayCommand.BEGIN, sid, b"t")
    p.e.accept(sid)
    for m in p.e.messages_to_send():
        p.c.receive_message(*m)
    assert p.c.messages_to_send() == [(RelayCommand.DATA, sid, b"early")]


def test_stream_window_stops_sender_until_sendme():
    p = Pair(max_buffered=10**7)
    sid = p.c.open_stream(b"t")
    p.pump()
    p.e.accept(sid)
    p.pump()
    p.c.send(sid, b"x" * RELAY_DATA_MAX * (STREAM_WINDOW + 100))
    sent = [m for m in p.c.messages_to_send() if m[0] == RelayCommand.DATA]
    assert len(sent) == STREAM_WINDOW  # window exhausted, rest buffered
    for m in sent:
        p.e.receive_message(*m)
    sendmes = [m for m in p.e.messages_to_send() if m[0] == RelayCommand.SENDME]
    assert (RelayCommand.SENDME, sid, b"") in sendmes
    for m in sendmes:
        p.c.receive_message(*m)
    assert len([m for m in p.c.messages_to_send() if m[0] == RelayCommand.DATA]) == 100


def test_circuit_window_shared_by_streams():
    p = Pair(max_buffered=10**7)
    sids = [p.c.open_stream(b"t") for _ in range(3)]
    p.pump()
    for s in sids:
        p.e.accept(s)
    p.pump()
    for s in sids:
        p.c.send(s, b"y" * RELAY_DATA_MAX * STREAM_WINDOW)
    assert len(p.c.messages_to_send()) == CIRCUIT_WINDOW


def test_violations_are_stream_errors():
    e = StreamMux(is_client=False)
    e.receive_message(RelayCommand.BEGIN, 5, b"t")
    with pytest.raises(StreamError):
        e.receive_message(RelayCommand.DATA, 5, b"x")  # before CONNECTED
    e.accept(5)
    for _ in range(STREAM_WINDOW):
        e.receive_message(RelayCommand.DATA, 5, b"x")
    e.messages_to_send()  # SENDMEs the exit would send
    c = StreamMux(is_client=True)
    with pytest.raises(StreamError):
        c.receive_message(RelayCommand.BEGIN, 1, b"")
    with pytest.raises(StreamError):
        c.receive_message(RelayCommand.SENDME, 0, b"")  # would exceed the window
    with pytest.raises(StreamError):
        c.receive_message(RelayCommand.DATA, 0, b"")
    d = StreamMux(is_client=False, auto_sendme=False)
    d.receive_message(RelayCommand.BEGIN, 1, b"")
    d.accept(1)
    for _ in range(STREAM_WINDOW):
        d.receive_message(RelayCommand.DATA, 1, b"x")
    with pytest.raises(StreamError):  # a sender that ignores the window
        d.receive_message(RelayCommand.DATA, 1, b"x")


def test_manual_sendme_backpressure():
    p = Pair(max_buffered=10**7)
    p.e = StreamMux(is_client=False, auto_sendme=False)
    sid = p.c.open_stream(b"t")
    p.pump()
    p.e.accept(sid)
    p.c.send(sid, b"q" * RELAY_DATA_MAX * 600)
    p.pump()
    data = [e for e in p.ee if isinstance(e, StreamData)]
    assert len(data) == STREAM_WINDOW  # the app consumed nothing: sender stalled
    p.e.consumed(sid, 100)
    p.pump()
    assert len([e for e in p.ee if isinstance(e, StreamData)]) == 600


def test_local_misuse():
    c = StreamMux(is_client=True)
    with pytest.raises(LocalProtocolError):
        c.send(9, b"x")
    with pytest.raises(LocalProtocolError):
        StreamMux(is_client=False).open_stream(b"t")


def test_backpressure():
    c = StreamMux(is_client=True, max_buffered=3000)
    sid = c.open_stream(b"t")
    assert c.send(sid, b"z" * 5000) == 3000
    assert not c.writable(sid)
    assert c.send(sid, b"z") == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3), st.binary(max_size=8)), max_size=40), st.booleans())
def test_random_messages_only_declared_errors(msgs, client):
    m = StreamMux(is_client=client)
    for cmd, sid, data in msgs:
        try:
            m.receive_message(RelayCommand(cmd) if 1 <= cmd <= 8 else cmd, sid, data)
        except StreamError:
            break
        assert all(0 <= s.package <= STREAM_WINDOW for s in m._streams.values())
        assert m.circ_package <= CIRCUIT_WINDOW and m.circ_deliver <= CIRCUIT_WINDOW


def test_end_to_end_over_three_hops(rng, make_net):
    net = make_net(3, rng)
    net.client.build(net.path(), 0.0)
    net.pump()
    cm, em = StreamMux(is_client=True, max_buffered=10**6), StreamMux(is_client=False, max_buffered=10**6)
    got_c: list = []
    got_e: list = []
    seen_c = seen_e = 0

    def shuttle():
        nonlocal seen_c, seen_e
        for _ in range(1000):
            moved = False
            for cmd, sid, data in cm.messages_to_send():
                net.client.send_relay(2, cmd, sid, data)
                moved = True
            net.pump()
            for ev in net.relay_events[2][seen_e:]:
                if isinstance(ev, ExitMessageReceived):
                    got_e.extend(em.receive_message(ev.command, ev.stream_id, ev.data))
            seen_e = len(net.relay_events[2])
            for cmd, sid, data in em.messages_to_send():
                key = next(iter(net.relays[2]._circuits))
                net.relays[2].send_backward(key[0], key[1], cmd, sid, data)
                moved = True
            net.pump()
            for ev in net.client_events[seen_c:]:
                if isinstance(ev, RelayMessageReceived):
                    got_c.extend(cm.receive_message(ev.command, ev.stream_id, ev.data))
            seen_c = len(net.client_events)
            if not moved:
                return

    sid = cm.open_stream(b"service:443")
    shuttle()
    assert got_e == [StreamRequested(stream_id=sid, target=b"service:443")]
    em.accept(sid)
    blob = rng(600_000)  # > STREAM_WINDOW cells: SENDMEs must flow through the circuit
    cm.send(sid, blob)
    em.send(sid, blob[::-1])
    shuttle()
    assert StreamOpened(stream_id=sid) in got_c
    assert b"".join(e.data for e in got_e if isinstance(e, StreamData)) == blob
    assert b"".join(e.data for e in got_c if isinstance(e, StreamData)) == blob[::-1]
    assert net.client.state == "OPEN"
    sendmes = [e for e in net.relay_events[2] if isinstance(e, ExitMessageReceived) and e.command == RelayCommand.SENDME]
    assert {e.stream_id for e in sendmes} == {0, sid}  # circuit- and stream-level SENDMEs


@settings(max_examples=60, deadline=None)
@given(
    st.booleans(),
    st.sampled_from([0, 1, 2]),
    st.lists(st.binary(max_size=8), min_size=0, max_size=STREAM_WINDOW + 30),
    st.booleans(),
)
def test_receive_data_run_equals_receive_message(auto, sid, chunks, opened):
    """The batch DATA path delivers exactly what cell-by-cell ``receive_message`` would,
    raises the same violation at the same cell, and leaves the same windows and SENDMEs."""
    outs = []
    for batched in (False, True):
        m = StreamMux(is_client=False, auto_sendme=auto)
        m.receive_message(RelayCommand.BEGIN, 1, b"t")
        if opened:
            m.accept(1)
        m.messages_to_send()
        got, err = [], None
        if batched:
            got, err = m.receive_data_run(sid, list(chunks))
            got = list(got)
        else:
            try:
                for c in chunks:
                    got += [e.data for e in m.receive_message(RelayCommand.DATA, sid, c)]
            except StreamError as e:
                err = e
        outs.append((got, type(err), m.circ_deliver, m.messages_to_send()))
    assert outs[0] == outs[1]
    if opened and sid == 1 and auto:
        assert outs[1][0] == chunks and outs[1][1] is type(None)
    if not auto and opened and sid == 1 and len(chunks) > STREAM_WINDOW:
        assert outs[1][1] is StreamError and len(outs[1][0]) == STREAM_WINDOW


def _sendmes(msgs):
    return [m for m in msgs if m[0] == RelayCommand.SENDME]


@settings(max_examples=60, deadline=None)
@given(
    st.booleans(),
    st.lists(
        st.one_of(st.tuples(st.just("data"), st.integers(0, 260)), st.tuples(st.just("consume"), st.integers(1, 120))),
        max_size=12,
    ),
)
def test_receive_data_cells_equals_cells_one_by_one(auto, ops):
    """Several batches in a row (state carried over, with the application's ``consumed``
    between them when SENDMEs are manual): the batch call accepts the same number of cells,
    fails at the same cell, and leaves the same windows and the same SENDMEs *in the same
    order* (stream and circuit SENDMEs interleaved by the cell that earned them)."""
    outs = []
    for batched in (False, True):
        m = StreamMux(is_client=False, auto_sendme=auto)
        m.receive_message(RelayCommand.BEGIN, 1, b"t")
        m.accept(1)
        m.messages_to_send()
        log = []
        for kind, k in ops:
            if kind == "consume":
                m.consumed(1, k)
                continue
            if batched:
                got, err = m.receive_data_cells(1, k)
            else:
                got, err = 0, None
                try:
                    for _ in range(k):
                        m.receive_message(RelayCommand.DATA, 1, b"x")
                        got += 1
                except StreamError as e:
                    err = e
            log.append((got, type(err)))
            if err is not None:
                break
        st_ = m._streams[1]
        outs.append((log, m.circ_deliver, st_.deliver, st_.delivered_since, _sendmes(m.messages_to_send())))
    assert outs[0] == outs[1]


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 99), st.integers(0, 49), st.integers(1, 400))
def test_consumed_in_one_call_equals_cell_by_cell(circ_since, stream_since, cells):
    """``consumed(sid, k)`` earns the SENDMEs that k calls of ``consumed(sid, 1)`` earn,
    in the same order, from any starting point within the increments."""
    outs = []
    for one_call in (True, False):
        m = StreamMux(is_client=False, auto_sendme=False)
        m.receive_message(RelayCommand.BEGIN, 3, b"t")
        m.accept(3)
        m.messages_to_send()
        m._circ_delivered_since = circ_since
        m._streams[3].delivered_since = stream_since
        if one_call:
            m.consumed(3, cells)
        else:
            for _ in range(cells):
                m.consumed(3, 1)
        outs.append((m.messages_to_send(), m.circ_deliver, m._streams[3].deliver, m._circ_delivered_since))
    assert outs[0] == outs[1]
    assert len(outs[0][0]) == (stream_since + cells) // 50 + (circ_since + cells) // 100


def test_receive_data_cells_edge_cases():
    m = StreamMux(is_client=False)
    assert m.receive_data_cells(1, 0) == (0, None)
    got, err = m.receive_data_cells(0, 3)
    assert got == 0 and isinstance(err, StreamError)
    assert m.receive_data_cells(9, 3) == (0, None)  # unknown (closed) stream: dropped
    m.receive_message(RelayCommand.BEGIN, 1, b"t")
    got, err = m.receive_data_cells(1, 1)
    assert got == 0 and isinstance(err, StreamError)  # not accepted yet
