"""Circuit extension end to end (docs/onion.md §3): client core + relay cores in-process."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.errors import LocalProtocolError
from qudag_core.onion import cells as C
from qudag_core.onion.circuit import ClientCircuit, ClientState, HopSpec, TooManyHops
from qudag_core.onion.events import (
    CircuitBuilt,
    CircuitClosed,
    CircuitRotationDue,
    ExitMessageReceived,
    HopAdded,
    RelayCircuitClosed,
    RelayMessageReceived,
)

R = C.DestroyReason


@pytest.fixture(params=[False, True], ids=["kernel", "pure"])
def pure(request):
    return request.param


def built(make_net, n, rng, pure=False, **kw):
    net = make_net(n, rng, pure=pure, **kw)
    net.client.build(net.path(), 0.0)
    net.pump()
    return net


def test_three_hop_build_and_round_trips(rng, pure, make_net):
    net = built(make_net, 3, rng, pure)
    ev = net.client_events
    assert [e.hop for e in ev if isinstance(e, HopAdded)] == [0, 1, 2]
    assert ev[-1] == CircuitBuilt(hops=3)
    assert net.client.state == ClientState.OPEN and net.client.node_ids == net.ids
    assert net.circuits() == [1, 1, 1]
    # CREATE is 3 link cells, CREATED 2; EXTEND 3 relay cells, EXTENDED 2 (fragmentation)
    for hop in range(3):
        net.client.send_relay(hop, C.RelayCommand.DATA, 9, b"to hop %d" % hop)
        net.pump()
        got = [e for e in net.relay_events[hop] if isinstance(e, ExitMessageReceived)]
        assert got[-1].data == b"to hop %d" % hop and got[-1].stream_id == 9
        assert got[-1].command == C.RelayCommand.DATA
        net.relays[hop].send_backward(got[-1].link_id, got[-1].circ_id, C.RelayCommand.DATA, 9, b"from %d" % hop)
        net.pump()
        assert net.client_events[-1] == RelayMessageReceived(
            hop=hop, command=C.RelayCommand.DATA, stream_id=9, data=b"from %d" % hop
        )
    for i, evs in enumerate(net.relay_events):  # each message reached exactly its hop
        assert len([e for e in evs if isinstance(e, ExitMessageReceived)]) == 1


def test_handshake_cell_counts(rng, make_net):
    net = make_net(2, rng)
    net.client.build(net.path(), 0.0)
    out = net.client.cells_to_send()
    assert len(out) == 3 and all(C.Cell(c).command == C.CellCommand.CREATE for c in out)
    for c in out:
        net.relays[0].receive_cell("client", c, 0.0)
    back = net.relays[0].cells_to_send()
    assert len(back) == 2 and all(C.Cell(c).command == C.CellCommand.CREATED for _, c in back)
    for _, c in back:
        net.client.receive_cell(c, 0.0)
    ext = net.client.cells_to_send()
    assert len(ext) == 3 and all(C.Cell(c).command == C.CellCommand.RELAY for c in ext)


def test_eight_hops_then_ninth_refused_by_client(rng, make_net):
    net = built(make_net, 8, rng)
    assert net.client_events[-1] == CircuitBuilt(hops=8)
    assert net.circuits() == [1] * 8
    with pytest.raises(TooManyHops):
        net.client.extend(HopSpec(bytes(20), net.keys[0].public_key.raw), 1.0)
    net.pump()
    assert net.client.state == ClientState.CLOSED
    assert net.circuits() == [0] * 8  # DESTROY travelled the whole path
    assert all(any(isinstance(e, RelayCircuitClosed) for e in evs) for evs in net.relay_events)


def test_ninth_hop_refused_by_relay(rng, make_net):
    net = built(make_net, 9, rng, client_max_hops=9)
    closed = [e for e in net.client_events if isinstance(e, CircuitClosed)]
    assert closed == [CircuitClosed(reason=R.TOO_MANY_HOPS, remote=True)]
    assert len(net.client.node_ids) == 8
    assert net.circuits() == [0] * 9


def test_path_longer_than_max_refused(rng, make_net):
    net = make_net(9, rng)
    with pytest.raises(TooManyHops):
        net.client.build(net.path(), 0.0)
    assert net.client.state == ClientState.CLOSED


def test_client_destroy_propagates(rng, make_net):
    net = built(make_net, 3, rng)
    assert net.client.destroy() == [CircuitClosed(reason=R.REQUESTED, remote=False)]
    net.pump()
    assert net.circuits() == [0, 0, 0]


def test_middle_relay_link_loss_propagates_both_ways(rng, make_net):
    net = built(make_net, 3, rng)
    evs = net.relays[1].link_closed("1-2")
    assert [e.reason for e in evs] == [R.CONNECT_FAILED]
    # relay 1 told relay 0 (and so the client); relay 2 learns from its own link loss
    net.relays[2].link_closed("1-2")
    net.pump()
    assert net.circuits() == [0, 0, 0]
    assert net.client.state == ClientState.CLOSED


def _flipper(src, dst, bit, command=C.CellCommand.RELAY):
    state = {"done": False}

    def tamper(s, d, cell):
        if not state["done"] and (s, d) == (src, dst) and C.Cell(cell).command == command:
            state["done"] = True
            b = bytearray(cell)
            b[C.HEADER_SIZE + bit // 8] ^= 1 << (bit % 8)
            return bytes(b)
        return cell

    return tamper


@pytest.mark.parametrize("src,dst", [("client", 0), (0, 1), (1, 2)])
@pytest.mark.parametrize("bit", [0, 127, 128, 200, 8000])
def test_forward_tagging_destroys_circuit(rng, src, dst, bit, make_net):
    net = built(make_net, 3, rng)
    net.tamper = _flipper(src, dst, bit)
    net.client.send_relay(2, C.RelayCommand.DATA, 1, b"secret")
    net.pump()
    assert not any(isinstance(e, ExitMessageReceived) for evs in net.relay_events for e in evs)
    assert net.client_events[-1] == CircuitClosed(reason=R.INTEGRITY, remote=True)
    assert net.circuits() == [0, 0, 0]


@pytest.mark.parametrize("src,dst", [(2, 1), (1, 0), (0, "client")])
@pytest.mark.parametrize("bit", [0, 127, 128, 8000])
def test_backward_tagging_destroys_circuit(rng, src, dst, bit, make_net):
    net = built(make_net, 3, rng)
    net.tamper = _flipper(src, dst, bit)
    link = net.relays[2]
    circ_key = next(iter(link._circuits))
    link.send_backward(circ_key[0], circ_key[1], C.RelayCommand.DATA, 1, b"reply")
    net.pump()
    assert not any(isinstance(e, RelayMessageReceived) for e in net.client_events)
    assert net.client_events[-1] == CircuitClosed(reason=R.INTEGRITY, remote=False)
    assert net.circuits() == [0, 0, 0]


def test_wrong_relay_key_fails_key_confirmation(rng, make_net):
    net = make_net(2, rng)
    path = net.path()
    path[1] = HopSpec(path[1].node_id, net.keys[0].public_key.raw)  # not relay 1's key
    net.client.build(path, 0.0)
    net.pump()
    assert net.client_events[-1] == CircuitClosed(reason=R.HANDSHAKE_FAILED, remote=False)
    assert net.circuits() == [0, 0]


def test_create_for_other_node_refused(rng, make_net):
    net = make_net(2, rng)
    net.client.create(HopSpec(net.ids[1], net.keys[1].public_key.raw), 0.0)  # but link goes to relay 0
    net.pump()
    assert net.client_events == [CircuitClosed(reason=R.HANDSHAKE_FAILED, remote=True)]
    assert net.circuits() == [0, 0]


def test_per_state_client_parser(rng, make_net):
    net = make_net(1, rng)
    net.client.build(net.path(), 0.0)
    net.client.cells_to_send()
    evs = net.client.receive_cell(bytes(C.build_cell(7, C.CellCommand.RELAY)), 0.0)
    assert evs == [CircuitClosed(reason=R.PROTOCOL, remote=False)]
    assert C.Cell(net.client.cells_to_send()[-1]).command == C.CellCommand.DESTROY
    # sticky: later cells are dropped unread
    assert net.client.receive_cell(bytes(C.build_cell(7, C.CellCommand.CREATED)), 0.0) == []
    with pytest.raises(LocalProtocolError):
        net.client.send_relay(0, C.RelayCommand.DATA, 1, b"")


def test_per_state_relay_parser(rng, make_net):
    net = make_net(1, rng)
    r = net.relays[0]
    assert r.receive_cell("l", bytes(C.build_cell(5, C.CellCommand.RELAY)), 0.0) == []  # unknown circuit
    assert r.cells_to_send() == []
    net.client.build(net.path(), 0.0)
    first = net.client.cells_to_send()[0]
    r.receive_cell("client", first, 0.0)  # half-open: expecting more CREATE fragments
    evs = r.receive_cell("client", bytes(C.build_cell(7, C.CellCommand.RELAY)), 0.0)
    assert evs == [RelayCircuitClosed(link_id="client", circ_id=7, reason=R.PROTOCOL)]
    assert C.Cell(r.cells_to_send()[-1][1]).command == C.CellCommand.DESTROY


def test_extended_from_wrong_state_is_protocol_error(rng, make_net):
    net = built(make_net, 2, rng)
    key = next(iter(net.relays[1]._circuits))
    net.relays[1].send_backward(key[0], key[1], C.RelayCommand.EXTENDED, 0, b"\x00\x10\x00\x00x")
    net.pump()
    assert net.client_events[-1] == CircuitClosed(reason=R.PROTOCOL, remote=False)
    assert net.circuits() == [0, 0]


def test_timers_handshake_timeout_rotation_lifetime(rng, make_net):
    net = make_net(1, rng, lifetime=100.0, rotate_after=50.0)
    net.client.build(net.path(), 0.0)
    net.client.cells_to_send()  # lost on the way
    assert net.client.get_timer() == 30.0
    assert net.client.handle_timer(29.0) == []
    assert net.client.handle_timer(30.0) == [CircuitClosed(reason=R.TIMEOUT, remote=False)]
    net = make_net(1, rng, lifetime=100.0, rotate_after=50.0)
    net.client.build(net.path(), 0.0)
    net.pump()
    assert net.client.get_timer() == 50.0
    assert net.client.handle_timer(50.0) == [CircuitRotationDue(circ_id=7)]
    assert net.client.get_timer() == 100.0
    assert net.client.handle_timer(100.0) == [CircuitClosed(reason=R.FINISHED, remote=False)]
    net.pump()
    assert net.circuits() == [0]


def test_relay_half_open_timeout(rng, make_net):
    net = make_net(1, rng)
    net.client.build(net.path(), 0.0)
    r = net.relays[0]
    r.receive_cell("client", net.client.cells_to_send()[0], 0.0)
    assert r.get_timer() == 30.0
    assert r.handle_timer(31.0) == [RelayCircuitClosed(link_id="client", circ_id=7, reason=R.TIMEOUT)]
    assert r.circuit_count == 0 and r.get_timer() is None


def test_link_failed_destroys(rng, make_net):
    net = make_net(2, rng)
    net.client.build(net.path(), 0.0)
    # deliver by hand so that LinkNeeded is not answered
    for _ in range(3):
        for c in net.client.cells_to_send():
            for e in net.relays[0].receive_cell("client", c, 0.0):
                pass
        for _, c in net.relays[0].cells_to_send():
            net.client_events += net.client.receive_cell(c, 0.0)
    assert net.relays[0].circuit_count == 1
    evs = net.relays[0].link_failed(net.ids[1], 0.0)
    assert [e.reason for e in evs] == [R.CONNECT_FAILED]
    for _, c in net.relays[0].cells_to_send():
        net.client_events += net.client.receive_cell(c, 0.0)
    assert net.client_events[-1] == CircuitClosed(reason=R.CONNECT_FAILED, remote=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.integers(0, 3), st.binary(max_size=C.CELL_SIZE + 2)), max_size=12))
def test_relay_survives_random_cells(make_net, seed_rng, cells):
    """Any bytes on any link: events or silence, never an exception; state stays bounded."""
    net = make_net(2, seed_rng(b"fuzz"))
    net.client.build(net.path(), 0.0)
    net.pump()
    r = net.relays[0]
    for kind, data in cells:
        if kind == 0 and len(data) >= 1:  # make it look like a cell of the live circuit
            data = bytes(C.build_cell(7, data[0] % 6, data[1:][: C.PAYLOAD_SIZE]))
        elif kind == 1:
            data = data.ljust(C.CELL_SIZE, b"\0")[: C.CELL_SIZE]
        r.receive_cell("client" if kind < 3 else "0-1", data, 1.0)
        r.cells_to_send()
    assert r.circuit_count <= 1 + len(cells)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=C.CELL_SIZE, max_size=C.CELL_SIZE), max_size=6), st.integers(0, 5))
def test_client_survives_random_cells(make_net, seed_rng, cells, cmd):
    net = make_net(1, seed_rng(b"fuzz2"))
    net.client.build(net.path(), 0.0)
    for data in cells:
        data = bytearray(data)
        data[:5] = (7).to_bytes(4, "big") + bytes([cmd])
        evs = net.client.receive_cell(bytes(data), 0.0)
        assert all(isinstance(e, (CircuitClosed, RelayMessageReceived, HopAdded, CircuitBuilt)) for e in evs)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["extend", "send", "destroy", "timer", "create"]), max_size=8))
def test_client_random_local_calls(make_net, seed_rng, ops):
    """Random orders of local calls: each either works or raises LocalProtocolError."""
    net = make_net(2, seed_rng(b"ops"))
    hop = net.path()[1]
    t = 0.0
    for op in ops:
        t += 1.0
        try:
            if op == "extend":
                net.client.extend(hop, t)
            elif op == "create":
                net.client.create(net.path()[0], t)
            elif op == "send":
                net.client.send_relay(0, C.RelayCommand.DATA, 1, b"x")
            elif op == "destroy":
                net.client.destroy()
            else:
                net.client.handle_timer(t)
        except LocalProtocolError:
            pass
        net.pump(t)
    assert net.client.state in vars(ClientState).values()


def test_half_open_cap(rng, make_net):
    """Half-open circuits (CREATE fragments pending) are capped; completing or destroying
    one frees its slot."""
    net = make_net(1, rng)
    r = net.relays[0]
    r._max_half_open = 2
    firsts = []
    for cid in (11, 12, 13):
        c = ClientCircuit(cid, rng=rng, now=0.0)
        c.build(net.path(), 0.0)
        firsts.append((c, c.cells_to_send()))
    for c, cells in firsts[:2]:
        r.receive_cell("client", cells[0], 0.0)
    assert r.circuit_count == 2 and r.cells_to_send() == []
    r.receive_cell("client", firsts[2][1][0], 0.0)
    refused = r.cells_to_send()
    assert [(C.Cell(x).circ_id, C.Cell(x).command, C.Cell(x).payload[0]) for _, x in refused] == [
        (13, C.CellCommand.DESTROY, R.INTERNAL)
    ]
    for x in firsts[0][1][1:]:  # complete circuit 11: its slot is free again
        r.receive_cell("client", x, 0.0)
    assert any(C.Cell(x).command == C.CellCommand.CREATED for _, x in r.cells_to_send())
    r.receive_cell("client", firsts[2][1][0], 0.0)
    assert r.cells_to_send() == [] and r.circuit_count == 3
    assert r.get_timer() == 30.0
    evs = r.handle_timer(30.0)
    assert sorted(e.circ_id for e in evs) == [12, 13]
    assert r.circuit_count == 1 and r.get_timer() is None


def test_drop_cells_are_absorbed_both_ways(rng, make_net):
    net = built(make_net, 3, rng)
    before = len(net.client_events)
    net.client.send_relay(1, C.RelayCommand.DROP, 0, b"")
    key = next(iter(net.relays[2]._circuits))
    net.relays[2].send_backward(key[0], key[1], C.RelayCommand.DROP, 0, b"")
    net.pump()
    assert len(net.client_events) == before
    assert not any(isinstance(e, ExitMessageReceived) for evs in net.relay_events for e in evs)
    assert net.client.state == ClientState.OPEN and net.circuits() == [1, 1, 1]
    # the chains stayed in step: a real message still gets through afterwards
    net.client.send_relay(2, C.RelayCommand.DATA, 3, b"after")
    net.pump()
    assert [e.data for e in net.relay_events[2] if isinstance(e, ExitMessageReceived)] == [b"after"]
