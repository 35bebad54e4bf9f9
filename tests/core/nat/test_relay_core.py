"""Relay codec and the relay server/client state machines (qudag_core/nat/relay.py)."""
from __future__ import annotations

import os

import pytest
from hypothesis import given, settings, strategies as st

from qudag_core.errors import LocalProtocolError
from qudag_core.nat import relay as R
from qudag_core.nat.traversal_events import (
    CircuitClosed, CircuitConnected, CircuitData, CircuitEnded, CircuitOpened, ConnectRefused,
    IncomingCircuit, RelayRefusal, ReservationGranted, ReservationRefused, Reserved,
)

A, B, C = b"\xaa" * 20, b"\xbb" * 20, b"\xcc" * 20

ids = st.binary(min_size=20, max_size=20)
addrs = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535)),
    st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535)),
)
u32 = st.integers(0, 2**32 - 1)
messages = st.one_of(
    st.just(R.Reserve()),
    st.builds(R.ReservedMsg, ttl=u32, byte_limit=st.integers(0, 2**64 - 1), address=addrs),
    st.builds(R.Connect, target=ids),
    st.builds(R.Connected, circuit=u32, target=ids),
    st.builds(R.Incoming, circuit=u32, source=ids),
    st.builds(R.Accept, circuit=u32),
    st.builds(R.Data, circuit=u32, payload=st.binary(max_size=200)),
    st.builds(R.Close, circuit=u32, code=st.integers(0, 255)),
    st.builds(R.Refused, code=st.integers(0, 255), target=ids),
    st.builds(R.Unrecognized, type=st.integers(10, 255), body=st.binary(max_size=50)),
)


@given(messages)
def test_roundtrip(msg):
    data = R.encode(msg)
    assert R.decode(data) == msg
    assert R.encode(R.decode(data)) == data


@given(st.binary(max_size=80))
def test_decode_any_bytes_gives_message_or_declared_error(data):
    try:
        msg = R.decode(data)
    except R.RelayMessageError:
        return
    assert R.encode(msg) == data


@given(messages.filter(lambda m: not isinstance(m, (R.Data, R.Unrecognized))), st.binary(min_size=1, max_size=5))
def test_trailing_garbage_is_refused(msg, garbage):
    with pytest.raises(R.RelayMessageError):
        R.decode(R.encode(msg) + garbage)


def test_known_encodings():
    # Layout from the module docstring, byte for byte.
    assert R.encode(R.Reserve()) == b"\x01"
    assert R.encode(R.ReservedMsg(ttl=60, byte_limit=1000, address=("203.0.113.7", 4242))) == (
        b"\x02\x00\x00\x00\x3c" + (1000).to_bytes(8, "big") + b"\x04\xcb\x00\x71\x07\x10\x92")
    assert R.encode(R.Data(circuit=5, payload=b"xy")) == b"\x07\x00\x00\x00\x05xy"
    with pytest.raises(LocalProtocolError):
        R.encode(R.Data(circuit=1, payload=bytes(R.MAX_DATA + 1)))
    with pytest.raises(R.RelayMessageError):
        R.decode(b"\x07\x00\x00\x00\x01" + bytes(R.MAX_DATA + 1))


class Net:
    """A relay server and clients wired together in memory, delivering in order."""

    def __init__(self, limits=None):
        self.server = R.RelayServer(limits)
        self.clients = {}
        self.events = {}
        self.server_events = []
        self.now = 1000.0

    def add(self, nid, addr=("198.51.100.9", 5000)):
        self.clients[nid] = R.RelayClient()
        self.events[nid] = []
        self.server.peer_connected(nid, addr)
        return self.clients[nid]

    def pump(self):
        for _ in range(20):
            moved = False
            for nid, c in self.clients.items():
                for data in c.messages_to_send():
                    moved = True
                    self.server_events += self.server.receive_message(nid, data, self.now)
            for nid, data in self.server.messages_to_send():
                moved = True
                if nid in self.clients:
                    self.events[nid] += self.clients[nid].receive_message(data)
            if not moved:
                return
        raise AssertionError("did not settle")


