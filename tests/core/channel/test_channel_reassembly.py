"""Stream reassembly of the secure channel: frames that straddle ``receive_data`` calls.

When part of a frame is buffered, ``receive_data`` copies in only the bytes that complete
it and parses the rest of the new read in place (stream.py ``_reassemble``).  These tests
pin what must not change with that: any chunking of a stream gives exactly the events,
state, counters and replies of feeding it whole - valid streams and damaged ones alike -
a bad frame in the in-place half of a straddling read fails the channel with the same
declared error, the buffer never exceeds ``max_buffered_bytes``, and the caller's buffer
is never held after the call.  One test measures the copying itself with tracemalloc.
"""
from __future__ import annotations

import array
import os
import tracemalloc

import pytest
from channel_helpers import make_pair, messages, terminations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.channel import ChannelConfig, ChannelState, ErrorCode, MessageReceived, Terminated

LONG = os.environ.get("QUDAG_LONG") == "1"
EXAMPLES = 1500 if LONG else 250
CFG = ChannelConfig(max_frame_size=300, rekey_after_messages=5)


# -- building streams and chunkings --------------------------------------------------


def sealed_stream(ops, close: bool, cfg: ChannelConfig = CFG) -> bytes:
    """The wire bytes of ``ops`` (("msg", bytes) | ("ping", bytes) | ("rekey",)) from a
    fresh sender, optionally ended by CLOSE.  Rekeys also happen by themselves every
    ``rekey_after_messages`` frames, so KEY_UPDATE frames sit between the data."""
    a, _ = make_pair(cfg)
    for op in ops:
        if op[0] == "msg":
            a.send_message(op[1])
        elif op[0] == "ping":
            a.ping(op[1])
        else:
            a.update_key()
    if close:
        a.close(7, "bye")
    return a.data_to_send()


def frame_starts(wire: bytes) -> list[int]:
    """Offsets of every frame header of an undamaged stream."""
    out, pos = [], 0
    while pos + 4 <= len(wire):
        out.append(pos)
        pos += 4 + int.from_bytes(wire[pos : pos + 4], "big")
    return out


def cut(wire: bytes, points) -> list[bytes]:
    points = sorted({p for p in points if 0 < p < len(wire)})
    out, prev = [], 0
    for p in points + [len(wire)]:
        out.append(wire[prev:p])
        prev = p
    return [c for c in out if c]


def as_input(chunk: bytes, kind: int):
    """The same bytes as each kind of buffer ``receive_data`` accepts."""
    kind %= 5
    if kind == 0:
        return chunk
    if kind == 1:
        return bytearray(chunk)
    if kind == 2:
        return memoryview(chunk)
    if kind == 3:
        return memoryview(b"\xee" * 3 + chunk + b"\xee")[3 : 3 + len(chunk)]  # offset slice
    return memoryview(array.array("B", chunk))


def feed(receiver, chunks, kinds: int = 0) -> list:
    events: list = []
    for i, c in enumerate(chunks):
        arg = as_input(c, kinds + i)
        events += receiver.receive_data(arg)
        assert receiver.buffered_bytes <= receiver.max_buffered_bytes
        if isinstance(arg, bytearray):
            arg.append(0)  # BufferError here would mean the channel kept an export of it
    return events


def outcome(receiver, events) -> tuple:
    """Everything a caller can observe after feeding a stream."""
    return (events, receiver.state, receiver.rx_counter, receiver.rx_epoch,
            receiver.buffered_bytes, receiver.data_to_send())


def whole(wire: bytes, cfg: ChannelConfig = CFG) -> tuple:
    _, b = make_pair(cfg)
    return outcome(b, b.receive_data(wire))


def chunked(chunks, kinds: int = 0, cfg: ChannelConfig = CFG) -> tuple:
    _, b = make_pair(cfg)
    return outcome(b, feed(b, chunks, kinds))


op = st.one_of(
    st.tuples(st.just("msg"), st.one_of(st.binary(max_size=40), st.integers(0, 300).map(bytes))),
    st.tuples(st.just("ping"), st.binary(max_size=64)),
    st.tuples(st.just("rekey")),
)

# Cut points: anywhere, or near a frame start (inside a header: offsets 1..3, right at
# it: 0, or just into the body), or a fixed read size from 1 byte up to many frames.
cutting = st.one_of(
    st.tuples(st.just("points"), st.lists(st.one_of(
        st.tuples(st.just("abs"), st.integers(0, 10**5)),
        st.tuples(st.just("frame"), st.integers(0, 200), st.integers(-3, 6)),
    ), max_size=12)),
    st.tuples(st.just("reads"), st.one_of(st.integers(1, 5), st.integers(6, 700), st.integers(700, 20000))),
)


