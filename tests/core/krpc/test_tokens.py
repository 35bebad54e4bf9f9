"""Write tokens (BEP 5 get_peers/announce_peer): bound to the requester IP, secret
rotated every 5 minutes, tokens accepted for up to 10 minutes."""
from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.crypto import keyed_hash
from qudag_core.krpc.tokens import TokenManager, canonical_ip


def test_known_construction(rng):
    secret = rng(32)
    tm = TokenManager(lambda n: secret[:n], 0.0)
    want = keyed_hash(secret, b"qudag krpc write-token\x00" + bytes([192, 0, 2, 1]), 8)
    assert tm.token_for("192.0.2.1", 1.0) == want


def test_bound_to_ip(rng):
    tm = TokenManager(rng, 0.0)
    t = tm.token_for("192.0.2.1", 0.0)
    assert tm.check("192.0.2.1", t, 1.0)
    assert not tm.check("192.0.2.2", t, 1.0)
    assert tm.check("::ffff:192.0.2.1", t, 1.0)  # the same host over a mapped socket
    t6 = tm.token_for("2001:db8::1", 0.0)
    assert tm.check("2001:db8:0::1", t6, 0.0) and not tm.check("2001:db8::2", t6, 0.0)


def test_rotation_windows(rng):
    tm = TokenManager(rng, 1000.0)
    t0 = tm.token_for("10.0.0.1", 1000.0)
    assert tm.check("10.0.0.1", t0, 1299.9)
    assert tm.check("10.0.0.1", t0, 1300.0)  # rotated once: previous secret still accepted
    assert tm.check("10.0.0.1", t0, 1599.9)
    assert not tm.check("10.0.0.1", t0, 1600.0)  # 10 minutes
    # A token issued just before a rotation lives a little over 5 minutes.
    t1 = tm.token_for("10.0.0.1", 1899.0)
    assert t1 != t0
    assert tm.check("10.0.0.1", t1, 2199.0)
    assert not tm.check("10.0.0.1", t1, 2200.0)


def test_long_gap_drops_both_secrets(rng):
    tm = TokenManager(rng, 0.0)
    t = tm.token_for("10.0.0.1", 250.0)
    assert not tm.check("10.0.0.1", t, 650.0)  # two periods passed in one jump
    t2 = tm.token_for("10.0.0.1", 650.0)
    assert tm.check("10.0.0.1", t2, 700.0)
    # A clock going backwards rotates nothing.
    assert tm.check("10.0.0.1", t2, 10.0)


def test_malformed_input_is_just_rejected(rng):
    tm = TokenManager(rng, 0.0)
    t = tm.token_for("10.0.0.1", 0.0)
    for ip, tok in [("10.0.0.1", t[:-1]), ("10.0.0.1", t + b"x"), ("not an ip", t), (None, t),
                    ("10.0.0.1", None), ("10.0.0.1", "str"), ("10.0.0.1", 12345)]:
        assert tm.check(ip, tok, 0.0) is False
    assert canonical_ip("nope") is None
    assert "secret" not in repr(tm) and t.hex() not in repr(tm)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32 - 1), st.floats(0, 299.0), st.floats(0, 1e6))
def test_issued_tokens_check_within_window(ip_int, age, start):
    ctr = iter(range(1000))
    tm = TokenManager(lambda n: hashlib.sha256(b"tok%d" % next(ctr)).digest()[:n], start)
    ip = ".".join(str((ip_int >> s) & 255) for s in (24, 16, 8, 0))
    t = tm.token_for(ip, start)
    assert tm.check(ip, t, start + age)  # under 5 minutes: always valid
    # 10 minutes or more: never (1 ms margin: (start + 600) - start can round below 600)
    assert not tm.check(ip, t, start + 600.001 + age)