def open_circuit(net):
    a, b = net.add(A), net.add(B)
    b.reserve()
    net.pump()
    assert isinstance(net.events[B][0], Reserved)
    assert net.events[B][0].observed_address == ("198.51.100.9", 5000)
    a.connect(B)
    net.pump()
    inc = [e for e in net.events[B] if isinstance(e, IncomingCircuit)]
    assert inc and inc[0].source == A
    b.accept(inc[0].circuit)
    net.pump()
    conn = [e for e in net.events[A] if isinstance(e, CircuitConnected)]
    assert conn and conn[0].circuit == inc[0].circuit
    return a, b, inc[0].circuit


def test_circuit_forwards_opaque_bytes_both_ways():
    net = Net()
    a, b, cid = open_circuit(net)
    a.send_data(cid, b"ciphertext-1")
    b.send_data(cid, b"ciphertext-2")
    net.pump()
    assert [e.data for e in net.events[B] if isinstance(e, CircuitData)] == [b"ciphertext-1"]
    assert [e.data for e in net.events[A] if isinstance(e, CircuitData)] == [b"ciphertext-2"]
    assert any(isinstance(e, CircuitOpened) for e in net.server_events)
    a.close_circuit(cid)
    net.pump()
    assert any(isinstance(e, CircuitClosed) and e.circuit == cid for e in net.events[B])
    ended = [e for e in net.server_events if isinstance(e, CircuitEnded)]
    assert ended[0].relayed == len(b"ciphertext-1") + len(b"ciphertext-2")


def test_connect_needs_reservation_and_names_a_node_id():
    net = Net()
    a, b = net.add(A), net.add(B)
    a.connect(B)
    a.connect(C)  # never connected to the relay at all
    a.connect(A)  # itself
    net.pump()
    refused = [e for e in net.events[A] if isinstance(e, ConnectRefused)]
    assert [e.code for e in refused] == [RelayRefusal.NO_RESERVATION] * 3
    assert not any(isinstance(e, IncomingCircuit) for e in net.events[B])


def test_unauthenticated_sender_gets_nothing():
    server = R.RelayServer()
    assert server.receive_message(C, R.encode(R.Reserve()), 0.0) == []
    assert server.messages_to_send() == []


def test_quota_and_expiry():
    net = Net(R.RelayLimits(reservation_bytes=100, reservation_ttl=60))
    a, b, cid = open_circuit(net)
    a.send_data(cid, bytes(60))
    net.pump()
    a.send_data(cid, bytes(60))  # 120 > 100
    net.pump()
    assert any(isinstance(e, CircuitClosed) and e.code == RelayRefusal.QUOTA_EXCEEDED for e in net.events[A])
    # Renewal keeps the spent quota (no refill by re-reserving): exhausted stays exhausted.
    b.reserve()
    net.pump()
    assert [e for e in net.events[B] if isinstance(e, Reserved)][-1].byte_limit == 0
    a.connect(B)
    net.pump()
    inc = [e for e in net.events[B] if isinstance(e, IncomingCircuit)][-1]
    b.accept(inc.circuit)
    net.pump()
    a.send_data(inc.circuit, b"x")
    net.pump()
    assert not [e for e in net.events[B] if isinstance(e, CircuitData) and e.circuit == inc.circuit]
    # A fresh reservation (after expiry) gets a fresh quota.
    net.now += 61
    net.server.handle_timer(net.now)
    b.reserve()
    net.pump()
    assert [e for e in net.events[B] if isinstance(e, Reserved)][-1].byte_limit == 100
    # Expiry via the timer ends circuits to the peer.
    a.connect(B)
    net.pump()
    inc = [e for e in net.events[B] if isinstance(e, IncomingCircuit)][-1]
    b.accept(inc.circuit)
    net.pump()
    t = net.server.get_timer()
    assert t is not None
    net.now = t + 1
    ev = net.server.handle_timer(net.now)
    assert any(isinstance(e, CircuitEnded) and e.code == RelayRefusal.EXPIRED for e in ev)
    assert not net.server.has_reservation(B, net.now)