def apply_cutting(wire: bytes, starts: list[int], how) -> list[bytes]:
    if how[0] == "reads":
        size = how[1]
        return [wire[i : i + size] for i in range(0, len(wire), size)]
    points = []
    for p in how[1]:
        if p[0] == "abs":
            points.append(p[1] % (len(wire) + 1))
        elif starts:
            points.append(starts[p[1] % len(starts)] + p[2])
    return cut(wire, points)


# -- valid streams -------------------------------------------------------------------


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=25), close=st.booleans(), tail=st.binary(max_size=30),
       how=cutting, kinds=st.integers(0, 4))
def test_any_chunking_gives_the_events_of_the_whole_stream(ops, close, tail, how, kinds):
    wire = sealed_stream(ops, close)
    starts = frame_starts(wire)
    wire += tail  # after a CLOSE: ignored; otherwise: the start of a frame, or garbage
    chunks = apply_cutting(wire, starts, how)
    assert b"".join(chunks) == wire
    ref = whole(wire)
    assert chunked(chunks, kinds) == ref
    if not tail:
        events = ref[0]
        assert messages(events) == [o[1] for o in ops if o[0] == "msg"]
        assert ref[1] is (ChannelState.CLOSED if close else ChannelState.OPEN) and ref[4] == 0


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 17, 21, 333, 65536])
def test_fixed_read_sizes_including_single_bytes(size):
    ops = [("msg", bytes([i]) * (i * 37 % 301)) for i in range(40)] + [("ping", b"p"), ("rekey",), ("msg", b"end")]
    wire = sealed_stream(ops, close=True)
    ref = whole(wire)
    assert chunked([wire[i : i + size] for i in range(0, len(wire), size)], size) == ref
    assert len(messages(ref[0])) == 41 and isinstance(ref[0][-1], Terminated)


def test_huge_read_of_many_frames_after_a_buffered_partial():
    """Socket-sized reads of max-size frames: each read finishes the buffered frame,
    holds whole frames and ends inside the next - the bulk transfer case."""
    cfg = ChannelConfig()  # 64 KiB frames
    payloads = [os.urandom(cfg.max_frame_size) for _ in range(12)]
    wire = sealed_stream([("msg", p) for p in payloads], close=False, cfg=cfg)
    for read in (65536, 3 * 65536 + 1000, 300_000):
        chunks = [wire[i : i + read] for i in range(0, len(wire), read)]
        _, b = make_pair(cfg)
        got, fed = [], 0
        for c in chunks:
            got += b.receive_data(c)
            fed += len(c)
            # only the incomplete tail of the read is kept, never a whole frame
            assert b.buffered_bytes == fed % (4 + cfg.max_body_size)
        assert messages(got) == payloads and b.buffered_bytes == 0


# -- damaged streams ------------------------------------------------------------------

damage = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 200), st.integers(0, 400), st.integers(0, 7)),
    st.tuples(st.just("length"), st.integers(0, 200), st.integers(0, 2**32 - 1)),
    st.tuples(st.just("length"), st.integers(0, 200), st.sampled_from([0, 1, 16, 17, 316, 317, 318, 100_000])),
)


def damaged(wire: bytes, starts: list[int], how) -> bytes:
    buf = bytearray(wire)
    start = starts[how[1] % len(starts)]
    if how[0] == "flip":
        end = starts[starts.index(start) + 1] if start != starts[-1] else len(wire)
        buf[start + how[2] % (end - start)] ^= 1 << how[3]
    else:
        buf[start : start + 4] = how[2].to_bytes(4, "big")
    return bytes(buf)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=15), how=damage, cutting_=cutting, kinds=st.integers(0, 4),
       filler=st.booleans())
def test_damaged_streams_fail_the_same_way_in_any_chunking(ops, how, cutting_, kinds, filler):
    wire = sealed_stream(ops, close=False)
    starts = frame_starts(wire)
    bad = damaged(wire, starts, how)
    if filler:
        bad += bytes(CFG.max_body_size + 4)  # completes whatever frame a bad length announces
    ref = whole(bad)
    got = chunked(apply_cutting(bad, starts, cutting_), kinds)
    assert got == ref
    if filler:  # the damaged frame was complete: it failed, once, with a declared error
        (t,) = terminations(ref[0])
        assert t.error_code in (ErrorCode.AUTHENTICATION_FAILED, ErrorCode.FRAME_TOO_LARGE,
                                ErrorCode.MALFORMED_FRAME) and not t.by_peer
        assert ref[1] is ChannelState.ERROR and ref[4] == 0 and ref[5]  # the ALERT is queued


def _three_frames():
    wire = sealed_stream([("msg", b"first" * 20), ("msg", b"second" * 20), ("msg", b"third" * 20),
                          ("msg", b"fourth")], close=False)
    return wire, frame_starts(wire)


