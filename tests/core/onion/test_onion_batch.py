"""Batch data path (docs/onion.md "Batching"): ``send_relay_batch`` / ``receive_cells`` /
``batches_to_send`` on the client and ``receive_cells`` / ``send_backward_batch`` /
``batches_to_send`` on relays must be observably identical to the cell-by-cell API: the
same bytes on every link, the same events, the same teardown on tampering.

Each test builds two identical networks from the same seed; one is driven cell by cell,
the other in batches, and their transcripts are compared.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.errors import LocalProtocolError
from qudag_core.onion import cells as C
from qudag_core.onion.events import (
    CircuitClosed,
    ExitDataReceived,
    ExitMessageReceived,
    LinkNeeded,
    RelayMessageReceived,
)

CELL = C.CELL_SIZE
DATA = C.RelayCommand.DATA
R = C.DestroyReason


def _one(make_net, seed_rng, n=3, seed=b"batch", pure=False):
    net = make_net(n, seed_rng(seed), pure=pure)
    net.client.build(net.path(), 0.0)
    net.pump()
    net.client_events.clear()
    net.relay_events = [[] for _ in range(n)]
    return net


def _pair(make_net, seed_rng, n=3, seed=b"batch", pure=False):
    return [_one(make_net, seed_rng, n, seed, pure) for _ in range(2)]


def expand(events):
    """Cut every ``ExitDataReceived`` back into the per-cell ``ExitMessageReceived`` events
    it stands for (its ``sizes`` say where), so batched and cell-by-cell runs compare."""
    out = []
    for e in events:
        if isinstance(e, ExitDataReceived):
            assert sum(e.sizes) == len(e.data) and e.sizes
            off = 0
            for size in e.sizes:
                out.append(
                    ExitMessageReceived(
                        link_id=e.link_id, circ_id=e.circ_id, command=DATA, stream_id=e.stream_id,
                        data=e.data[off : off + size],
                    )
                )
                off += size
        else:
            out.append(e)
    return out


class FlipNth:
    """Tamper: flip ``mask`` at payload byte ``byte`` of the k-th RELAY cell on ``link``."""

    def __init__(self, link, k, byte, mask=1):
        self.link, self.k, self.byte, self.mask, self.seen = link, k, byte, mask, 0

    def __call__(self, src, dst, index, cell):
        if (src, dst) == self.link and cell[C.CIRC_ID_SIZE] == C.CellCommand.RELAY:
            self.seen += 1
            if self.seen == self.k + 1:
                b = bytearray(cell)
                b[C.HEADER_SIZE + self.byte] ^= self.mask
                return bytes(b)
        return cell


class Wire:
    """Moves output of a ``Net`` either cell by cell or batch by batch, recording every
    link's bytes; ``tamper(src, dst, index, cell) -> cell`` sees cells by global index."""

    def __init__(self, net, batched: bool, tamper=None) -> None:
        self.net = net
        self.batched = batched
        self.tamper = tamper
        self.sent: dict = {}
        self.index = 0
        self.raw_events: list = []  # relay events before ``expand``

    def _mangle(self, src, dst, data: bytes) -> bytes:
        out = bytearray()
        for off in range(0, len(data), CELL):
            cell = bytes(data[off : off + CELL])
            if self.tamper is not None:
                cell = self.tamper(src, dst, self.index, cell)
            self.index += 1
            out += cell
        # ML-KEM encapsulation is randomised, so two networks never share keys: compare
        # what is comparable across them, the plaintext cell headers, in order
        heads = b"".join(bytes(out[o : o + C.HEADER_SIZE]) for o in range(0, len(out), CELL))
        self.sent[(src, dst)] = self.sent.get((src, dst), b"") + heads
        return bytes(out)

    def _to_relay(self, i, link, data, now):
        net = self.net
        r = net.relays[i]
        evs = r.receive_cells(link, data, now) if self.batched else r.receive_cell(link, data, now)
        self.raw_events += evs
        for e in expand(evs):
            net.relay_events[i].append(e)
            assert not isinstance(e, LinkNeeded)

    def pump(self, now=0.0, limit=1000):
        net = self.net
        for _ in range(limit):
            moved = False
            out = net.client.batches_to_send() if self.batched else net.client.cells_to_send()
            for data in out:
                moved = True
                self._to_relay(0, "client", self._mangle("client", 0, data), now)
            for i, r in enumerate(net.relays):
                items = r.batches_to_send() if self.batched else r.cells_to_send()
                for link, data in items:
                    moved = True
                    dst = net.ends[(i, link)]
                    data = self._mangle(i, dst, data)
                    if dst == "client":
                        c = net.client
                        net.client_events += c.receive_cells(data, now) if self.batched else c.receive_cell(data, now)
                    else:
                        self._to_relay(dst, link, data, now)
            if not moved:
                return
        raise AssertionError("network did not settle")


