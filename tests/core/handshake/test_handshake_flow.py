"""Handshake flows through the stream API (docs/handshake.md §2, §5): complete runs,
certificate fetch, expected peer ids, feeding whole / byte by byte / with trailing
bytes, timers, alerts, API misuse, and the typed transcript encoding."""
from __future__ import annotations

import pytest
from handshake_helpers import (
    INITIATOR_ADDR,
    NOW,
    Rng,
    certificate,
    completed,
    handshake_pair,
    identity,
    initiator,
    responder_context,
    roundtrip,
    terminated,
)

from qudag_core.crypto import Transcript
from qudag_core.errors import QudagError
from qudag_core.handshake import (
    HANDSHAKE_TIMEOUT,
    PROTOCOL_LABEL,
    AuthenticationFailed,
    HandshakeComplete,
    HandshakeTimeout,
    HandshakeUsageError,
    State,
    Terminated,
    UnexpectedMessage,
    UnexpectedPeer,
    initiator_finish,
    initiator_start,
    responder_finish,
    responder_process,
)
from qudag_core.handshake.steps import TypedTranscript
from qudag_core.handshake.wire import T_ALERT, frame
from qudag_core.identity import CertificateCache, CertificateExpired


def _flights(init, resp):
    rec: list = []
    ev_i, ev_r = roundtrip(init, resp, record=rec)
    return rec, ev_i, ev_r


def assert_session(ev_i, ev_r):
    (ci,) = completed(ev_i)
    (cr,) = completed(ev_r)
    assert ci.tx_key == cr.rx_key and ci.rx_key == cr.tx_key
    assert ci.tx_key != ci.rx_key
    assert ci.session_id == cr.session_id and len(ci.session_id) == 32
    assert len(ci.tx_key) == len(ci.rx_key) == 32
    assert ci.peer_node_id == identity("responder").node_id
    assert cr.peer_node_id == identity("initiator").node_id
    assert cr.peer_certificate == certificate("initiator")
    assert ci.peer_certificate == certificate("responder")
    return ci, cr


def test_full_handshake_with_known_certificate():
    init, resp = handshake_pair()
    rec, ev_i, ev_r = _flights(init, resp)
    assert [d for d, _ in rec] == ["i->r", "r->i", "i->r"]
    assert_session(ev_i, ev_r)
    assert init.state == resp.state == State.DONE
    assert init.get_timer() is None and resp.get_timer() is None


def test_sessions_are_fresh():
    ctx = responder_context()
    a = assert_session(*roundtrip(*handshake_pair(ctx)))
    b = assert_session(*roundtrip(*handshake_pair(ctx)))
    assert a[0].session_id != b[0].session_id and a[0].tx_key != b[0].tx_key


def test_certificate_fetch_round_trip():
    init, resp = handshake_pair(peer=None)
    assert init.state == State.EXPECT_CERT
    rec, ev_i, ev_r = _flights(init, resp)
    assert [d for d, _ in rec] == ["i->r", "r->i", "i->r", "r->i", "i->r"]
    assert_session(ev_i, ev_r)


def test_expected_peer_id_matches():
    init, resp = handshake_pair(peer=None, expected_peer_id=identity("responder").node_id)
    assert_session(*roundtrip(init, resp))


def test_expected_peer_id_mismatch_after_fetch():
    init, resp = handshake_pair(peer=None, expected_peer_id=identity("someone-else").node_id)
    ev_i, ev_r = roundtrip(init, resp)
    (t,) = terminated(ev_i)
    assert t.error_code == UnexpectedPeer.error_code and not completed(ev_i + ev_r)
    assert init.state == State.FAILED


def test_expected_peer_id_mismatch_with_given_certificate_raises():
    with pytest.raises(UnexpectedPeer):
        initiator(expected_peer_id=identity("someone-else").node_id)


def test_expired_peer_certificate_refused_locally():
    with pytest.raises(CertificateExpired):
        initiator(now=NOW + 365 * 86400)