@pytest.mark.parametrize(
    "what,expected",
    [
        ("body", ErrorCode.AUTHENTICATION_FAILED),
        ("tag", ErrorCode.AUTHENTICATION_FAILED),
        ("too_large", ErrorCode.FRAME_TOO_LARGE),
        ("too_short", ErrorCode.MALFORMED_FRAME),
    ],
)
@pytest.mark.parametrize("split_in", ["header", "body"])
def test_bad_frame_in_the_second_half_of_a_straddling_read(what, expected, split_in):
    """Read 1 ends inside frame 1 (its header or its body); read 2 completes frame 1
    from the buffer and carries a bad frame 2 that is parsed in place."""
    wire, starts = _three_frames()
    bad = bytearray(wire)
    f2 = starts[2]
    if what == "body":
        bad[f2 + 10] ^= 0x40
    elif what == "tag":
        bad[starts[3] - 1] ^= 1
    elif what == "too_large":
        bad[f2 : f2 + 4] = (CFG.max_body_size + 1).to_bytes(4, "big")
    else:
        bad[f2 : f2 + 4] = (16).to_bytes(4, "big")
    bad = bytes(bad)
    split = starts[1] + (2 if split_in == "header" else 30)
    _, b = make_pair(CFG)
    first = b.receive_data(bad[:split])
    assert messages(first) == [b"first" * 20] and b.buffered_bytes == split - starts[1]
    second = b.receive_data(bad[split:])
    assert messages(second) == [b"second" * 20]  # the straddling frame is delivered first
    (t,) = terminations(second)
    assert second[-1] is t and t.error_code == expected and not t.by_peer and t.is_alert
    assert b.state is ChannelState.ERROR and b.buffered_bytes == 0
    assert (first + second, b.state) == whole(bad)[:2]  # exactly as if it came whole
    assert b.receive_data(wire[starts[2]:]) == []  # sticky


@pytest.mark.parametrize("what", ["too_large", "too_short"])
def test_bad_header_split_across_reads_is_refused_before_its_body(what):
    """A buffered partial frame whose header completes in the next read: the header is
    judged before any body byte is taken into the buffer."""
    wire, starts = _three_frames()
    n = CFG.max_body_size + 1 if what == "too_large" else 3
    bad = wire[: starts[1]] + n.to_bytes(4, "big") + bytes(100_000)
    _, b = make_pair(CFG)
    assert messages(b.receive_data(bad[: starts[1] + 1])) == [b"first" * 20]
    assert b.buffered_bytes == 1
    assert b.receive_data(bad[starts[1] + 1 : starts[1] + 3]) == [] and b.buffered_bytes == 3
    (t,) = b.receive_data(bad[starts[1] + 3 :])
    assert t.error_code == (ErrorCode.FRAME_TOO_LARGE if what == "too_large" else ErrorCode.MALFORMED_FRAME)
    assert b.buffered_bytes == 0 and b.state is ChannelState.ERROR


# -- the cap and the copying ------------------------------------------------------------


def test_buffer_reaches_the_cap_exactly_and_never_more():
    cfg = ChannelConfig(max_frame_size=1000)
    frame = sealed_stream([("msg", bytes(1000))], close=False, cfg=cfg)
    _, b = make_pair(cfg)
    assert len(frame) - 1 == b.max_buffered_bytes
    sizes = [1, 2, 1, 500, 7]  # header split, then body in pieces
    pos = 0
    for s in sizes:
        assert b.receive_data(frame[pos : pos + s]) == []
        pos += s
        assert b.buffered_bytes == pos
    assert b.receive_data(frame[pos:-1]) == [] and b.buffered_bytes == b.max_buffered_bytes
    (e,) = b.receive_data(frame[-1:])
    assert e == MessageReceived(data=bytes(1000)) and b.buffered_bytes == 0


def test_a_read_completing_a_buffered_frame_is_not_copied_whole():
    """tracemalloc: while a partial frame is buffered, a 256 KiB read of whole frames
    must not pass through the buffer (the old code appended the whole read, then moved
    its tail); what stays allocated is the delivered payloads and the last partial frame."""
    cfg = ChannelConfig(max_frame_size=4096)
    payloads = [bytes([i]) * 4096 for i in range(66)]
    wire = sealed_stream([("msg", p) for p in payloads], close=False, cfg=cfg)
    flen = 4 + cfg.max_body_size
    split1, split2 = flen + 100, len(wire) - 1000  # read 2: 64+ frames, starts and ends mid-frame
    _, b = make_pair(cfg)
    assert messages(b.receive_data(wire[:split1])) == payloads[:1]
    read = wire[split1:split2]
    assert len(read) > 64 * flen - 1000
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        events = b.receive_data(read)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert messages(events) == payloads[1:65] and b.buffered_bytes == flen - 1000
    transient = peak - current
    retained = current - before
    # Retained: 64 payloads plus the tail; transient: at most a few frames at a time
    # (the pure cipher copies each frame once more), far below the read's 264 KiB.
    assert retained < 64 * 4096 + 3 * flen
    assert transient < 8 * flen, (transient, len(read))
    assert b.receive_data(wire[split2:]) and b.buffered_bytes == 0