def _exit_key(net, hop=2):
    return next(iter(net.relays[hop]._circuits))


def _send(net, batched, hop, msgs):
    if batched:
        net.client.send_relay_batch(hop, msgs)
    else:
        for m in msgs:
            net.client.send_relay(hop, *m)


def _send_back(net, batched, hop, msgs):
    key = _exit_key(net, hop)
    if batched:
        net.relays[hop].send_backward_batch(key[0], key[1], msgs)
    else:
        for m in msgs:
            net.relays[hop].send_backward(key[0], key[1], *m)


def _run_both(make_net, seed_rng, fwd, back, tamper=None, hop=2, seed=b"batch"):
    a, b = _pair(make_net, seed_rng, seed=seed)
    wires = []
    for net, batched in ((a, False), (b, True)):
        w = Wire(net, batched, tamper)
        if fwd:
            _send(net, batched, hop, fwd)
            w.pump()
        if back and net.relays[hop].circuit_count:
            _send_back(net, batched, hop, back)
            w.pump()
        wires.append(w)
    return a, b, wires


def _msgs(sizes, sid=5):
    return [(DATA, sid, bytes([k & 0xFF]) * s) for k, s in enumerate(sizes)]


def test_batch_path_matches_cell_by_cell(make_net, seed_rng):
    fwd = _msgs([998, 1, 0, 500, 998] * 7)
    back = _msgs([998, 3, 998, 998])
    a, b, (wa, wb) = _run_both(make_net, seed_rng, fwd, back)
    assert wa.sent == wb.sent and wa.sent  # every link carried the same cells
    assert a.relay_events == b.relay_events
    exit_msgs = [e for e in b.relay_events[2] if isinstance(e, ExitMessageReceived)]
    assert [(e.command, e.stream_id, e.data) for e in exit_msgs] == fwd
    assert a.client_events == b.client_events
    got = [(e.command, e.stream_id, e.data) for e in b.client_events if isinstance(e, RelayMessageReceived)]
    assert got == back
    assert b.circuits() == [1, 1, 1]
    # the forward run crossed each relay as one item and reached the exit's stream layer
    # as runs (a DATA cell of length 0 or 1 still joins its run)
    runs = [e for e in wb.raw_events if isinstance(e, ExitDataReceived)]
    assert len(runs) < len(fwd) and sum(len(e.sizes) for e in runs) == len(fwd) == 35
    assert not any(isinstance(e, ExitDataReceived) for e in wa.raw_events)


def test_batch_to_middle_hop_and_pure_layers(make_net, seed_rng):
    a, b = _pair(make_net, seed_rng, pure=True)
    for net, batched in ((a, False), (b, True)):
        _send(net, batched, 1, _msgs([10, 998, 20]))
        Wire(net, batched).pump()
    assert a.relay_events == b.relay_events
    assert [e.data for e in b.relay_events[1] if isinstance(e, ExitMessageReceived)] == [
        b"\x00" * 10,
        b"\x01" * 998,
        b"\x02" * 20,
    ]
    assert b.relay_events[2] == []


@pytest.mark.parametrize("k", [0, 3, 9])
@pytest.mark.parametrize("link", [("client", 0), (0, 1), (1, 2)])
def test_forward_tagging_inside_a_batch(make_net, seed_rng, k, link):
    results = []
    for batched in (False, True):
        net = _one(make_net, seed_rng)
        w = Wire(net, batched, FlipNth(link, k, 40, 0x10))
        _send(net, batched, 2, _msgs([998] * 10))
        w.pump()
        exits = [e.data for e in net.relay_events[2] if isinstance(e, ExitMessageReceived)]
        results.append((w.sent, exits, net.client_events, net.circuits()))
    assert results[0] == results[1]
    sent, exits, client_events, circuits = results[1]
    assert len(exits) == k  # the cells before the modified one got through, none after
    assert client_events[-1] == CircuitClosed(reason=R.INTEGRITY, remote=True)
    assert circuits == [0, 0, 0]


