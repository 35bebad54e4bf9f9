"""Stream channel behaviour (docs/channel.md): framing, limits, rekey, close/alert, timers."""
from __future__ import annotations

import random

import pytest
from channel_helpers import keys, make_pair, messages, terminations, transfer
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from qudag_core.channel import (
    KEY_UPDATE_CONTEXT,
    ChannelConfig,
    ChannelNotOpen,
    ChannelState,
    Direction,
    ErrorCode,
    FrameType,
    InvalidChannelConfig,
    KeyUpdated,
    MessageReceived,
    MessageTooLarge,
    NonceLimitReached,
    PingReceived,
    PongReceived,
    SecureChannel,
    Terminated,
    UnknownFrameReceived,
)
from qudag_core.channel.frames import FrameCipher, encode_close
from qudag_core.crypto import derive_key
from qudag_core.errors import InvalidKey, LocalProtocolError

SMALL = ChannelConfig(max_frame_size=2048)


def feed(ch: SecureChannel, data: bytes, mode: str, rnd: random.Random) -> list:
    events: list = []
    if mode == "whole":
        events += ch.receive_data(data)
    elif mode == "bytes":
        for i in range(len(data)):
            events += ch.receive_data(data[i : i + 1])
            assert ch.buffered_bytes <= ch.max_buffered_bytes
    else:
        i = 0
        while i < len(data):
            j = i + rnd.randrange(1, 3000)
            events += ch.receive_data(memoryview(data)[i:j])
            assert ch.buffered_bytes <= ch.max_buffered_bytes
            i = j
    return events


@pytest.mark.parametrize("mode", ["whole", "bytes", "chunks"])
def test_round_trip_random_sizes(mode):
    rnd = random.Random(mode)
    a, b = make_pair(SMALL)
    sizes = [0, 1, 2047, 2048] + [rnd.randrange(0, 2049) for _ in range(40 if mode == "bytes" else 300)]
    sent = [rnd.randbytes(n) for n in sizes]
    for m in sent:
        a.send_message(m)
    events = feed(b, a.data_to_send(), mode, rnd)
    assert all(isinstance(e, MessageReceived) for e in events)
    assert messages(events) == sent
    assert b.buffered_bytes == 0 and b.state is ChannelState.OPEN


def test_both_directions_and_wire_format():
    a, b = make_pair()
    a.send_message(b"ping from a")
    wire = a.data_to_send()
    k_ir, _, _ = keys()
    header = wire[:4]
    # RFC 8439 AEAD, nonce 0^32 || counter, aad = length prefix (docs/channel.md §Wire format)
    assert wire == header + ChaCha20Poly1305(k_ir).encrypt(bytes(12), b"ping from a\x00", header)
    assert int.from_bytes(header, "big") == 1 + 11 + 16
    assert messages(b.receive_data(wire)) == [b"ping from a"]
    b.send_message(b"reply")
    assert messages(transfer(b, a)) == [b"reply"]
    assert a.tx_counter == 1 and a.rx_counter == 1


def test_trailing_partial_frame_is_buffered_not_delivered():
    a, b = make_pair()
    a.send_message(b"one")
    a.send_message(b"two")
    wire = a.data_to_send()
    first_len = 4 + int.from_bytes(wire[:4], "big")
    events = b.receive_data(wire[:-1])
    assert messages(events) == [b"one"]
    assert b.buffered_bytes == len(wire) - first_len - 1
    assert messages(b.receive_data(wire[-1:])) == [b"two"]


def test_trailing_garbage_terminates_after_the_good_frames():
    a, b = make_pair()
    a.send_message(b"good")
    events = b.receive_data(a.data_to_send() + bytes(range(40)))
    assert messages(events) == [b"good"]
    (t,) = terminations(events)
    assert isinstance(events[-1], Terminated) and not t.by_peer and t.is_alert
    assert b.state is ChannelState.ERROR


def test_max_frame_size_is_exact_and_enforced_locally():
    a, b = make_pair(SMALL)
    a.send_message(bytes(2048))
    assert messages(transfer(a, b)) == [bytes(2048)]
    with pytest.raises(MessageTooLarge):
        a.send_message(bytes(2049))
    assert isinstance(MessageTooLarge(), LocalProtocolError)
    assert a.state is ChannelState.OPEN  # local misuse does not end the channel