def test_responder_impersonation_fails():
    """An initiator that expects 'responder' talks to 'mallory', who holds another
    static key: mallory cannot decrypt INIT."""
    init = initiator(peer="responder")
    mallory = responder_context("mallory").new_handshake(now=NOW, peer_address=INITIATOR_ADDR)
    ev_i, ev_r = roundtrip(init, mallory)
    assert not completed(ev_i + ev_r)
    assert terminated(ev_r)[0].error_code == AuthenticationFailed.error_code


def _messages():
    init, resp = handshake_pair()
    rec, ev_i, ev_r = _flights(init, resp)
    return [m for _, m in rec]


@pytest.mark.parametrize("mode", ["whole", "bytewise", "chunks7"])
def test_feed_modes(mode):
    init, resp = handshake_pair()

    def feed(obj, data):
        if mode == "whole":
            return obj.receive_data(data)
        step = 1 if mode == "bytewise" else 7
        evs = []
        for k in range(0, len(data), step):
            evs += obj.receive_data(data[k : k + step])
        return evs

    ev_r = feed(resp, init.data_to_send())
    ev_i = feed(init, resp.data_to_send())
    ev_r += feed(resp, init.data_to_send())
    assert_session(ev_i, ev_r)


def test_trailing_data_after_finish_goes_to_channel():
    init, resp = handshake_pair()
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    garbage = b"\xffchannel record bytes\x00" * 3
    (done,) = resp.receive_data(init.data_to_send() + garbage)
    assert isinstance(done, HandshakeComplete) and done.trailing_data == garbage
    with pytest.raises(HandshakeUsageError):
        resp.receive_data(b"more")


def test_trailing_data_after_response_goes_to_channel():
    init, resp = handshake_pair()
    resp.receive_data(init.data_to_send())
    (done,) = init.receive_data(resp.data_to_send() + b"early")
    assert isinstance(done, HandshakeComplete) and done.trailing_data == b"early"


def test_trailing_data_split_byte_by_byte_is_kept():
    init, resp = handshake_pair()
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    fin = init.data_to_send()
    for b in fin[:-1]:
        assert resp.receive_data(bytes([b])) == []
    (done,) = resp.receive_data(fin[-1:] + b"xyz")
    assert done.trailing_data == b"xyz"


def test_garbage_after_non_final_message_is_a_declared_error():
    """Bytes after INIT must be a frame the next state allows: garbage is an
    UnexpectedMessage, never a session."""
    init, resp = handshake_pair()
    ev = resp.receive_data(init.data_to_send() + b"\xfe\x00\x01z")
    (t,) = terminated(ev)
    assert t.error_code == UnexpectedMessage.error_code and resp.state == State.FAILED


def test_timeout():
    init, resp = handshake_pair()
    resp.receive_data(init.data_to_send())
    assert init.get_timer() == NOW + HANDSHAKE_TIMEOUT
    assert init.handle_timer(NOW + 1) == []
    (t,) = init.handle_timer(NOW + HANDSHAKE_TIMEOUT)
    assert t.error_code == HandshakeTimeout.error_code and init.state == State.FAILED
    assert init.get_timer() is None
    # the alert reaches the responder, which stops too
    (tr,) = resp.receive_data(init.data_to_send())
    assert tr.by_peer and tr.error_code == HandshakeTimeout.error_code
    # sticky: nothing more happens on either side
    assert init.receive_data(resp.data_to_send()) == [] and init.handle_timer(NOW + 99) == []


def test_alert_from_peer_terminates():
    init, resp = handshake_pair()
    init.data_to_send()
    (t,) = init.receive_data(frame(T_ALERT, b"\x00\x06"))
    assert isinstance(t, Terminated) and t.by_peer and t.error_code == 6
    assert init.data_to_send() == b""  # no alert answers an alert


def test_failed_state_is_sticky_and_alert_sent():
    init, resp = handshake_pair()
    msg = bytearray(init.data_to_send())
    msg[-40] ^= 1
    (t,) = resp.receive_data(bytes(msg))
    assert resp.state == State.FAILED
    assert resp.data_to_send() == frame(T_ALERT, t.error_code.to_bytes(2, "big"))
    assert resp.receive_data(b"anything") == []