@pytest.mark.parametrize("k", [0, 2, 5])
def test_backward_tagging_inside_a_batch(make_net, seed_rng, k):
    results = []
    for batched in (False, True):
        net = _one(make_net, seed_rng)
        w = Wire(net, batched, FlipNth((1, 0), k, 3))
        _send_back(net, batched, 2, _msgs([100] * 6))
        w.pump()
        results.append((w.sent, net.client_events, net.circuits()))
    assert results[0] == results[1]
    sent, client_events, circuits = results[1]
    assert len([e for e in client_events if isinstance(e, RelayMessageReceived)]) == k
    assert client_events[-1] == CircuitClosed(reason=R.INTEGRITY, remote=False)
    assert circuits == [0, 0, 0]


def test_batch_cells_are_fixed_size_and_split_for_cells_to_send(make_net, seed_rng):
    net = _one(make_net, seed_rng)
    net.client.send_relay_batch(2, _msgs([1, 998, 7]))
    cells = net.client.cells_to_send()
    assert [len(c) for c in cells] == [CELL] * 3 and all(isinstance(c, bytes) for c in cells)
    net.client.send_relay_batch(2, _msgs([1, 2]))
    (item,) = net.client.batches_to_send()
    assert len(item) == 2 * CELL


def test_send_relay_batch_checks_like_send_relay(make_net, seed_rng):
    net = _one(make_net, seed_rng)
    with pytest.raises(LocalProtocolError):
        net.client.send_relay_batch(3, _msgs([1]))
    with pytest.raises(LocalProtocolError):
        net.client.send_relay_batch(2, [(C.RelayCommand.EXTEND, 0, b"x")])
    with pytest.raises(ValueError):
        net.client.send_relay_batch(2, [(DATA, 1, b"x" * 999)])
    net.client.send_relay_batch(2, [])
    assert net.client.batches_to_send() == []
    net.client.destroy()
    with pytest.raises(LocalProtocolError):
        net.client.send_relay_batch(0, _msgs([1]))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("data"), st.integers(0, 998)),
            st.tuples(st.just("junk"), st.binary(min_size=CELL, max_size=CELL)),
            st.tuples(st.just("flip"), st.integers(0, CELL * 8 - 1)),
            st.tuples(st.just("cmd"), st.integers(0, 255)),
        ),
        min_size=1,
        max_size=10,
    )
)
def test_relay_receive_cells_equals_cell_by_cell(make_net, seed_rng, ops):
    """Any mix of valid, modified, foreign and random cells in one link message gives the
    relay the same events, output and circuit state as feeding them one by one."""
    outs = []
    for batched in (False, True):
        net = _one(make_net, seed_rng, n=2, seed=b"prop")
        cid = net.client.circ_id
        buf = bytearray()
        for kind, arg in ops:
            if kind == "junk":
                buf += arg
                continue
            net.client.send_relay(1, DATA, 3, b"z" * (arg if kind == "data" else 5))
            (cell,) = net.client.cells_to_send()
            cell = bytearray(cell)
            if kind == "flip":
                cell[arg // 8] ^= 1 << (arg % 8)
            elif kind == "cmd":
                cell[C.CIRC_ID_SIZE] = arg
                # the first payload byte is ciphertext, different in the two networks
                # (randomised KEM): fix it, since a DESTROY reads it as its reason
                cell[C.HEADER_SIZE] = 9
            assert int.from_bytes(cell[:4], "big") == cid or kind == "flip"
            buf += cell
        r0 = net.relays[0]
        if batched:
            evs = expand(r0.receive_cells("client", bytes(buf) + b"tail", 0.0))
            out = b"".join(bytes(d) for _, d in r0.batches_to_send())
        else:
            evs = []
            for off in range(0, len(buf), CELL):
                evs += r0.receive_cell("client", bytes(buf[off : off + CELL]), 0.0)
            out = b"".join(d for _, d in r0.cells_to_send())
        heads = [out[o : o + C.HEADER_SIZE] for o in range(0, len(out), CELL)]
        outs.append((evs, heads, len(out), net.circuits()))
    assert outs[0] == outs[1]


class _ClearLayer:
    """Stands in for a hop's forward layer so the plaintext cells can be compared."""

    def encrypt(self, buf, originate=False):
        pass


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([DATA, C.RelayCommand.BEGIN, C.RelayCommand.DROP, 200]), st.integers(0, 0xFFFF),
                  st.binary(max_size=C.RELAY_DATA_MAX)),
        min_size=1,
        max_size=70,
    )
)
def test_send_relay_batch_builds_the_cells_send_relay_builds(seed_rng, msgs):
    """Plaintext level: the same header, data and random padding (same rng calls) as
    ``send_relay`` one message at a time."""
    from qudag_core.onion.circuit import ClientCircuit, ClientState

    made = []
    for batched in (False, True):
        c = ClientCircuit(7, rng=seed_rng(b"pad"), now=0.0)
        c.state = ClientState.OPEN
        c._fwd = [_ClearLayer()]
        if batched:
            c.send_relay_batch(0, [(cmd, sid, memoryview(d)) for cmd, sid, d in msgs])
            made.append(b"".join(bytes(x) for x in c.batches_to_send()))
        else:
            for m in msgs:
                c.send_relay(0, *m)
            made.append(b"".join(c.cells_to_send()))
    assert made[0] == made[1] and len(made[1]) == CELL * len(msgs)


