"""The punched UDP path core (qudag_core/nat/udppath.py): connectivity checks under the
datagram channel, peer-reflexive (triggered) checks, and that nothing unauthenticated is
ever answered."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st

from qudag_core.nat.udppath import UdpDatagram, UdpPath, UdpPathFailed, UdpPathValidated

KA, KB, SID = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
A_ADDR, B_ADDR = ("192.0.2.10", 4000), ("198.51.100.20", 5000)


def pair(a_cands=(B_ADDR,), b_cands=(A_ADDR,), timeout=3.0):
    a = UdpPath(tx_key=KA, rx_key=KB, session_id=SID, candidates=a_cands, nonce=b"A" * 8, now=0.0, timeout=timeout)
    b = UdpPath(tx_key=KB, rx_key=KA, session_id=SID, candidates=b_cands, nonce=b"B" * 8, now=0.0, timeout=timeout)
    return a, b


def run(a, b, deliver, steps=40, dt=0.05):
    """Drive both cores; ``deliver(src_name, dst_addr) -> source address seen or None (dropped)``."""
    events = {"a": [], "b": []}
    now = 0.0
    for _ in range(steps):
        for name, core in (("a", a), ("b", b)):
            t = core.get_timer()
            if t is not None and t <= now:
                events[name] += core.handle_timer(now)
        for name, core, other, oname in (("a", a, b, "b"), ("b", b, a, "a")):
            for data, addr in core.datagrams_to_send(now):
                seen = deliver(name, addr)
                if seen is not None:
                    events[oname] += other.receive_datagram(data, seen, now)
        now += dt
    return events


def test_both_directions_validate_then_carry_data():
    a, b = pair()
    ev = run(a, b, lambda src, dst: A_ADDR if src == "a" else B_ADDR)
    assert any(isinstance(e, UdpPathValidated) and e.address == B_ADDR for e in ev["a"])
    assert any(isinstance(e, UdpPathValidated) and e.address == A_ADDR for e in ev["b"])
    a.send(b"payload")
    (pkt, addr), = a.datagrams_to_send(1.0)
    assert addr == B_ADDR
    assert b.receive_datagram(pkt, A_ADDR, 1.0) == [UdpDatagram(data=b"payload", address=A_ADDR)]
    assert b.receive_datagram(pkt, A_ADDR, 1.0) == []  # replay dropped


def test_peer_reflexive_candidate_rescues_a_symmetric_peer():
    # B sits behind a symmetric NAT: the candidate A holds for it is stale, and B's packets
    # arrive from a fresh port.  A learns that port from B's authenticated probe.
    b_real = ("198.51.100.20", 61000)
    a, b = pair(a_cands=(B_ADDR,))

    def deliver(src, dst):
        if src == "a":
            return A_ADDR if dst == b_real else None  # the stale candidate is filtered
        return b_real

    ev = run(a, b, deliver)
    assert any(isinstance(e, UdpPathValidated) and e.address == b_real for e in ev["a"])
    assert any(isinstance(e, UdpPathValidated) for e in ev["b"])


def test_unreachable_times_out():
    a, b = pair(timeout=1.0)
    ev = run(a, b, lambda src, dst: None)
    assert any(isinstance(e, UdpPathFailed) for e in ev["a"])
    assert a.get_timer() is None and a.failed


def test_wrong_keys_are_never_answered():
    a, _ = pair()
    stranger = UdpPath(tx_key=b"\x09" * 32, rx_key=KA, session_id=SID, candidates=[A_ADDR], nonce=b"S" * 8,
                       now=0.0)
    stranger.handle_timer(0.0)
    for data, _ in stranger.datagrams_to_send(0.0):
        assert a.receive_datagram(data, ("203.0.113.66", 1), 0.0) == []
    assert a.datagrams_to_send(0.0) == []


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=80), max_size=20))
def test_garbage_is_dropped_silently(packets):
    a, _ = pair()
    for p in packets:
        assert a.receive_datagram(p, B_ADDR, 0.5) == []
    assert all(addr == B_ADDR for _, addr in a.datagrams_to_send(0.5))  # only our own probes, if any