def test_reservation_limit_and_pending_timeout():
    net = Net(R.RelayLimits(max_reservations=1, pending_timeout=5))
    a, b = net.add(A), net.add(B)
    b.reserve()
    net.pump()
    a.reserve()
    net.pump()
    assert isinstance(net.events[A][0], ReservationRefused)
    assert any(isinstance(e, ReservationGranted) for e in net.server_events)
    a.connect(B)
    net.pump()  # B never accepts
    net.now += 6
    net.server.handle_timer(net.now)
    net.pump()
    assert any(isinstance(e, ConnectRefused) and e.code == RelayRefusal.PEER_GONE for e in net.events[A])


def test_data_on_foreign_circuit_is_refused_not_forwarded():
    net = Net()
    a, b, cid = open_circuit(net)
    c = net.add(C)
    c._circuits.add(cid)  # C forges DATA on A<->B's circuit id
    c.send_data(cid, b"inject")
    net.pump()
    assert not any(isinstance(e, CircuitData) for e in net.events[A] + net.events[B])
    assert any(isinstance(e, CircuitClosed) and e.code == RelayRefusal.PERMISSION_DENIED for e in net.events[C])


def test_disconnect_ends_circuits():
    net = Net()
    a, b, cid = open_circuit(net)
    ev = net.server.peer_disconnected(B, net.now)
    net.pump()
    assert any(isinstance(e, CircuitEnded) and e.code == RelayRefusal.PEER_GONE for e in ev)
    assert any(isinstance(e, CircuitClosed) for e in net.events[A])


ops = st.lists(st.tuples(st.sampled_from(["reserve", "connect", "accept", "data", "close", "tick", "drop"]),
                         st.sampled_from([A, B, C]), st.sampled_from([A, B, C]), st.integers(0, 300)),
               max_size=40)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_random_operation_orders_keep_invariants(seq):
    net = Net(R.RelayLimits(reservation_bytes=500, reservation_ttl=30, pending_timeout=3))
    for nid in (A, B, C):
        net.add(nid)
    for op, x, y, n in seq:
        c = net.clients.get(x)
        if op == "reserve" and c:
            c.reserve()
        elif op == "connect" and c:
            c.connect(y)
        elif op == "accept" and c:
            for e in net.events[x]:
                if isinstance(e, IncomingCircuit) and e.circuit in c._incoming:
                    c.accept(e.circuit)
                    break
        elif op == "data" and c and c._circuits:
            c.send_data(min(c._circuits), bytes(n))
        elif op == "close" and c and c._circuits:
            c.close_circuit(min(c._circuits))
        elif op == "tick":
            net.now += n / 10
            net.server_events += net.server.handle_timer(net.now)
        elif op == "drop" and c:
            del net.clients[x]
            net.server_events += net.server.peer_disconnected(x, net.now)
        net.pump()
        # Invariants: no reservation quota goes negative; a circuit always joins two peers,
        # at least one of which holds a reservation (the target); nobody's DATA leaks to a
        # third peer.
        for r in net.server._reservations.values():
            assert r.remaining >= 0
        for circ in net.server._circuits.values():
            assert circ.source != circ.target
            assert circ.target in net.server._reservations
        members = {e.circuit: {e.source, e.target} for e in net.server_events if isinstance(e, CircuitOpened)}
        for nid, evs in net.events.items():
            for e in evs:
                if isinstance(e, CircuitData):
                    assert nid in members[e.circuit]
    for e in net.server_events:
        if isinstance(e, CircuitEnded):
            assert e.relayed <= 500
