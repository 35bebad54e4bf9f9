"""Replay, anti-amplification, cookie mode and version negotiation
(docs/handshake.md §4.5-§4.8)."""
from __future__ import annotations

import gc
import tracemalloc

import pytest
from handshake_helpers import (
    INITIATOR_ADDR,
    NOW,
    completed,
    handshake_pair,
    initiator,
    responder_context,
    roundtrip,
    terminated,
)

from qudag_core.handshake import (
    AMPLIFICATION_FACTOR,
    AuthenticationFailed,
    BadCookie,
    ReplayDetected,
    State,
    UnexpectedMessage,
    UnsupportedVersion,
)
from qudag_core.handshake.wire import CERT_REQUEST_MIN, T_CERT_REQUEST, frame


def _record_genuine(ctx):
    init, resp = handshake_pair(ctx)
    rec: list = []
    ev_i, ev_r = roundtrip(init, resp, record=rec)
    assert completed(ev_i) and completed(ev_r)
    return [m for _, m in rec]


# ---------------------------------------------------------------- replay
def test_replayed_init_1000_times_creates_nothing():
    ctx = responder_context()
    msg1, _msg2, msg3 = _record_genuine(ctx)
    size_before = ctx.state_size()
    kem_before = ctx.kem_operations
    gc.collect()
    tracemalloc.start()
    mem_before = tracemalloc.get_traced_memory()[0]
    sessions = 0
    for k in range(1000):
        r = ctx.new_handshake(now=NOW + k * 0.001, peer_address=("198.51.100.1", 1000 + k))
        ev = r.receive_data(msg1 + msg3)
        sessions += len(completed(ev))
        (t,) = terminated(ev)
        assert t.error_code == ReplayDetected.error_code
        del r, ev, t
    gc.collect()
    mem_after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert sessions == 0
    assert ctx.kem_operations == kem_before  # rejected before any KEM work
    assert ctx.state_size() == size_before
    assert mem_after - mem_before < 64 * 1024, (mem_before, mem_after)


def test_replay_after_filter_eviction_still_creates_no_session():
    """Once the bounded filter forgot it, a replay costs KEM work but cannot complete:
    the old FINISH does not match the responder's fresh encapsulations."""
    ctx = responder_context(replay_capacity=1)
    msg1, _msg2, msg3 = _record_genuine(ctx)
    _record_genuine(ctx)
    _record_genuine(ctx)  # two generations of capacity 1: the first INIT is gone
    r = ctx.new_handshake(now=NOW, peer_address=INITIATOR_ADDR)
    ev = r.receive_data(msg1 + msg3)
    assert not completed(ev)
    (t,) = terminated(ev)
    assert t.error_code == AuthenticationFailed.error_code
    assert ctx.state_size() <= 2 + len(ctx.cert_cache)


def test_replay_filter_is_bounded():
    ctx = responder_context(replay_capacity=4)
    for _ in range(12):
        _record_genuine(ctx)
    assert len(ctx._replay_current) + len(ctx._replay_previous) <= 8


# ---------------------------------------------------------------- amplification
def _assert_budget(resp):
    assert resp.bytes_sent <= AMPLIFICATION_FACTOR * resp.bytes_received


def test_amplification_ratio_in_every_flow():
    for kw in ({}, {"peer": None}):
        ctx = responder_context()
        for under_load in (False, True):
            ctx.under_load = under_load
            init, resp = handshake_pair(ctx, **kw)
            for _ in range(6):
                data = init.data_to_send()
                if not data:
                    break
                resp.receive_data(data)
                if not resp.address_validated:
                    _assert_budget(resp)
                init.receive_data(resp.data_to_send())
            assert init.state == resp.state == State.DONE
            assert resp.bytes_sent / resp.bytes_received <= AMPLIFICATION_FACTOR


def test_unpadded_certificate_request_refused():
    resp = responder_context().new_handshake(now=NOW, peer_address=INITIATOR_ADDR)
    ev = resp.receive_data(frame(T_CERT_REQUEST, bytes(CERT_REQUEST_MIN - 1)))
    (t,) = terminated(ev)
    assert t.error_code == UnexpectedMessage.error_code
    _assert_budget(resp)


def test_amplification_limit_suppresses_even_alerts():
    resp = responder_context().new_handshake(now=NOW, peer_address=INITIATOR_ADDR)
    (t,) = resp.receive_data(b"\x99")  # one byte in: a 5-byte alert would exceed 3x
    assert resp.state == State.FAILED and resp.data_to_send() == b""
    resp2 = responder_context().new_handshake(now=NOW, peer_address=INITIATOR_ADDR)
    resp2.receive_data(b"\x99\x00")  # two bytes in: 5 <= 6, the alert goes out
    assert len(resp2.data_to_send()) == 5


def test_validated_address_lifts_the_limit():
    resp = responder_context().new_handshake(now=NOW, peer_address=INITIATOR_ADDR, address_validated=True)
    resp.receive_data(b"\x99")
    assert len(resp.data_to_send()) == 5


