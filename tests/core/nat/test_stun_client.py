"""StunClient: RFC 8489 §6.2.1 retransmission timeline, response matching, short- and
long-term credentials, and random event orders (Hypothesis)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.errors import LocalProtocolError
from qudag_core.nat import stun as S
from qudag_core.nat.events import (
    AllocateSucceeded,
    BindingSucceeded,
    TransactionFailed,
    TransactionTimedOut,
)
from qudag_core.nat.stun import Attr
from qudag_core.nat.stun_client import LongTermCredentials, ShortTermCredentials, StunClient

SERVER = ("192.0.2.1", 3478)
ME = ("10.0.0.2", 5000)


def run_until_quiet(client, now=0.0, limit=100):
    """Step the timer until the client has nothing pending; return (send times, events)."""
    sends, events = [], []
    for _ in range(limit):
        for _data, _addr in client.datagrams_to_send(now):
            sends.append(now)
        t = client.get_timer()
        if t is None:
            return sends, events, now
        now = t
        events += client.handle_timer(now)
    raise AssertionError("client did not go quiet")


def test_retransmission_timeline_defaults(rng):
    """RFC 8489 §6.2.1: with RTO 500 ms, Rc 7, Rm 16, sends at 0, 500, 1500, 3500, 7500,
    15500, 31500 ms and gives up at 39500 ms."""
    c = StunClient(rng=rng)
    h = c.request(SERVER, 0.0)
    sends, events, end = run_until_quiet(c)
    assert sends == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert end == pytest.approx(39.5)
    assert events == [TransactionTimedOut(transaction_id=h, server=SERVER, transmissions=7)]
    assert c.stats["retransmissions"] == 6 and c.pending == 0


def test_retransmission_configurable_and_late_timer_calls(rng):
    c = StunClient(rng=rng, rto=0.1, rc=3, rm=4)
    c.request(SERVER, 10.0)
    assert len(c.datagrams_to_send(10.0)) == 1
    assert c.get_timer() == pytest.approx(10.1)
    # The adapter's timer fires late: the schedule does not drift.
    assert c.handle_timer(10.15) == []
    assert c.get_timer() == pytest.approx(10.3)
    c.handle_timer(10.3)
    assert c.get_timer() == pytest.approx(10.3 + 0.4)  # Rm * RTO after the last send
    [ev] = c.handle_timer(10.7)
    assert isinstance(ev, TransactionTimedOut) and ev.transmissions == 3
    assert len(c.datagrams_to_send(10.7)) == 2  # the two retransmissions
    # A timer call before it is due does nothing.
    c.request(SERVER, 20.0)
    assert c.handle_timer(20.05) == [] and len(c.datagrams_to_send(20.05)) == 1


def _respond(data, source=ME, local=SERVER, **kw):
    resp, origin = S.binding_response(data, source, local, **kw)
    return resp, origin


def test_binding_success_and_rtt(rng):
    c = StunClient(rng=rng, software="qudag test")
    h = c.request(SERVER, 1.0)
    [(data, addr)] = c.datagrams_to_send(1.0)
    assert addr == SERVER
    req = S.parse_message(data)
    assert req.method == S.METHOD_BINDING and req.msg_class == S.CLASS_REQUEST
    assert req.transaction_id == h and req.text(Attr.SOFTWARE) == "qudag test" and req.has(Attr.FINGERPRINT)
    resp, origin = _respond(data)
    [ev] = c.receive_datagram(resp, origin, 1.25)
    assert isinstance(ev, BindingSucceeded)
    assert ev.mapped_address == ME and ev.transaction_id == h and ev.rtt == pytest.approx(0.25)
    assert c.pending == 0 and c.get_timer() is None
    # A duplicate of the response (a retransmission crossed it) is now unknown.
    assert c.receive_datagram(resp, origin, 1.3) == []
    assert c.stats["dropped_unknown_transaction"] == 1


def test_rtt_is_none_after_retransmission(rng):
    c = StunClient(rng=rng)
    c.request(SERVER, 0.0)
    [(data, _)] = c.datagrams_to_send(0.0)
    c.handle_timer(0.5)
    resp, origin = _respond(data)
    [ev] = c.receive_datagram(resp, origin, 0.6)
    assert ev.rtt is None  # Karn: which transmission does it answer?


def test_wrong_source_unknown_txid_and_garbage_are_dropped_and_counted(rng):
    c = StunClient(rng=rng)
    c.request(SERVER, 0.0)
    [(data, _)] = c.datagrams_to_send(0.0)
    resp, origin = _respond(data)
    assert c.receive_datagram(resp, ("192.0.2.99", 3478), 0.1) == []
    assert c.receive_datagram(resp, ("192.0.2.1", 3479), 0.1) == []
    assert c.stats["dropped_wrong_source"] == 2
    other = S.encode_message(1, S.CLASS_SUCCESS, b"\x55" * 12,
                             [(Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address("1.2.3.4", 1, b"\x55" * 12))])
    assert c.receive_datagram(other, SERVER, 0.1) == []
    assert c.stats["dropped_unknown_transaction"] == 1
    for bad in (resp[:-1], resp + b"\0\0\0\0", b"", b"\x00" * 20, data):
        assert c.receive_datagram(bad, SERVER, 0.1) == []
    assert c.stats["dropped_malformed"] == 4 and c.stats["dropped_not_response"] == 1
    # Fed one byte at a time, no prefix is accepted either.
    for i in range(1, len(resp)):
        assert c.receive_datagram(resp[:i], SERVER, 0.1) == []
    # The transaction survived all that; the real response still completes it.
    [ev] = c.receive_datagram(resp, ("::ffff:192.0.2.1", 3478, 0, 0), 0.2)
    assert isinstance(ev, BindingSucceeded)


def test_error_response_and_420(rng):
    c = StunClient(rng=rng)
    h = c.request(SERVER, 0.0, attributes=[(0x7F00, b"x")])
    [(data, _)] = c.datagrams_to_send(0.0)
    resp, origin = _respond(data)
    [ev] = c.receive_datagram(resp, origin, 0.1)
    assert isinstance(ev, TransactionFailed) and ev.transaction_id == h
    assert ev.code == 420 and ev.unknown_attributes == (0x7F00,)


def test_success_with_unknown_required_attribute_fails_transaction(rng):
    c = StunClient(rng=rng)
    h = c.request(SERVER, 0.0)
    resp = S.encode_message(1, S.CLASS_SUCCESS, h, [
        (Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address(*ME, h)), (0x7ABC, b"??")])
    [ev] = c.receive_datagram(resp, SERVER, 0.1)
    assert isinstance(ev, TransactionFailed) and ev.code is None and ev.unknown_attributes == (0x7ABC,)
    # ... while an unknown comprehension-optional one is fine.
    h = c.request(SERVER, 0.0)
    resp = S.encode_message(1, S.CLASS_SUCCESS, h, [
        (Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address(*ME, h)), (0xFABC, b"??")])
    [ev] = c.receive_datagram(resp, SERVER, 0.1)
    assert isinstance(ev, BindingSucceeded)


def test_malformed_mapped_address_is_dropped(rng):
    c = StunClient(rng=rng)
    h = c.request(SERVER, 0.0)
    resp = S.encode_message(1, S.CLASS_SUCCESS, h, [(Attr.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x01\x00")])
    assert c.receive_datagram(resp, SERVER, 0.1) == []
    resp = S.encode_message(1, S.CLASS_SUCCESS, h, [(Attr.SOFTWARE, b"no address")])
    assert c.receive_datagram(resp, SERVER, 0.1) == []
    assert c.stats["dropped_malformed"] == 2 and c.pending == 1


@pytest.mark.parametrize("sha256", [False, True])
def test_short_term_credentials(rng, sha256):
    creds = ShortTermCredentials(username="alice:bob", password="s3cret", sha256=sha256)
    assert "s3cret" not in repr(creds)
    key = S.short_term_key("s3cret")
    c = StunClient(rng=rng)
    h = c.request(SERVER, 0.0, credentials=creds)
    [(data, _)] = c.datagrams_to_send(0.0)
    req = S.parse_message(data)
    assert req.text(Attr.USERNAME) == "alice:bob"
    assert req.verify(key) and (req.has_integrity_sha256 == sha256) and (req.has_integrity != sha256)
    good = [(Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address(*ME, h))]
    kw = {"integrity_sha256_key": key} if sha256 else {"integrity_key": key}
    # No integrity, wrong key: dropped as if never received.
    assert c.receive_datagram(S.encode_message(1, 2, h, good), SERVER, 0.1) == []
    bad_kw = {k: b"wrong" for k in kw}
    assert c.receive_datagram(S.encode_message(1, 2, h, good, **bad_kw), SERVER, 0.1) == []
    assert c.stats["dropped_integrity"] == 2
    # An error response carrying a bad MAC is dropped too; an unauthenticated 400 is not.
    err = S.encode_message(1, 3, h, [(Attr.ERROR_CODE, S.encode_error_code(500, "x"))], **bad_kw)
    assert c.receive_datagram(err, SERVER, 0.1) == []
    [ev] = c.receive_datagram(S.encode_message(1, 2, h, good, fingerprint=True, **kw), SERVER, 0.2)
    assert isinstance(ev, BindingSucceeded) and ev.mapped_address == ME


class LongTermServer:
    """A TURN-like responder for the §9.2 flow: 401 with REALM/NONCE, then verify."""

    def __init__(self, users, realm="example.org", nonces=("n1",)):
        self.users, self.realm, self.nonces = users, realm, list(nonces)
        self.nonce = self.nonces.pop(0)

    def answer(self, data, source):
        req = S.parse_message(data)
        tid = req.transaction_id

        def err(code, reason):
            return S.encode_message(req.method, 3, tid, [
                (Attr.ERROR_CODE, S.encode_error_code(code, reason)),
                (Attr.REALM, self.realm.encode()), (Attr.NONCE, self.nonce.encode())])

        if not req.has_integrity:
            return err(401, "Unauthorized")
        user = req.text(Attr.USERNAME)
        if user not in self.users:
            return err(401, "Unauthorized")
        key = S.long_term_key(user, self.realm, self.users[user])
        if not req.verify_integrity(key):
            return err(401, "Unauthorized")
        if req.text(Attr.NONCE) != self.nonce:
            return err(438, "Stale Nonce")
        attrs = [(Attr.XOR_RELAYED_ADDRESS, S.encode_xor_address("192.0.2.1", 49152, tid)),
                 (Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address(*source, tid)),
                 (Attr.LIFETIME, S.encode_u32(600))]
        return S.encode_message(req.method, 2, tid, attrs, integrity_key=key, fingerprint=True)


def _allocate(c, creds, server, now=0.0):
    return c.request(SERVER, now, method=S.METHOD_ALLOCATE, credentials=creds,
                     attributes=[(Attr.REQUESTED_TRANSPORT, S.encode_requested_transport())])


def _exchange(c, server, now=0.0, rounds=6):
    events = []
    for _ in range(rounds):
        out = c.datagrams_to_send(now)
        if not out:
            break
        for data, addr in out:
            events += c.receive_datagram(server.answer(data, ME), addr, now)
    return events


def test_long_term_credentials_allocate(rng):
    server = LongTermServer({"u": "p"})
    c = StunClient(rng=rng)
    h = _allocate(c, LongTermCredentials(username="u", password="p"), server)
    [ev] = _exchange(c, server)
    assert isinstance(ev, AllocateSucceeded) and ev.transaction_id == h
    assert ev.relayed_address == ("192.0.2.1", 49152) and ev.mapped_address == ME and ev.lifetime == 600


def test_long_term_stale_nonce_then_success(rng):
    server = LongTermServer({"u": "p"})
    c = StunClient(rng=rng)
    _allocate(c, LongTermCredentials(username="u", password="p"), server)
    # First round: 401 -> the client resends with credentials for nonce n1.
    [(data, addr)] = c.datagrams_to_send(0.0)
    assert c.receive_datagram(server.answer(data, ME), addr, 0.0) == []
    server.nonce = "n2"  # the nonce goes stale before the authenticated request lands
    [ev] = _exchange(c, server)
    assert isinstance(ev, AllocateSucceeded)


def test_long_term_wrong_password_fails_once(rng):
    server = LongTermServer({"u": "p"})
    c = StunClient(rng=rng)
    h = _allocate(c, LongTermCredentials(username="u", password="nope"), server)
    [ev] = _exchange(c, server)
    assert isinstance(ev, TransactionFailed) and ev.code == 401 and ev.transaction_id == h
    assert c.pending == 0


def test_long_term_success_must_verify(rng):
    c = StunClient(rng=rng)
    _allocate(c, LongTermCredentials(username="u", password="p"), None)
    server = LongTermServer({"u": "p"})
    [(data, addr)] = c.datagrams_to_send(0.0)
    c.receive_datagram(server.answer(data, ME), addr, 0.0)
    [(data, addr)] = c.datagrams_to_send(0.0)
    req = S.parse_message(data)
    forged = S.encode_message(S.METHOD_ALLOCATE, 2, req.transaction_id, [
        (Attr.XOR_RELAYED_ADDRESS, S.encode_xor_address("6.6.6.6", 6, req.transaction_id))])
    assert c.receive_datagram(forged, SERVER, 0.1) == []
    assert c.stats["dropped_integrity"] == 1


def test_api_misuse(rng):
    with pytest.raises(LocalProtocolError):
        StunClient(rng=rng, rto=0)
    c = StunClient(rng=rng, max_transactions=2)
    c.request(SERVER, 0)
    h = c.request(SERVER, 0)
    with pytest.raises(LocalProtocolError):
        c.request(SERVER, 0)
    assert c.cancel(h) and not c.cancel(h)
    c2 = StunClient(rng=lambda n: b"\0" * 12)
    c2.request(SERVER, 0)
    with pytest.raises(LocalProtocolError):
        c2.request(SERVER, 0)  # a stuck rng cannot produce a fresh transaction id
    with pytest.raises(LocalProtocolError):
        StunClient(rng=lambda n: b"\0" * 11).request(SERVER, 0)


# ---- random event orders ---------------------------------------------------------------

_action = st.one_of(
    st.tuples(st.just("request"), st.sampled_from([SERVER, ("192.0.2.2", 3478)])),
    st.tuples(st.just("answer"), st.integers(0, 10)),
    st.tuples(st.just("answer_wrong_source"), st.integers(0, 10)),
    st.tuples(st.just("junk"), st.binary(max_size=40)),
    st.tuples(st.just("advance"), st.floats(0, 20)),
    st.tuples(st.just("timer"), st.none()),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_action, max_size=40))
def test_random_event_orders(actions):
    """Whatever the order of requests, answers, junk and timers: no exception, each
    transaction ends exactly once, and every transaction sends at most Rc datagrams."""
    from testutil import DeterministicRng

    c = StunClient(rng=DeterministicRng(b"order"), rc=4)
    now = 0.0
    started: list[bytes] = []
    ended: list[bytes] = []
    sent: dict[bytes, int] = {}
    pending_reqs: list[tuple[bytes, tuple]] = []

    def drain():
        for data, addr in c.datagrams_to_send(now):
            tid = S.parse_message(data).transaction_id
            sent[tid] = sent.get(tid, 0) + 1
            pending_reqs.append((data, addr))

    def record(evs):
        for ev in evs:
            ended.append(ev.transaction_id)

    for kind, arg in actions:
        if kind == "request" and c.pending < 60:
            started.append(c.request(arg, now))
        elif kind in ("answer", "answer_wrong_source") and pending_reqs:
            data, addr = pending_reqs[arg % len(pending_reqs)]
            resp, origin = S.binding_response(data, ME, addr)
            record(c.receive_datagram(resp, origin if kind == "answer" else ("198.51.100.9", 1), now))
        elif kind == "junk":
            record(c.receive_datagram(arg, SERVER, now))
        elif kind == "advance":
            now += arg
        elif kind == "timer":
            t = c.get_timer()
            if t is not None:
                now = max(now, t)
                record(c.handle_timer(now))
        drain()
    # Let everything finish.
    for _ in range(200):
        t = c.get_timer()
        if t is None:
            break
        now = max(now, t)
        record(c.handle_timer(now))
        drain()
    assert c.pending == 0
    assert sorted(ended) == sorted(started)
    assert all(n <= 4 for n in sent.values())


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=120), flips=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
       use_valid=st.booleans(), creds=st.sampled_from([None, "short", "long"]))
def test_client_survives_any_datagram(data, flips, use_valid, creds):
    """Arbitrary bytes, or a valid response with bytes overwritten, fed to a client with a
    live transaction: events or nothing, never an exception; the counters add up."""
    from testutil import DeterministicRng

    c = StunClient(rng=DeterministicRng(b"fuzz"))
    credentials = {None: None, "short": ShortTermCredentials(username="u", password="p"),
                   "long": LongTermCredentials(username="u", password="p")}[creds]
    h = c.request(SERVER, 0.0, credentials=credentials)
    if use_valid:
        attrs = [(Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address(*ME, h)),
                 (Attr.ERROR_CODE, S.encode_error_code(401, "x")), (Attr.NONCE, b"n"), (Attr.REALM, b"r")]
        raw = bytearray(S.encode_message(1, data[0] % 4 if data else 2, h, attrs,
                                         integrity_key=S.short_term_key("p") if creds == "short" else None))
        for pos, val in flips:
            if pos < len(raw):
                raw[pos] = val
        data = bytes(raw)
    events = c.receive_datagram(data, SERVER, 0.1)
    assert len(events) <= 1
    if events:
        assert events[0].transaction_id == h and c.pending == 0
    dropped = sum(v for k, v in c.stats.items() if k.startswith("dropped_"))
    if events:
        assert dropped == 0
    else:
        # Either the datagram was dropped (and counted) or it was a 401 that made the
        # long-term client queue an authenticated retry beside the first request.
        retried = len(c.datagrams_to_send(0.1)) == 2
        assert (dropped == 1) != retried and c.pending == 1
