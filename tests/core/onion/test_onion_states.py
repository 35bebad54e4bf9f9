"""Walk every (state, link command) pair of the client and relay tables (STYLE §2, §6):
a command not allowed in a state closes the circuit with PROTOCOL and queues DESTROY; an
allowed one is handled; nothing raises."""
from __future__ import annotations

import pytest

from qudag_core.onion import cells as C
from qudag_core.onion.circuit import ALLOWED_CELLS, ClientState
from qudag_core.onion.events import CircuitClosed, RelayCircuitClosed
from qudag_core.onion.relay import ALLOWED, RelayState

COMMANDS = list(C.CellCommand) + [C.Unrecognized(99)]
R = C.DestroyReason


def code(cmd):
    return cmd.code if isinstance(cmd, C.Unrecognized) else int(cmd)


def client_in(state, make_net, rng):
    net = make_net(2, rng)
    net.client.build(net.path(), 0.0)
    if state == ClientState.EXPECT_CREATED:
        net.client.cells_to_send()
        return net
    # deliver CREATE, CREATED; stop before EXTENDED when asked
    for c in net.client.cells_to_send():
        net.relays[0].receive_cell("client", c, 0.0)
    for _, c in net.relays[0].cells_to_send():
        net.client.receive_cell(c, 0.0)
    net.client.cells_to_send()
    if state == ClientState.OPEN:
        net.client._path = []
        net.client.state = ClientState.OPEN  # pretend the path ended at one hop
    return net


@pytest.mark.parametrize("state", [ClientState.EXPECT_CREATED, ClientState.EXPECT_EXTENDED, ClientState.OPEN])
@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_client_state_command(state, cmd, make_net, rng):
    net = client_in(state, make_net, rng)
    assert net.client.state == state
    cell = bytes(C.build_cell(7, code(cmd), b"\x03" + bytes(20)))
    evs = net.client.receive_cell(cell, 1.0)
    allowed = ALLOWED_CELLS[state]
    ok = (C.Unrecognized in allowed) if isinstance(cmd, C.Unrecognized) else cmd in allowed
    if not ok:
        assert evs == [CircuitClosed(reason=R.PROTOCOL, remote=False)]
        assert C.Cell(net.client.cells_to_send()[-1]).command == C.CellCommand.DESTROY
    elif cmd == C.CellCommand.DESTROY:
        assert evs == [CircuitClosed(reason=3, remote=True)]
    elif cmd == C.CellCommand.PADDING:
        assert evs == [] and net.client.state == state
    else:  # CREATED / RELAY with junk contents: a declared failure, never an exception
        assert all(isinstance(e, CircuitClosed) for e in evs)


def relay_in(state, make_net, rng):
    """A relay (relays[1] for next-side states is relays[0]) put into ``state``."""
    net = make_net(2, rng)
    r = net.relays[0]
    net.client.build(net.path(), 0.0)
    creates = net.client.cells_to_send()
    if state == RelayState.EXPECT_CREATE:
        r.receive_cell("client", creates[0], 0.0)
        return net, r
    for c in creates:
        r.receive_cell("client", c, 0.0)
    for _, c in r.cells_to_send():
        net.client.receive_cell(c, 0.0)
    if state == RelayState.OPEN:
        return net, r
    for c in net.client.cells_to_send():  # EXTEND fragments
        r.receive_cell("client", c, 0.0)
    if state == RelayState.AWAIT_LINK:
        return net, r
    r.link_ready(net.ids[1], "0-1", 0.0)
    if state == RelayState.EXPECT_CREATED:
        r.cells_to_send()
        return net, r
    raise AssertionError(state)


STATES = [RelayState.EXPECT_CREATE, RelayState.OPEN, RelayState.AWAIT_LINK, RelayState.EXPECT_CREATED]


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_relay_prev_side(state, cmd, make_net, rng):
    net, r = relay_in(state, make_net, rng)
    circ = next(iter(r._circuits.values()))
    assert circ.state == state
    evs = r.receive_cell("client", bytes(C.build_cell(7, code(cmd), b"\x03")), 1.0)
    allowed = ALLOWED[(state, "prev")]
    ok = (C.Unrecognized in allowed) if isinstance(cmd, C.Unrecognized) else cmd in allowed
    if not ok:
        assert evs == [RelayCircuitClosed(link_id="client", circ_id=7, reason=R.PROTOCOL)]
    elif cmd == C.CellCommand.PADDING:
        assert evs == [] and circ.state == state
    else:
        assert all(isinstance(e, RelayCircuitClosed) for e in evs)
    if evs:
        assert r.circuit_count == 0
        dests = {l for l, c in r.cells_to_send() if C.Cell(c).command == C.CellCommand.DESTROY}
        # DESTROY goes on every side it did not come from
        expect = set() if cmd == C.CellCommand.DESTROY else {"client"}
        if circ.next is not None:
            expect.add(circ.next[0])
        assert dests == expect


@pytest.mark.parametrize("cmd", COMMANDS, ids=str)
def test_relay_next_side_expect_created(cmd, make_net, rng):
    net, r = relay_in(RelayState.EXPECT_CREATED, make_net, rng)
    circ = next(iter(r._circuits.values()))
    link, cid = circ.next
    evs = r.receive_cell(link, bytes(C.build_cell(cid, code(cmd), b"\x03")), 1.0)
    allowed = ALLOWED[(RelayState.EXPECT_CREATED, "next")]
    ok = (C.Unrecognized in allowed) if isinstance(cmd, C.Unrecognized) else cmd in allowed
    if not ok:
        assert evs == [RelayCircuitClosed(link_id="client", circ_id=7, reason=R.PROTOCOL)]
    else:
        assert all(isinstance(e, RelayCircuitClosed) for e in evs)
    out = r.cells_to_send()
    if evs:
        # DESTROY toward the client always; toward next only if it did not come from there
        dests = {l for l, c in out if C.Cell(c).command == C.CellCommand.DESTROY}
        assert "client" in dests
        assert (link in dests) == (cmd != C.CellCommand.DESTROY)