# ---------------------------------------------------------------- cookies
def test_cookie_mode_no_kem_before_valid_cookie():
    ctx = responder_context()
    ctx.under_load = True
    init, resp = handshake_pair(ctx)
    resp.receive_data(init.data_to_send())
    assert ctx.kem_operations == 0 and resp.state == State.EXPECT_INIT
    cookie_frame = resp.data_to_send()
    assert cookie_frame[0] == 0x04 and len(cookie_frame) == 3 + 16
    init.receive_data(cookie_frame)
    retry = init.data_to_send()
    # stateless: a different connection object from the same address accepts it
    fresh = ctx.new_handshake(now=NOW + 1, peer_address=INITIATOR_ADDR)
    fresh.receive_data(retry)
    assert ctx.kem_operations == 3 and fresh.state == State.EXPECT_FINISH
    ev_i = init.receive_data(fresh.data_to_send())
    ev_r = fresh.receive_data(init.data_to_send())
    assert completed(ev_i) and completed(ev_r)


def _cookie_retry(ctx, now=NOW):
    init, resp = handshake_pair(ctx, now=now)
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    return init.data_to_send()


@pytest.mark.parametrize("case", ["wrong", "other_address", "expired", "missing_twice"])
def test_bad_cookies_rejected(case):
    ctx = responder_context()
    ctx.under_load = True
    retry = _cookie_retry(ctx)
    addr, now = INITIATOR_ADDR, NOW
    if case == "wrong":
        b = bytearray(retry)
        b[-1] ^= 0x80
        retry = bytes(b)
    elif case == "other_address":
        addr = ("192.0.2.99", 40000)
    elif case == "expired":
        now = NOW + 2 * ctx.cookie_period + 1
    r = ctx.new_handshake(now=now, peer_address=addr)
    if case == "missing_twice":
        init = initiator()
        first = init.data_to_send()
        r.receive_data(first)
        r.data_to_send()
        ev = r.receive_data(first)
    else:
        ev = r.receive_data(retry)
    (t,) = terminated(ev)
    assert t.error_code == BadCookie.error_code
    assert ctx.kem_operations == 0


def test_cookie_survives_one_rotation():
    ctx = responder_context()
    ctx.under_load = True
    retry = _cookie_retry(ctx)
    r = ctx.new_handshake(now=NOW + ctx.cookie_period + 1, peer_address=INITIATOR_ADDR)
    r.receive_data(retry)
    assert r.state == State.EXPECT_FINISH


# ---------------------------------------------------------------- versions
@pytest.mark.parametrize(
    "offer, speak, expect",
    [((1,), (1,), 1), ((1, 2), (1,), 1), ((1, 2), (1, 2), 2), ((2, 1), (1, 2), 2), ((7,), (1, 7, 9), 7)],
)
def test_version_negotiation(offer, speak, expect):
    ctx = responder_context(versions=speak)
    ev_i, ev_r = roundtrip(*handshake_pair(ctx, versions=offer))
    assert completed(ev_i)[0].version == completed(ev_r)[0].version == expect


def test_no_common_version():
    ctx = responder_context(versions=(1,))
    ev_i, ev_r = roundtrip(*handshake_pair(ctx, versions=(2, 3)))
    assert terminated(ev_r)[0].error_code == UnsupportedVersion.error_code
    assert terminated(ev_i)[0].by_peer and not completed(ev_i + ev_r)


def test_downgrade_of_offer_detected():
    """Both sides speak 1 and 2; an attacker strips 2 from INIT's offer (and fixes the
    frame): the responder would pick 1, but the offer is in the transcript that keys
    the certificate AEAD, so INIT no longer decrypts."""
    ctx = responder_context(versions=(1, 2))
    init, resp = handshake_pair(ctx, versions=(1, 2))
    msg1 = init.data_to_send()
    body = msg1[3:]
    assert body[:5] == b"\x02\x00\x01\x00\x02"
    body = b"\x01\x00\x01" + body[5:]
    ev = resp.receive_data(bytes([msg1[0]]) + len(body).to_bytes(2, "big") + body)
    assert terminated(ev)[0].error_code == AuthenticationFailed.error_code and not completed(ev)


def test_downgrade_of_choice_detected():
    """The attacker rewrites the responder's choice 2 -> 1 (a version the initiator did
    offer): the responder's confirmation covers the choice, so the initiator refuses."""
    ctx = responder_context(versions=(1, 2))
    init, resp = handshake_pair(ctx, versions=(1, 2))
    resp.receive_data(init.data_to_send())
    msg2 = bytearray(resp.data_to_send())
    assert msg2[3:5] == b"\x00\x02"
    msg2[3:5] = b"\x00\x01"
    ev = init.receive_data(bytes(msg2))
    assert terminated(ev)[0].error_code == AuthenticationFailed.error_code and not completed(ev)


def test_choice_not_offered_rejected():
    ctx = responder_context(versions=(1, 2))
    init, resp = handshake_pair(ctx, versions=(1, 2))
    resp.receive_data(init.data_to_send())
    msg2 = bytearray(resp.data_to_send())
    msg2[3:5] = b"\x00\x05"
    ev = init.receive_data(bytes(msg2))
    assert terminated(ev)[0].error_code == UnsupportedVersion.error_code
