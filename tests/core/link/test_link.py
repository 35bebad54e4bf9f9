"""The link core: handshake then channel behind one stream API (qudag_core/link/core.py)."""
from __future__ import annotations

import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.identity import Identity
from qudag_core.link import Established, Link, LinkConfig, MessageReceived, ResponderContext, Terminated
from qudag_core.link.core import LinkNotEstablished

NOW = 1_800_000_000.0
_A = Identity.generate(os.urandom)
_B = Identity.generate(os.urandom)
_CERT_B = _B.issue_certificate([("127.0.0.1", 4000)], now=NOW)
_CERT_A = _A.issue_certificate((), now=NOW)


def link_pair(config: LinkConfig | None = None, **initiator_kw):
    ctx = ResponderContext(_B, _CERT_B, rng=os.urandom)
    kw = dict(peer_certificate=_CERT_B, certificate=_CERT_A)
    kw.update(initiator_kw)
    i = Link.initiator(identity=_A, now=NOW, rng=os.urandom, config=config, **kw)
    r = Link.responder(context=ctx, now=NOW, peer_address=("127.0.0.1", 5555), config=config)
    return i, r


def pump(i: Link, r: Link, now: float = NOW, rounds: int = 8):
    """Move bytes both ways until quiet; return the events each side saw."""
    ev_i, ev_r = [], []
    for _ in range(rounds):
        a = i.data_to_send()
        if a:
            ev_r += r.receive_data(a, now)
        b = r.data_to_send()
        if b:
            ev_i += i.receive_data(b, now)
        if not a and not b:
            break
    return ev_i, ev_r


def test_establish_and_exchange():
    i, r = link_pair()
    ev_i, ev_r = pump(i, r)
    est_i = [e for e in ev_i if isinstance(e, Established)]
    est_r = [e for e in ev_r if isinstance(e, Established)]
    assert len(est_i) == len(est_r) == 1
    assert est_i[0].peer_node_id == _B.node_id and est_r[0].peer_node_id == _A.node_id
    assert est_i[0].session_id == est_r[0].session_id
    i.send_message(b"ping", NOW)
    assert r.receive_data(i.data_to_send(), NOW) == [MessageReceived(data=b"ping")]
    r.send_message(b"pong", NOW)
    assert i.receive_data(r.data_to_send(), NOW) == [MessageReceived(data=b"pong")]


def test_unknown_certificate_then_pinned_identity():
    i, r = link_pair(peer_certificate=None, expected_peer_id=_B.node_id)
    ev_i, _ = pump(i, r)
    assert [type(e) for e in ev_i] == [Established]


def test_wrong_expected_identity_fails_before_established():
    i, r = link_pair(peer_certificate=None, expected_peer_id=_A.node_id)
    ev_i, ev_r = pump(i, r)
    assert not any(isinstance(e, Established) for e in ev_i + ev_r)
    assert any(isinstance(e, Terminated) and e.during_handshake for e in ev_i)
    assert i.is_closed


def test_finish_and_first_message_in_one_segment():
    """The initiator's FINISH and its first frames arrive together: nothing is lost at
    the hand-over from handshake to channel."""
    i, r = link_pair()
    r.receive_data(i.data_to_send(), NOW)
    ev = i.receive_data(r.data_to_send(), NOW)
    assert isinstance(ev[0], Established)
    i.send_message(b"first", NOW)
    i.send_message(b"second", NOW)
    ev_r = r.receive_data(i.data_to_send(), NOW)  # FINISH + 2 frames in one chunk
    assert [type(e) for e in ev_r] == [Established, MessageReceived, MessageReceived]
    assert [e.data for e in ev_r[1:]] == [b"first", b"second"]


def test_send_before_established_is_local_error():
    i, _ = link_pair()
    with pytest.raises(LinkNotEstablished):
        i.send_message(b"early", NOW)


def test_close_reaches_peer():
    i, r = link_pair()
    pump(i, r)
    i.close(7, "bye", NOW)
    assert i.is_closed
    ev = r.receive_data(i.data_to_send(), NOW)
    assert ev == [Terminated(error_code=7, reason="bye", by_peer=True, during_handshake=False)]
    assert r.is_closed and r.receive_data(b"more", NOW) == []


def test_handshake_timeout():
    i, r = link_pair(config=LinkConfig(handshake_timeout=2.0))
    i.data_to_send()  # INIT lost on the way
    assert i.get_timer() == pytest.approx(NOW + 2.0)
    ev = i.handle_timer(NOW + 2.5)
    assert len(ev) == 1 and isinstance(ev[0], Terminated) and ev[0].during_handshake


def test_tampered_channel_frame_terminates():
    i, r = link_pair()
    pump(i, r)
    i.send_message(b"x" * 100, NOW)
    frame = bytearray(i.data_to_send())
    frame[-1] ^= 1
    ev = r.receive_data(bytes(frame), NOW)
    assert len(ev) == 1 and isinstance(ev[0], Terminated) and not ev[0].by_peer
    assert r.is_closed


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=12))
def test_any_segmentation_gives_same_events(cuts):
    """Whatever way TCP splits the initiator's bytes, the responder sees the same events."""
    i, r = link_pair()
    r_bytes = [i.data_to_send()]
    i.receive_data(r.receive_data(r_bytes[0], NOW) or r.data_to_send(), NOW)
    i.send_message(b"hello", NOW)
    stream = i.data_to_send()
    pieces, pos = [], 0
    for c in cuts:
        if pos >= len(stream):
            break
        pieces.append(stream[pos : pos + c])
        pos += c
    pieces.append(stream[pos:])
    ev = []
    for p in pieces:
        if p:
            ev += r.receive_data(p, NOW)
    assert [type(e) for e in ev] == [Established, MessageReceived]
    assert ev[1].data == b"hello"


def test_byte_by_byte_whole_exchange():
    i, r = link_pair()
    ev_r = []
    for b in i.data_to_send():
        ev_r += r.receive_data(bytes([b]), NOW)
    ev_i = []
    for b in r.data_to_send():
        ev_i += i.receive_data(bytes([b]), NOW)
    for b in i.data_to_send():
        ev_r += r.receive_data(bytes([b]), NOW)
    assert [type(e) for e in ev_i] == [Established]
    assert [type(e) for e in ev_r] == [Established]
