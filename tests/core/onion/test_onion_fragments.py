"""Handshake fragmentation (docs/onion.md §3.2): round trips and capped, fuzzed reassembly."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.errors import RemoteProtocolError
from qudag_core.onion.fragments import FRAG_HEADER_SIZE, FragmentError, Reassembler, fragment


def test_known_layout():
    assert fragment(b"abcdef", 8) == [b"\x00\x06\x00\x00abcd", b"\x00\x06\x00\x04ef"]


@given(st.binary(min_size=1, max_size=4096), st.integers(FRAG_HEADER_SIZE + 1, 1100), st.booleans())
def test_round_trip(msg, space, pad):
    frags = fragment(msg, space)
    assert all(len(f) <= space for f in frags)
    r = Reassembler(max_bytes=4096, max_pieces=len(frags))
    out = None
    for i, f in enumerate(frags):
        if pad:  # carriers pad fragments to the cell's space: the padding is ignored
            f = f + b"\xee" * (space - len(f))
        assert out is None
        out = r.feed(f, i * 0.001)
    assert out == msg
    with pytest.raises(FragmentError):
        r.feed(frags[0], 0.0)


def test_caps_and_order():
    msg = bytes(range(256)) * 12  # 3072 bytes
    frags = fragment(msg, 1000)
    with pytest.raises(FragmentError):
        Reassembler(max_bytes=3000).feed(frags[0], 0.0)
    with pytest.raises(FragmentError):
        r = Reassembler(max_pieces=2)
        for f in frags:
            r.feed(f, 0.0)
    r = Reassembler()
    r.feed(frags[0], 0.0)
    with pytest.raises(FragmentError):
        r.feed(frags[2], 0.0)  # skipped one
    r = Reassembler(timeout=5.0)
    r.feed(frags[0], 0.0)
    assert r.deadline == 5.0 and not r.expired(5.0) and r.expired(5.1)
    with pytest.raises(FragmentError) as ei:
        r.feed(frags[1], 6.0)
    assert ei.value.error_code == 8  # TIMEOUT
    with pytest.raises(FragmentError):
        Reassembler().feed(frags[1], 0.0)  # does not start at offset 0


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=1100), max_size=20), st.integers(1, 4096), st.integers(1, 8))
def test_fuzz_only_declared_errors_bounded_memory(pieces, max_bytes, max_pieces):
    r = Reassembler(max_bytes=max_bytes, max_pieces=max_pieces, timeout=10.0)
    for i, p in enumerate(pieces):
        try:
            out = r.feed(p, float(i))
        except FragmentError as e:
            assert isinstance(e, RemoteProtocolError)
            break
        assert r.buffered <= max_bytes
        if out is not None:
            assert len(out) <= max_bytes
            break