def _code(command) -> int:
    return command.code if isinstance(command, C.Unrecognized) else int(command)


_CMDS = [DATA, DATA, DATA, C.RelayCommand.SENDME, C.RelayCommand.END, C.RelayCommand.DROP, 200]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(st.tuples(st.sampled_from(_CMDS), st.integers(1, 3), st.integers(0, C.RELAY_DATA_MAX)), min_size=1,
             max_size=80),
    st.one_of(
        st.none(),
        st.tuples(
            st.sampled_from([("client", 0), (0, 1), (1, 2)]), st.integers(0, 79), st.integers(0, C.PAYLOAD_SIZE - 1)
        ),
    ),
)
def test_exit_runs_equal_cell_by_cell(make_net, seed_rng, specs, tamper):
    """Any mix of DATA (several streams, any length), SENDME, END, DROP and unknown relay
    commands to the exit, optionally with one bit flipped in any cell on any hop: the
    batched path's events, cut back with ``expand``, are the per-cell events; the same
    cells cross every link; a flip destroys the circuit everywhere and no data of the
    flipped cell or after it reaches the exit's events."""
    fwd = [(cmd, sid, bytes([k & 0xFF]) * ln) for k, (cmd, sid, ln) in enumerate(specs)]
    results = []
    for batched in (False, True):
        net = _one(make_net, seed_rng)
        flip = FlipNth(tamper[0], tamper[1], tamper[2], 0x04) if tamper else None
        w = Wire(net, batched, flip)
        _send(net, batched, 2, fwd)
        w.pump()
        results.append((w.sent, net.relay_events, net.client_events, net.circuits()))
        if batched:
            raw = w.raw_events
    assert results[0] == results[1]
    sent, relay_events, client_events, circuits = results[1]
    got = [(_code(e.command), e.stream_id, e.data) for e in relay_events[2] if isinstance(e, ExitMessageReceived)]
    expected = [m for m in fwd if m[0] != C.RelayCommand.DROP]
    if tamper is None or tamper[1] >= len(fwd):
        assert got == expected and circuits == [1, 1, 1]
    else:
        k = tamper[1]
        assert got == [m for m in fwd[:k] if m[0] != C.RelayCommand.DROP]
        assert circuits == [0, 0, 0]
        assert client_events[-1] == CircuitClosed(reason=R.INTEGRITY, remote=True)
    # DATA that arrived together reached the exit as runs
    for e in raw:
        if isinstance(e, ExitDataReceived):
            assert sum(e.sizes) == len(e.data)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 70), st.integers(0, 0xFFFFFFFF))
def test_relabel_writes_every_circuit_id(n, cid):
    from qudag_core.onion.relay import OnionRelay

    run = bytearray(range(256)) * (4 * n)
    expected = bytearray(run)
    for off in range(0, len(run), CELL):
        expected[off : off + 4] = cid.to_bytes(4, "big")
    OnionRelay._relabel(run, cid)
    assert run == expected
