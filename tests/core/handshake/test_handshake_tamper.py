"""Key confirmation under tampering (docs/handshake.md §4.3): flip bits of every
handshake message and check that no session completes on the receiving side and only
declared errors come out.

Coverage in the default run: every bit of RESPONSE and FINISH; for INIT (8982 bytes)
every byte is flipped (one bit per byte, the bit index rotating with the position) plus
every bit of the frame header, version list, cookie field and of the first and last 16
bytes of each field.  ``QUDAG_LONG=1`` flips every bit of INIT as well.

The side that sends the last message (FINISH) has already completed when FINISH is
tampered with -- no protocol can let the sender of its final message learn that it
arrived intact -- so for FINISH the check is that the responder never completes.
"""
from __future__ import annotations

import os

import pytest
from handshake_helpers import clone, completed, handshake_pair, responder_context, terminated

from qudag_core.crypto.mlkem import CT_SIZE as MLKEM_CT_SIZE
from qudag_core.crypto.xwing import PK_SIZE as XWING_PK_SIZE
from qudag_core.errors import QudagError
from qudag_core.handshake import HandshakeComplete, State, Terminated
from qudag_core.handshake.wire import ENC_CERT_SIZE

LONG = os.environ.get("QUDAG_LONG") == "1"


def _flip(msg: bytes, bit: int) -> bytes:
    b = bytearray(msg)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def _check(events, obj):
    assert not [e for e in events if isinstance(e, HandshakeComplete)]
    for e in events:
        assert isinstance(e, Terminated) and isinstance(e.error, QudagError), e
    # either it failed, or (a flipped length field) it still waits for bytes
    assert obj.state in (State.FAILED, State.EXPECT_INIT, State.EXPECT_RESPONSE, State.EXPECT_FINISH)
    return obj.state == State.FAILED


def _init_bits(n_bytes: int) -> list[int]:
    if LONG:
        return list(range(n_bytes * 8))
    bits = {8 * i + (i % 8) for i in range(n_bytes)}
    versions_end = 3 + 1 + 2  # header, count, one version
    regions = [(0, versions_end)]
    p = versions_end
    for size in (XWING_PK_SIZE, MLKEM_CT_SIZE, ENC_CERT_SIZE):
        regions += [(p, p + 16), (p + size - 16, p + size)]
        p += size
    regions.append((p, n_bytes))  # cookie field
    for a, b in regions:
        bits.update(range(8 * a, 8 * b))
    return sorted(bits)


def test_flip_init():
    ctx = responder_context()  # never sees the genuine INIT, so the replay filter is no factor
    init, _ = handshake_pair(ctx)
    msg1 = init.data_to_send()
    base = ctx.new_handshake(now=init._now, peer_address=("192.0.2.10", 40000))
    failed = 0
    bits = _init_bits(len(msg1))
    for bit in bits:
        r = clone(base)
        failed += _check(r.receive_data(_flip(msg1, bit)), r)
    assert ctx.kem_operations <= 3 * len(bits)
    # only flips of the length field may leave the responder waiting for more bytes
    assert failed >= len(bits) - 16


def test_flip_response():
    init, resp = handshake_pair()
    resp.receive_data(init.data_to_send())
    msg2 = resp.data_to_send()
    failed = 0
    for bit in range(len(msg2) * 8):
        i = clone(init)
        failed += _check(i.receive_data(_flip(msg2, bit)), i)
    assert failed >= len(msg2) * 8 - 16
    # the untampered flight still completes on a fresh copy (the clones are faithful)
    assert completed(clone(init).receive_data(msg2))


def test_flip_finish():
    init, resp = handshake_pair()
    resp.receive_data(init.data_to_send())
    init.receive_data(resp.data_to_send())
    msg3 = init.data_to_send()
    failed = 0
    for bit in range(len(msg3) * 8):
        r = clone(resp)
        failed += _check(r.receive_data(_flip(msg3, bit)), r)
    assert failed >= len(msg3) * 8 - 16
    assert completed(clone(resp).receive_data(msg3))


@pytest.mark.parametrize("which", [0, 1])
def test_truncated_and_extended_bodies(which):
    """A body one byte short or long (with a matching length field) is refused."""
    init, resp = handshake_pair()
    msg1 = init.data_to_send()
    if which == 0:
        body = msg1[3:-1]
    else:
        body = msg1[3:] + b"\x00"
    bad = msg1[:1] + len(body).to_bytes(2, "big") + body
    ev = resp.receive_data(bad)
    (t,) = terminated(ev)
    assert isinstance(t.error, QudagError) and resp.state == State.FAILED
