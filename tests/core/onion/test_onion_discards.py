"""Cells the relay core discards (docs/metrics.md, ``qudag_cells_dropped_total``): every
reason of ``DISCARD_REASONS`` rises by exactly the number of cells discarded for it, fed
one by one and in link-message batches, and every cell fed is accounted for: relayed
(``cells_relayed``), consumed by the relay (handshakes, DESTROY, PADDING, recognised relay
messages) or discarded.

The relay core keeps no counter of the cells it consumes (that would cost the exit's data
path an increment per run), so the accounting property tracks which cells a relay must
consume with a small model of the one circuit under test (alive or not) and checks the
relayed and discarded counts against it, and the consumed stream data against the events.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.onion import cells as C
from qudag_core.onion import handshake as hs
from qudag_core.onion.circuit import HopSpec
from qudag_core.onion.events import ExitDataReceived, ExitMessageReceived, RelayCircuitClosed
from qudag_core.onion.relay import DISCARD_REASONS, OnionRelay

CELL = C.CELL_SIZE
DATA = C.RelayCommand.DATA
CMD = C.CellCommand
LINK = "client"  # the link id ``Net`` gives the client's side of relay 0


def built(make_net, seed_rng, n, seed=b"discards"):
    net = make_net(n, seed_rng(seed))
    net.client.build(net.path(), 0.0)
    net.pump()
    assert net.client.state == "OPEN" and net.circuits() == [1] * n
    net.relay_events = [[] for _ in range(n)]
    return net


def to_hop(net, hop, command=DATA, sid=3, data=b"x") -> bytes:
    """One onion-wrapped relay cell from the client for hop ``hop`` (0-based)."""
    net.client._send_relay(hop, command, sid, data)
    (cell,) = net.client.cells_to_send()
    return bytes(cell)


def raw(circ_id, command, payload=b"\x01") -> bytes:
    return bytes(C.build_cell(circ_id, command, payload))


def counts(relay: OnionRelay) -> dict:
    return dict(relay.cells_discarded, relayed=relay.cells_relayed)


def grew(before: dict, after: dict) -> dict:
    """What changed (only the keys that did)."""
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def exit_cells(events) -> int:
    """Stream cells delivered in ``events`` (an ``ExitDataReceived`` stands for one cell per size)."""
    return sum(len(e.sizes) if isinstance(e, ExitDataReceived) else 1
               for e in events if isinstance(e, (ExitDataReceived, ExitMessageReceived)))


def test_reasons_are_the_documented_ones():
    r = OnionRelay(b"\x01" * 20, None, rng=lambda n: b"\x00" * n)
    assert tuple(r.cells_discarded) == DISCARD_REASONS
    assert set(DISCARD_REASONS) == {"unknown_circuit", "after_destroy", "malformed", "rejected", "circuit_limit"}
    assert all(v == 0 for v in r.cells_discarded.values())


def test_unknown_circuit_cells_counted_one_by_one_and_batched(make_net, seed_rng):
    net = built(make_net, seed_rng, 1)
    relay = net.relays[0]
    cid = net.client.circ_id
    stray = [
        raw(cid + 1, CMD.RELAY, b"\x55" * 100),  # an id this link has no circuit for
        raw(cid + 2, CMD.DESTROY),
        raw(cid + 3, CMD.PADDING),
        raw(cid + 4, CMD.CREATED),
        raw(0, CMD.CREATE, b"\x00\x10\x00\x00" + b"\x00" * 20),  # circuit id 0 is never a circuit
    ]
    other_link = to_hop(net, 0)  # a valid cell of the circuit, on a link it does not use
    c0 = counts(relay)
    for cell in stray:
        assert relay.receive_cell(LINK, cell, 0.0) == []
    assert relay.receive_cell("elsewhere", other_link, 0.0) == []
    assert grew(c0, counts(relay)) == {"unknown_circuit": 6}
    c1 = counts(relay)
    assert relay.receive_cells(LINK, b"".join(stray[:1] * 7), 0.0) == []  # one run, fast path
    assert relay.receive_cells(LINK, b"".join(stray), 0.0) == []  # mixed commands
    assert grew(c1, counts(relay)) == {"unknown_circuit": 12}
    assert relay.batches_to_send() == [] and relay.circuit_count == 1


def test_malformed_cells_counted(make_net, seed_rng):
    net = built(make_net, seed_rng, 1)
    relay = net.relays[0]
    cid = net.client.circ_id
    c0 = counts(relay)
    for size in (0, 1, CELL - 1, CELL + 1):
        assert relay.receive_cell(LINK, raw(cid, CMD.RELAY)[:size] + b"\x00" * max(0, size - CELL), 0.0) == []
    assert grew(c0, counts(relay)) == {"malformed": 4}
    c1 = counts(relay)
    # two whole cells for an unknown circuit and a trailing partial one
    assert relay.receive_cells(LINK, raw(cid + 9, CMD.RELAY) * 2 + b"tail", 0.0) == []
    assert relay.receive_cells(LINK, b"x" * 10, 0.0) == []  # no whole cell at all
    assert grew(c1, counts(relay)) == {"malformed": 2, "unknown_circuit": 2}
    assert relay.circuit_count == 1  # the circuit itself is untouched


def _tagged_run(net):
    """Six DATA cells for the exit; the third modified in transit."""
    cells = [bytearray(to_hop(net, 0, data=bytes([k]) * 50)) for k in range(6)]
    cells[2][C.HEADER_SIZE + 40] ^= 0x10
    return [bytes(c) for c in cells]


def test_rest_of_a_run_after_a_destroying_cell_batched_vs_one_by_one(make_net, seed_rng):
    results = {}
    for batched in (True, False):
        net = built(make_net, seed_rng, 1)
        relay = net.relays[0]
        cells = _tagged_run(net)
        c0 = counts(relay)
        if batched:
            events = relay.receive_cells(LINK, b"".join(cells), 0.0)
        else:
            events = [e for c in cells for e in relay.receive_cell(LINK, c, 0.0)]
        assert exit_cells(events) == 2  # the two cells before the tagged one reached the exit
        assert [e.reason for e in events if isinstance(e, RelayCircuitClosed)] == [C.DestroyReason.INTEGRITY]
        assert relay.circuit_count == 0
        results[batched] = grew(c0, counts(relay))
    # batched: the rest of the run is dropped with the run; one by one, each later cell
    # finds no circuit.  The same cells, the same total.
    assert results[True] == {"rejected": 1, "after_destroy": 3}
    assert results[False] == {"rejected": 1, "unknown_circuit": 3}


def test_after_destroy_when_a_recognised_cell_destroys_the_circuit(make_net, seed_rng):
    """An EXTEND toward the relay itself is refused (PROTOCOL) by the run's loop without an
    exception; the loop stops at the next cell of the run, and the rest is dropped."""
    net = built(make_net, seed_rng, 1)
    relay = net.relays[0]
    net.client.extend(HopSpec(net.ids[0], net.keys[0].public_key.raw), 0.0)
    extend = [bytes(c) for c in net.client.cells_to_send()]
    assert len(extend) == -(-hs.CREATE_SIZE // (C.RELAY_DATA_MAX - 4))  # its fragments
    data = [bytes(c) for c in (bytearray(to_hop(net, 0)) for _ in range(2))]
    c0 = counts(relay)
    events = relay.receive_cells(LINK, b"".join(extend + data), 0.0)
    assert [e.reason for e in events if isinstance(e, RelayCircuitClosed)] == [C.DestroyReason.PROTOCOL]
    assert exit_cells(events) == 0
    assert grew(c0, counts(relay)) == {"rejected": 1, "after_destroy": 2}


def test_rejected_command_destroys_and_counts_once(make_net, seed_rng):
    net = built(make_net, seed_rng, 2)
    relay = net.relays[0]
    cid = net.client.circ_id
    c0 = counts(relay)
    events = relay.receive_cell(LINK, raw(cid, CMD.CREATED, b"\x00" * 50), 0.0)  # not allowed from the client side
    assert [type(e) for e in events] == [RelayCircuitClosed] and relay.circuit_count == 0
    out = relay.cells_to_send()
    assert len(out) == 2 and all(c[C.CIRC_ID_SIZE] == CMD.DESTROY for _, c in out)  # both ways
    assert grew(c0, counts(relay)) == {"rejected": 1}
    # the next one finds no circuit
    relay.receive_cell(LINK, raw(cid, CMD.CREATED, b"\x00" * 50), 0.0)
    assert grew(c0, counts(relay)) == {"rejected": 1, "unknown_circuit": 1}


def test_create_fragments_refused_at_the_circuit_limit(make_net, seed_rng):
    net = make_net(1, seed_rng(b"limit"))
    relay = net.relays[0]
    relay._max_circuits = 0
    creates = []

    def count_creates(src, dst, cell):
        if src == "client" and cell[C.CIRC_ID_SIZE] == CMD.CREATE:
            creates.append(cell)
        return cell

    net.tamper = count_creates
    net.client.build(net.path(), 0.0)
    net.pump()
    assert net.client.state != "OPEN" and relay.circuit_count == 0
    assert len(creates) > 1  # a CREATE is several fragments; each one is refused
    assert counts(relay) == dict(dict.fromkeys(DISCARD_REASONS, 0), circuit_limit=len(creates), relayed=0)
    assert relay.circuits_refused == 1  # the circuit, counted once (first fragment)


def test_relayed_cells_are_not_discards(make_net, seed_rng):
    net = built(make_net, seed_rng, 3)
    c0 = [counts(r) for r in net.relays]
    net.client.send_relay_batch(2, [(DATA, 1, b"y" * 900)] * 20)
    net.pump()
    assert exit_cells(net.relay_events[2]) == 20
    assert [grew(a, counts(r)) for a, r in zip(c0, net.relays)] == [{"relayed": 20}, {"relayed": 20}, {}]


# -- accounting under random sequences ------------------------------------------------------

KINDS = ("fwd", "here", "drop", "pad", "destroy", "bad", "unknown", "partial")
op = st.tuples(st.sampled_from(KINDS), st.integers(0, C.RELAY_DATA_MAX), st.booleans())


def _make(net, kind, arg, cid) -> bytes:
    if kind == "fwd":  # for the exit, through relay 0: relayed
        return to_hop(net, 1, data=b"f" * arg)
    if kind == "here":  # stream data for relay 0 itself
        return to_hop(net, 0, sid=5, data=b"h" * arg)
    if kind == "drop":
        return to_hop(net, 0, C.RelayCommand.DROP, 0, b"")
    if kind == "pad":
        return raw(cid, CMD.PADDING, b"")
    if kind == "destroy":
        return raw(cid, CMD.DESTROY, b"\x01")
    if kind == "bad":  # CREATED from the client's side
        return raw(cid, CMD.CREATED, b"\x00" * 8)
    if kind == "unknown":
        return raw(cid + 1 + arg, CMD.RELAY, b"\x07" * 64)
    return raw(cid, CMD.RELAY)[: arg % CELL]  # partial


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op, min_size=1, max_size=24), batched=st.booleans())
def test_every_cell_is_relayed_consumed_or_discarded(make_net, seed_rng, ops, batched):
    net = built(make_net, seed_rng, 2, seed=b"accounting")
    relay = net.relays[0]
    cid = net.client.circ_id
    alive = True
    want = dict.fromkeys(("relayed", "consumed", "discarded", "rejected", "malformed", "here"), 0)
    batches: list[list[bytes]] = [[]]
    for kind, arg, end in ops:
        cell = _make(net, kind, arg, cid)
        batches[-1].append(cell)
        # the model: what relay 0 must do with this cell
        if kind == "partial":
            want["malformed"] += 1
        elif kind == "unknown" or not alive:
            pass
        elif kind == "fwd":
            want["relayed"] += 1
        elif kind in ("here", "drop", "pad"):
            want["consumed"] += 1
            want["here"] += kind == "here"
        elif kind == "destroy":
            want["consumed"] += 1
            alive = False
        elif kind == "bad":
            want["rejected"] += 1
            alive = False
        if kind == "partial" or end:  # a partial cell can only end a link message
            batches.append([])
    fed = len(ops)
    want["discarded"] = fed - want["relayed"] - want["consumed"]

    seen = counts(relay)
    events: list = []
    out_next = 0
    for batch in batches:
        if not batch:
            continue
        if batched:
            events += relay.receive_cells(LINK, b"".join(batch), 0.0)
        else:
            for cell in batch:
                events += relay.receive_cell(LINK, cell, 0.0)
        now = counts(relay)
        assert all(now[k] >= seen[k] for k in now), (seen, now)  # counters never decrease
        seen = now
        out_next += sum(bytes(d[C.CIRC_ID_SIZE::CELL]).count(CMD.RELAY)
                        for link, d in relay.batches_to_send() if link != LINK)
    got = seen
    discarded = sum(got[r] for r in DISCARD_REASONS)
    assert got["relayed"] == want["relayed"] == out_next  # and every relayed cell left on the next link
    assert discarded == want["discarded"]
    assert got["relayed"] + want["consumed"] + discarded == fed
    assert got["rejected"] == want["rejected"]
    assert got["malformed"] == want["malformed"]
    assert got["circuit_limit"] == 0
    if not batched:
        assert got["after_destroy"] == 0  # only a run handled in one call drops its rest
    assert exit_cells(events) == want["here"]  # the consumed stream data reached the exit side
    assert relay.circuit_count == int(alive)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    msgs=st.lists(
        st.lists(st.tuples(st.sampled_from([7, 8, 0]), st.integers(0, 255), st.binary(max_size=40)), max_size=6),
        min_size=1, max_size=8,
    ),
    tail=st.binary(max_size=30),
)
def test_arbitrary_cells_never_decrease_a_counter(make_net, seed_rng, msgs, tail):
    """Arbitrary commands and payloads on the circuit's id, a neighbour and id 0, in link
    messages with or without a partial tail: the counters only grow, and no more cells
    are relayed or discarded than were fed."""
    net = built(make_net, seed_rng, 2, seed=b"arbitrary")
    relay = net.relays[0]
    seen = counts(relay)
    fed = 0
    for msg in msgs:
        buf = b"".join(bytes(C.build_cell(cid, cmd, payload)) for cid, cmd, payload in msg)
        fed += len(msg) + bool(tail)
        relay.receive_cells(LINK, buf + tail, 0.0)
        now = counts(relay)
        assert all(now[k] >= seen[k] for k in now), (seen, now)
        seen = now
    assert seen["relayed"] + sum(seen[r] for r in DISCARD_REASONS) <= fed
