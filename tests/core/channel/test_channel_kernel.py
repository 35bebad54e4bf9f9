"""The C kernel (qudag_core._aead) and the pure fallback put the same bytes on the wire.

Both are checked against the construction written out with ``cryptography`` directly:
RFC 8439 §2.8 AEAD, nonce = 0x00000000 || counter:u64be, frame = len || AEAD(payload||type,
aad=len) and datagram = counter || AEAD(payload, aad=counter) (docs/channel.md).
"""
from __future__ import annotations

import os
import random

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

import qudag_core
from qudag_core.channel import frames
from qudag_core.channel.frames import PureFrameCipher
from qudag_core.errors import DecryptError

try:
    from qudag_core._aead import FrameCipher as CFrameCipher
except ImportError:
    CFrameCipher = None

needs_kernel = pytest.mark.skipif(CFrameCipher is None, reason="C kernel not built (pure build)")

KEY = bytes(range(32))
SIZES = [0, 1, 15, 16, 63, 64, 65, 127, 128, 511, 512, 4095, 8191, 8192, 8193, 65536]
COUNTERS = [0, 1, 255, 2**32, 2**64 - 1]


def reference_frame(key: bytes, counter: int, frame_type: int, payload: bytes) -> bytes:
    header = (1 + len(payload) + 16).to_bytes(4, "big")
    nonce = bytes(4) + counter.to_bytes(8, "big")
    return header + ChaCha20Poly1305(key).encrypt(nonce, payload + bytes([frame_type]), header)


def reference_datagram(key: bytes, counter: int, payload: bytes) -> bytes:
    header = counter.to_bytes(8, "big")
    return header + ChaCha20Poly1305(key).encrypt(bytes(4) + header, payload, header)


def ciphers():
    out = [PureFrameCipher]
    if CFrameCipher is not None:
        out.append(CFrameCipher)
    return out


@pytest.mark.skipif(qudag_core.PURE_FORCED, reason="pure build requested")
def test_compiled_build_uses_the_kernel():
    assert frames.KERNEL and frames.FrameCipher is CFrameCipher


@pytest.mark.parametrize("impl", ciphers(), ids=lambda c: c.__module__)
def test_frames_match_the_reference_construction(impl):
    fc = impl(KEY)
    rnd = random.Random(1)
    for size in SIZES:
        payload = rnd.randbytes(size)
        for counter in COUNTERS:
            frame_type = rnd.randrange(256)
            expected = reference_frame(KEY, counter, frame_type, payload)
            assert fc.seal_frame(counter, frame_type, payload) == expected
            assert fc.open_frame(counter, expected) == (frame_type, payload)
            dg = reference_datagram(KEY, counter, payload)
            assert fc.seal_datagram(counter, payload) == dg
            assert fc.open_datagram(dg) == payload


@needs_kernel
def test_kernel_and_fallback_open_each_other():
    c, p = CFrameCipher(KEY), PureFrameCipher(KEY)
    rnd = random.Random(2)
    for _ in range(200):
        payload = rnd.randbytes(rnd.randrange(0, 20000))
        counter = rnd.randrange(2**64)
        ftype = rnd.randrange(256)
        a, b = c.seal_frame(counter, ftype, payload), p.seal_frame(counter, ftype, payload)
        assert a == b
        assert p.open_frame(counter, a) == c.open_frame(counter, b) == (ftype, payload)
        da, db = c.seal_datagram(counter, payload), p.seal_datagram(counter, payload)
        assert da == db and p.open_datagram(da) == c.open_datagram(db) == payload


@pytest.mark.parametrize("impl", ciphers(), ids=lambda c: c.__module__)
def test_buffer_protocol_inputs(impl):
    fc = impl(bytearray(KEY))
    payload = os.urandom(300)
    frame = fc.seal_frame(7, 0, memoryview(bytearray(payload)))
    assert frame == fc.seal_frame(7, 0, payload)
    padded = b"xx" + frame + b"yy"
    assert fc.open_frame(7, memoryview(padded)[2:-2]) == (0, payload)
    assert fc.open_frame(7, bytearray(frame)) == (0, payload)


@pytest.mark.parametrize("impl", ciphers(), ids=lambda c: c.__module__)
def test_authentication_failures(impl):
    fc = impl(KEY)
    frame = fc.seal_frame(3, 0, b"attack at dawn")
    with pytest.raises(DecryptError):
        fc.open_frame(4, frame)  # wrong counter = wrong nonce
    with pytest.raises(DecryptError):
        impl(bytes(32)).open_frame(3, frame)  # wrong key
    for i in range(4, len(frame)):  # every body byte; header bytes are checked below
        bad = bytearray(frame)
        bad[i] ^= 0x80
        with pytest.raises(DecryptError):
            fc.open_frame(3, bytes(bad))
    dg = fc.seal_datagram(9, b"datagram")
    for i in range(len(dg)):
        bad = bytearray(dg)
        bad[i] ^= 1
        with pytest.raises(DecryptError):
            fc.open_datagram(bytes(bad))


@pytest.mark.parametrize("impl", ciphers(), ids=lambda c: c.__module__)
def test_length_and_argument_checks(impl):
    fc = impl(KEY)
    frame = fc.seal_frame(0, 0, b"abc")
    with pytest.raises(ValueError):
        fc.open_frame(0, frame[:-1])  # header says one byte more
    with pytest.raises(ValueError):
        fc.open_frame(0, frame + b"\x00")
    with pytest.raises(ValueError):
        fc.open_frame(0, frame[:4])
    with pytest.raises(ValueError):
        fc.open_frame(0, b"")
    with pytest.raises(ValueError):
        fc.open_datagram(b"\x00" * 23)
    with pytest.raises(ValueError):
        impl(bytes(31))
    with pytest.raises(ValueError):
        fc.seal_frame(0, 256, b"")
    with pytest.raises((OverflowError, ValueError, TypeError)):
        fc.seal_frame(2**64, 0, b"")
    with pytest.raises((OverflowError, ValueError, TypeError)):
        fc.seal_frame(-1, 0, b"")


@pytest.mark.parametrize("impl", ciphers(), ids=lambda c: c.__module__)
def test_wipe_makes_the_object_unusable_and_repr_hides_the_key(impl):
    fc = impl(KEY)
    assert KEY.hex() not in repr(fc) and "key hidden" in repr(fc)
    fc.wipe()
    with pytest.raises(ValueError):
        fc.seal_frame(0, 0, b"")
    with pytest.raises(ValueError):
        fc.open_datagram(bytes(40))