def test_oversized_length_prefix_rejected_before_buffering():
    a, b = make_pair(ChannelConfig(max_frame_size=100_000), peer_config=SMALL)
    a.send_message(bytes(3000))
    wire = a.data_to_send()
    events = b.receive_data(wire[:4])  # only the header: refused at once
    (t,) = terminations(events)
    assert t.error_code == ErrorCode.FRAME_TOO_LARGE and not t.by_peer
    assert b.buffered_bytes == 0
    assert b.receive_data(wire[4:]) == []
    # the peer is told why
    (t2,) = terminations(transfer(b, a))
    assert t2.by_peer and t2.is_alert and t2.error_code == ErrorCode.FRAME_TOO_LARGE


@pytest.mark.parametrize("length", [0, 1, 16])
def test_too_short_length_prefix(length):
    _, b = make_pair()
    events = b.receive_data(length.to_bytes(4, "big") + bytes(length))
    assert terminations(events)[0].error_code == ErrorCode.MALFORMED_FRAME


def test_every_bit_flip_terminates_without_delivery():
    a, b0 = make_pair(SMALL)
    a.send_message(b"the plaintext must never leak")
    frame = a.data_to_send()
    filler = bytes(SMALL.max_body_size + 4)  # completes any frame a flipped length announces
    for bit in range(len(frame) * 8):
        _, b = make_pair(SMALL)
        bad = bytearray(frame)
        bad[bit // 8] ^= 1 << (bit % 8)
        events = b.receive_data(bytes(bad) + filler)
        assert not any(isinstance(e, MessageReceived) for e in events), bit
        assert len(terminations(events)) == 1 and b.state is ChannelState.ERROR, bit
        assert b.receive_data(frame) == []  # sticky: even the genuine frame is ignored now


def test_replayed_or_reordered_stream_frames_fail():
    a, b = make_pair()
    a.send_message(b"1")
    f1 = a.data_to_send()
    a.send_message(b"2")
    f2 = a.data_to_send()
    assert messages(b.receive_data(f1)) == [b"1"]
    events = b.receive_data(f1)  # replay: counter 1 expected, frame sealed under 0
    assert terminations(events)[0].error_code == ErrorCode.AUTHENTICATION_FAILED
    _, c = make_pair()
    assert terminations(c.receive_data(f2 + f1))[0].error_code == ErrorCode.AUTHENTICATION_FAILED


def test_one_terminated_and_nothing_after():
    a, b = make_pair(ChannelConfig(idle_timeout=5.0, keepalive_interval=1.0))
    events = b.receive_data(b"\xff" * 10)
    assert len(terminations(events)) == 1
    a.send_message(b"late")
    assert b.receive_data(a.data_to_send()) == []
    assert b.handle_timer(100.0) == [] and b.get_timer() is None
    with pytest.raises(ChannelNotOpen):
        b.send_message(b"x")
    with pytest.raises(ChannelNotOpen):
        b.ping()
    with pytest.raises(ChannelNotOpen):
        b.update_key()
    b.close()  # harmless no-op
    assert b.state is ChannelState.ERROR


def test_close_reaches_peer_with_code_and_reason():
    a, b = make_pair()
    a.send_message(b"last words")
    a.close(4000, "going away: ünïcode")
    assert a.state is ChannelState.CLOSED
    events = transfer(a, b)
    assert messages(events) == [b"last words"]
    assert events[-1] == Terminated(error_code=4000, reason="going away: ünïcode", by_peer=True, is_alert=False)
    assert b.state is ChannelState.CLOSED and b.data_to_send() == b""
    with pytest.raises(ChannelNotOpen):
        a.send_message(b"x")
    a.close(1, "again")  # no-op, nothing queued
    assert a.data_to_send() == b""
    with pytest.raises(ValueError):
        make_pair()[0].close(70000)


def test_close_reason_is_bounded():
    a, b = make_pair()
    a.close(1, "é" * 5000)
    (t,) = terminations(transfer(a, b))
    assert len(t.reason.encode()) <= 1024 and set(t.reason) == {"é"}


def test_frames_after_close_in_the_same_chunk_are_ignored():
    a, b = make_pair()
    a.close(0, "")
    close = a.data_to_send()
    k_ir, _, _ = keys()
    extra = FrameCipher(k_ir).seal_frame(1, FrameType.DATA, b"after close")
    events = b.receive_data(close + extra)
    assert len(events) == 1 and isinstance(events[0], Terminated)


def _crafted(counter: int, frame_type: int, payload: bytes) -> bytes:
    k_ir, _, _ = keys()
    return FrameCipher(k_ir).seal_frame(counter, frame_type, payload)


@pytest.mark.parametrize(
    "frame_type,payload",
    [(FrameType.KEY_UPDATE, b"x"), (FrameType.CLOSE, b"\x00"), (FrameType.ALERT, b""), (FrameType.PING, bytes(65))],
)
def test_malformed_control_frames(frame_type, payload):
    _, b = make_pair()
    (t,) = b.receive_data(_crafted(0, frame_type, payload))
    assert t.error_code == ErrorCode.MALFORMED_FRAME and not t.by_peer


def test_unknown_frame_types_are_reported_and_skipped():
    _, b = make_pair()
    events = b.receive_data(_crafted(0, 0x7E, b"future") + _crafted(1, FrameType.DATA, b"data"))
    assert events == [UnknownFrameReceived(frame_type=0x7E, data=b"future"), MessageReceived(data=b"data")]


def test_alert_with_unknown_code_stays_an_int():
    _, b = make_pair()
    (t,) = b.receive_data(_crafted(0, FrameType.ALERT, encode_close(999, "?")))
    assert t.error_code == 999 and t.by_peer and t.is_alert and b.state is ChannelState.ERROR


def test_ping_pong_and_liveness():
    a, b = make_pair(now=0.0)
    a.ping(b"probe")
    assert transfer(a, b, now=3.0) == [PingReceived(data=b"probe")]
    assert b.last_received_at == 3.0
    assert transfer(b, a, now=4.5) == [PongReceived(data=b"probe")]
    assert a.last_received_at == 4.5
    with pytest.raises(MessageTooLarge):
        a.ping(bytes(65))


def test_keepalive_and_idle_timeout():
    cfg = ChannelConfig(keepalive_interval=10.0, idle_timeout=30.0, rekey_after_seconds=None)
    a, b = make_pair(cfg, now=0.0)
    assert a.get_timer() == 10.0
    assert a.handle_timer(10.0) == [] and a.last_sent_at == 10.0
    assert transfer(a, b, now=10.0) == [PingReceived(data=b"")]
    assert a.get_timer() == 20.0
    assert b.get_timer() == 20.0  # the PONG b sent counts as traffic
    assert transfer(b, a, now=11.0) == [PongReceived(data=b"")]
    assert a.last_received_at == 11.0
    # now a goes silent towards b: b's idle timer fires 30 s after b last heard from a
    events = b.handle_timer(40.0)
    (t,) = terminations(events)
    assert t.error_code == ErrorCode.IDLE_TIMEOUT and not t.by_peer
    assert b.state is ChannelState.CLOSED and b.get_timer() is None
    (t2,) = terminations(transfer(b, a))
    assert t2.by_peer and t2.error_code == ErrorCode.IDLE_TIMEOUT


def _drive(a, b, n_messages, size, rnd):
    sent, got = [], []
    for _ in range(n_messages):
        m = rnd.randbytes(size)
        a.send_message(m)
        sent.append(m)
        got += transfer(a, b)
    return sent, got


def test_rekey_by_messages_both_sides_agree():
    cfg = ChannelConfig(rekey_after_messages=3)
    a, b = make_pair(cfg)
    sent, events = _drive(a, b, 20, 10, random.Random(1))
    assert messages(events) == sent
    updates = [e for e in events if isinstance(e, KeyUpdated)]
    # frames 0,1,2 are data; the 4th frame under each key is KEY_UPDATE (counter 3)
    assert len(updates) == 6 and all(u.direction is Direction.RECEIVE for u in updates)
    assert [u.epoch for u in updates] == list(range(1, 7))
    assert a.tx_epoch == b.rx_epoch == 6 and a.tx_counter == b.rx_counter == 2
    assert [e.epoch for e in a.receive_data(b"") if isinstance(e, KeyUpdated)] == list(range(1, 7))


def test_rekey_by_bytes():
    a, b = make_pair(ChannelConfig(rekey_after_bytes=1000))
    sent, events = _drive(a, b, 12, 300, random.Random(2))
    assert messages(events) == sent
    # 4 messages (1200 bytes >= 1000) per key, then the 5th send rekeys first
    assert a.tx_epoch == b.rx_epoch == 2


def test_rekey_by_time_with_injected_clock():
    a, b = make_pair(ChannelConfig(rekey_after_seconds=60.0), now=100.0)
    assert a.get_timer() == 160.0
    assert a.handle_timer(159.0) == []
    assert a.handle_timer(160.0) == [KeyUpdated(direction=Direction.SEND, epoch=1)]
    assert a.get_timer() == 220.0
    a.send_message(b"under epoch 1")
    events = transfer(a, b)
    assert events == [KeyUpdated(direction=Direction.RECEIVE, epoch=1), MessageReceived(data=b"under epoch 1")]


def test_key_schedule_is_blake3_derive_key_over_the_current_key():
    k_ir, k_ri, sid = keys()
    a, _ = make_pair()
    a.update_key()
    a.update_key()
    a.send_message(b"epoch 2")
    wire = a.data_to_send()
    k2 = derive_key(KEY_UPDATE_CONTEXT, derive_key(KEY_UPDATE_CONTEXT, k_ir))
    # a fresh channel holding the epoch-2 key opens the last frame at counter 0
    fresh = SecureChannel(tx_key=k_ri, rx_key=k2, session_id=sid, now=0.0)
    first_two = 2 * (4 + 1 + 16)  # the two KEY_UPDATE frames
    assert messages(fresh.receive_data(wire[first_two:])) == [b"epoch 2"]


def test_nonce_limit_refuses_to_send_without_rekey():
    cfg = ChannelConfig(nonce_limit=5, rekey_after_messages=None)
    a, b = make_pair(cfg)
    for i in range(4):
        a.send_message(bytes([i]))
    with pytest.raises(NonceLimitReached):
        a.send_message(b"one too many")
    with pytest.raises(NonceLimitReached):
        a.ping()
    assert isinstance(NonceLimitReached(), LocalProtocolError) and a.state is ChannelState.OPEN
    a.close(0, "spent")  # the reserved last counter still carries CLOSE
    events = transfer(a, b)
    assert messages(events) == [bytes([i]) for i in range(4)]
    assert terminations(events)[0].reason == "spent"


def test_rekey_resets_counters_below_the_nonce_limit():
    cfg = ChannelConfig(nonce_limit=5, rekey_after_messages=4)
    a, b = make_pair(cfg)
    sent, events = _drive(a, b, 50, 5, random.Random(3))
    assert messages(events) == sent and a.tx_epoch == 12


def test_peer_beyond_our_nonce_limit_is_a_violation():
    a, b = make_pair(ChannelConfig(rekey_after_messages=None), peer_config=ChannelConfig(nonce_limit=3, rekey_after_messages=None))
    for _ in range(4):
        a.send_message(b"x")
    events = transfer(a, b)
    assert messages(events) == [b"x"] * 3
    assert terminations(events)[0].error_code == ErrorCode.NONCE_LIMIT_EXCEEDED


def test_config_validation_and_key_checks():
    for bad in (
        dict(max_frame_size=0),
        dict(nonce_limit=1),
        dict(nonce_limit=2**64 + 1),
        dict(nonce_limit=10, rekey_after_messages=10),
        dict(rekey_after_bytes=0),
        dict(rekey_after_seconds=0.0),
        dict(replay_window=100),
    ):
        with pytest.raises(InvalidChannelConfig):
            ChannelConfig(**bad)
    with pytest.raises(InvalidKey):
        SecureChannel(tx_key=bytes(31), rx_key=bytes(32), session_id=bytes(32), now=0.0)


def test_repr_hides_keys():
    a, _ = make_pair()
    k_ir, k_ri, _ = keys()
    r = repr(a)
    assert k_ir.hex()[:8] not in r and k_ri.hex()[:8] not in r and "OPEN" in r


def test_hot_path_events_are_ordinary_frozen_dataclasses():
    import dataclasses
    import gc

    a, b = make_pair()
    a.send_message(b"fast")
    (e,) = transfer(a, b)
    ref = MessageReceived(data=b"fast")
    assert type(e) is MessageReceived and e == ref and hash(e) == hash(ref) and repr(e) == repr(ref)
    assert gc.is_tracked(e) == gc.is_tracked(ref)
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.data = b"changed"
    assert dataclasses.replace(e, data=b"x") == MessageReceived(data=b"x")


def test_any_buffer_is_read_as_bytes():
    import array

    a, b = make_pair()
    a.send_message(b"x" * 37)
    wire = a.data_to_send()
    wire += bytes(-len(wire) % 4)  # pad to whole 4-byte items; the padding starts a partial frame
    events = b.receive_data(array.array("I", wire))
    assert messages(events) == [b"x" * 37] and b.buffered_bytes == len(wire) - 4 - 37 - 17


def test_threads_with_separate_channels_and_large_frames():
    """Kernel frames >= 8 KiB run without the GIL; separate channels stay independent."""
    import threading

    results = {}

    def worker(seed: bytes) -> None:
        a, b = make_pair(seed=seed)
        rnd = random.Random(seed)
        sent = [rnd.randbytes(rnd.randrange(8192, 65537)) for _ in range(30)]
        got = []
        for m in sent:
            a.send_message(m)
            got += messages(transfer(a, b))
        results[seed] = got == sent

    threads = [threading.Thread(target=worker, args=(bytes([i]),)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results == {bytes([i]): True for i in range(4)}
