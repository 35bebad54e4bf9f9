"""Datagram mode and the RFC 6479 replay window (docs/channel.md §Datagram mode)."""
from __future__ import annotations

import random

import pytest
from channel_helpers import keys
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.channel import (
    DATAGRAM_KEY_CONTEXT,
    ChannelConfig,
    DatagramChannel,
    FrameAuthenticationFailed,
    FrameTooLarge,
    MalformedFrame,
    MessageTooLarge,
    NonceLimitReached,
    PacketTooOld,
    PeerNonceLimitExceeded,
    ReplayedPacket,
    ReplayWindow,
)
from qudag_core.crypto import derive_key
from qudag_core.errors import RemoteProtocolError


def dpair(config: ChannelConfig | None = None) -> tuple[DatagramChannel, DatagramChannel]:
    k_ir, k_ri, sid = keys()
    return (
        DatagramChannel(tx_key=k_ir, rx_key=k_ri, session_id=sid, config=config),
        DatagramChannel(tx_key=k_ri, rx_key=k_ir, session_id=sid, config=config),
    )


def test_round_trip_and_wire_format():
    a, b = dpair()
    k_ir, _, _ = keys()
    for i, size in enumerate([0, 1, 100, 1400, 65536]):
        data = random.Random(i).randbytes(size)
        pkt = a.seal_datagram(data)
        header = (2 * i).to_bytes(8, "big")  # two packets per round
        # WireGuard-style: explicit counter, AEAD under the derived datagram key
        expected = header + ChaCha20Poly1305(derive_key(DATAGRAM_KEY_CONTEXT, k_ir)).encrypt(bytes(4) + header, data, header)
        assert pkt == expected
        assert b.open_datagram(pkt) == data
        assert b.open_datagram(memoryview(a.seal_datagram(data))) == data


def test_duplicates_rejected_and_reordering_accepted():
    a, b = dpair()
    pkts = [a.seal_datagram(bytes([i])) for i in range(100)]
    order = list(range(100))
    random.Random(5).shuffle(order)
    for i in order:
        assert b.open_datagram(pkts[i]) == bytes([i])
    for i in (0, 50, 99):
        with pytest.raises(ReplayedPacket):
            b.open_datagram(pkts[i])


def test_too_old_packets_rejected():
    a, b = dpair(ChannelConfig(replay_window=128))  # remembers 64 counters below the top
    pkts = [a.seal_datagram(b"") for _ in range(200)]
    b.open_datagram(pkts[199])
    with pytest.raises(PacketTooOld):
        b.open_datagram(pkts[199 - 64])
    assert isinstance(PacketTooOld(), ReplayedPacket)
    assert b.open_datagram(pkts[199 - 63]) == b""  # the oldest counter still inside


def test_forged_packets_do_not_move_the_window():
    a, b = dpair()
    genuine = a.seal_datagram(b"real")
    forged = bytearray(genuine)
    forged[-1] ^= 1
    with pytest.raises(FrameAuthenticationFailed):
        b.open_datagram(bytes(forged))
    far = (10**6).to_bytes(8, "big") + bytes(20)
    with pytest.raises(FrameAuthenticationFailed):
        b.open_datagram(far)
    assert b.window.highest is None
    assert b.open_datagram(genuine) == b"real"


def test_every_bit_flip_is_rejected():
    a, b = dpair()
    pkt = a.seal_datagram(b"bits")
    for bit in range(len(pkt) * 8):
        bad = bytearray(pkt)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(RemoteProtocolError):
            b.open_datagram(bytes(bad))
    assert b.open_datagram(pkt) == b"bits"


def test_malformed_and_limits():
    a, b = dpair(ChannelConfig(max_frame_size=100, nonce_limit=3, rekey_after_messages=None))
    with pytest.raises(MalformedFrame):
        b.open_datagram(bytes(23))
    with pytest.raises(FrameTooLarge):
        b.open_datagram(bytes(8 + 101 + 16))
    with pytest.raises(PeerNonceLimitExceeded):
        b.open_datagram((3).to_bytes(8, "big") + bytes(16))
    with pytest.raises(MessageTooLarge):
        a.seal_datagram(bytes(101))
    for _ in range(3):
        a.seal_datagram(b"x")
    with pytest.raises(NonceLimitReached):
        a.seal_datagram(b"x")


def test_datagram_keys_are_separate_from_stream_keys():
    from qudag_core.channel.frames import FrameCipher

    a, b = dpair()
    k_ir, _, _ = keys()
    stream_style = FrameCipher(k_ir).seal_datagram(0, b"same nonce")
    with pytest.raises(FrameAuthenticationFailed):
        b.open_datagram(stream_style)
    assert a.seal_datagram(b"same nonce") != stream_style


class ReplayModel:
    """Obvious reference: a set of seen counters and the highest one."""

    def __init__(self, size: int) -> None:
        self.size, self.seen, self.top = size, set(), None

    def accept(self, c: int) -> str:
        if self.top is not None and c + self.size <= self.top:
            return "old"
        if c in self.seen:
            return "dup"
        self.seen.add(c)
        self.top = c if self.top is None else max(self.top, c)
        return "ok"


def _window_outcome(w: ReplayWindow, c: int) -> str:
    try:
        w.check(c)
    except PacketTooOld:
        return "old"
    except ReplayedPacket:
        return "dup"
    w.update(c)
    return "ok"


@settings(max_examples=200, deadline=None)
@given(
    bits=st.sampled_from([128, 256, 2048]),
    counters=st.lists(
        st.one_of(st.integers(0, 600), st.integers(0, 2**64 - 1), st.integers(2**64 - 700, 2**64 - 1)), max_size=300
    ),
)
def test_replay_window_matches_the_model(bits, counters):
    w, model = ReplayWindow(bits), ReplayModel(bits - 64)
    for c in counters:
        assert _window_outcome(w, c) == model.accept(c), c


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_permutations_with_duplicates(data):
    a, b = dpair()
    n = data.draw(st.integers(1, 150))
    pkts = [a.seal_datagram(i.to_bytes(2, "big")) for i in range(n)]
    order = data.draw(st.permutations(range(n)))
    dups = data.draw(st.lists(st.integers(0, n - 1), max_size=20))
    stream = list(order)
    for d in dups:
        stream.insert(data.draw(st.integers(0, len(stream))), d)
    got = []
    for i in stream:
        try:
            got.append(int.from_bytes(b.open_datagram(pkts[i]), "big"))
        except ReplayedPacket:
            pass
    # window 2048 > 150 packets: every packet accepted exactly once, duplicates dropped
    assert sorted(got) == list(range(n))


def test_window_rejects_bad_sizes():
    for bits in (0, 64, 100, 130):
        with pytest.raises(ValueError):
            ReplayWindow(bits)