def test_reprs_hold_no_secrets():
    init, resp = handshake_pair()
    ev_i, ev_r = roundtrip(init, resp)
    (c,) = completed(ev_i)
    text = repr(c) + repr(init) + repr(resp) + repr(identity("initiator")) + repr(resp.ctx)
    for secret in (c.tx_key, c.rx_key, identity("initiator").signing_key.seed, identity("initiator").kem_key.seed):
        assert secret.hex() not in text and repr(secret) not in text


def test_typed_transcript_matches_crypto_transcript():
    items = [(b"versions", b"\x01\x00\x01"), (b"responder static", b"k" * 1216), (b"empty", b"")]
    t = Transcript(PROTOCOL_LABEL)
    tt = TypedTranscript()
    for label, value in items:
        t.append(label, value)
        tt.absorb(len(label).to_bytes(2, "big") + label, value)
        assert t.digest() == tt.digest()


def test_steps_consume_once_and_agree():
    rng = Rng(b"steps")
    cache = CertificateCache()
    st_i, init_body = initiator_start(rng, identity("initiator"), certificate("initiator"), certificate("responder"))
    st_r, resp_body = responder_process(rng, identity("responder"), certificate("responder"), init_body,
                                        now=NOW, cert_cache=cache)
    keys_i, fin = initiator_finish(st_i, resp_body)
    keys_r = responder_finish(st_r, fin)
    assert keys_i.tx_key == keys_r.rx_key and keys_i.session_id == keys_r.session_id
    with pytest.raises(HandshakeUsageError):
        initiator_finish(st_i, resp_body)
    with pytest.raises(HandshakeUsageError):
        responder_finish(st_r, fin)
    assert "secret" in repr(st_i) and keys_i.tx_key.hex() not in repr(keys_i)


def test_terminated_errors_are_declared():
    init, resp = handshake_pair()
    (t,) = resp.receive_data(b"\x03\xff\xff")
    assert isinstance(t.error, QudagError)


def test_expired_initiator_certificate_rejected_by_responder():
    from qudag_core.handshake import InitiatorHandshake

    ident = identity("initiator")
    old = ident.issue_certificate([], now=NOW - 10 * 86400, lifetime=86400)
    init = InitiatorHandshake(ident, old, rng=Rng(b"old"), now=NOW, peer_certificate=certificate("responder"))
    resp = responder_context().new_handshake(now=NOW, peer_address=INITIATOR_ADDR)
    ev_i, ev_r = roundtrip(init, resp)
    assert terminated(ev_r)[0].error_code == CertificateExpired.error_code
    assert terminated(ev_i)[0].by_peer and not completed(ev_i + ev_r)


@pytest.mark.parametrize("header", [b"\x03\xff\xff", b"\x06\x00\x21", b"\x01\x10\x01"])
def test_oversized_frame_refused_from_its_header(header):
    """The body bound is enforced before any body byte is buffered."""
    from qudag_core.handshake import MessageTooLarge

    resp = responder_context().new_handshake(now=NOW, peer_address=INITIATOR_ADDR, address_validated=True)
    if header[0] == 0x06:  # FINISH is only parsed in EXPECT_FINISH
        init = initiator()
        resp.receive_data(init.data_to_send())
    (t,) = resp.receive_data(header)
    assert t.error_code == MessageTooLarge.error_code


@pytest.mark.parametrize("ftype", [0x00, 0x02, 0x04, 0x05, 0x06, 0x07, 0x7F, 0xFF])
def test_frames_not_allowed_in_expect_init(ftype):
    resp = responder_context().new_handshake(now=NOW, peer_address=INITIATOR_ADDR, address_validated=True)
    (t,) = resp.receive_data(bytes([ftype]))  # refused from the type byte alone
    assert t.error_code == UnexpectedMessage.error_code


@pytest.mark.parametrize("ftype", [0x01, 0x02, 0x03, 0x06, 0x99])
def test_frames_not_allowed_in_expect_response(ftype):
    init = initiator()
    init.data_to_send()
    (t,) = init.receive_data(bytes([ftype, 0, 0]))
    assert t.error_code == UnexpectedMessage.error_code
