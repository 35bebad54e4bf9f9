"""Strict bencode codec (BEP 3 "bencoding", as used by BEP 5 KRPC).

Known answers, the rejection table with exact offsets, Hypothesis properties (round trip,
totality: any input decodes or raises ``BencodeError``), and the C kernel against the
pure reference on arbitrary input when the kernel is built.
"""
from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.krpc import bencode as bc
from qudag_core.krpc.errors import BencodeEncodeError, BencodeError
from qudag_core.errors import LocalProtocolError, RemoteProtocolError

LONG = os.environ.get("QUDAG_LONG") == "1"


def n_examples(n: int) -> int:
    return n * 20 if LONG else n


PROPS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

CODECS = [pytest.param((bc.py_decode, bc.py_encode), id="pure")]
if bc.KERNEL:
    from qudag_core import _bencode

    CODECS.append(pytest.param((_bencode.decode, _bencode.encode), id="kernel"))


def test_kernel_matches_build():
    """The C kernel is in use exactly when the compiled build is."""
    import qudag_core

    assert bc.KERNEL == (not qudag_core.PURE_FORCED)
    if bc.KERNEL:
        assert bc.decode is not bc.py_decode


# BEP 3 "bencoding" examples plus the KRPC shapes of BEP 5.
VALID = [
    (b"4:spam", b"spam"),
    (b"0:", b""),
    (b"i3e", 3),
    (b"i-3e", -3),
    (b"i0e", 0),
    (b"l4:spam4:eggse", [b"spam", b"eggs"]),
    (b"le", []),
    (b"de", {}),
    (b"d3:cow3:moo4:spam4:eggse", {b"cow": b"moo", b"spam": b"eggs"}),
    (b"d4:spaml1:a1:bee", {b"spam": [b"a", b"b"]}),
    (b"i9223372036854775807e", 2**63 - 1),
    (b"i-9223372036854775808e", -(2**63)),
    (b"i18446744073709551616e", 2**64),
    (b"i" + b"9" * 256 + b"e", int("9" * 256)),
    (b"i-" + b"9" * 256 + b"e", -int("9" * 256)),
    (b"d0:i1e1:\x00i2e1:\xffi3ee", {b"": 1, b"\x00": 2, b"\xff": 3}),
    (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
     {b"a": {b"id": b"abcdefghij0123456789"}, b"q": b"ping", b"t": b"aa", b"y": b"q"}),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("data,value", VALID)
def test_known_answers(codec, data, value):
    dec, enc = codec
    assert dec(data) == value
    assert enc(value) == data
    assert dec(bytearray(data)) == value
    assert dec(memoryview(b"xx" + data)[2:]) == value
    spread = bytes(b for c in data for b in (c, 0))
    assert dec(memoryview(spread)[::2]) == value  # non-contiguous view


# (input, offset, reason): the first violation in reading order.
INVALID = [
    (b"", 0, bc.E_END),
    (b"i", 1, bc.E_END),
    (b"ie", 1, bc.E_INT),
    (b"i-e", 2, bc.E_INT),
    (b"i-", 2, bc.E_END),
    (b"i-0e", 2, bc.E_NEG_ZERO),
    (b"i00e", 1, bc.E_INT_LEADING_ZERO),
    (b"i03e", 1, bc.E_INT_LEADING_ZERO),
    (b"i-03e", 2, bc.E_NEG_ZERO),
    (b"i3", 2, bc.E_END),
    (b"i3x", 2, bc.E_INT_END),
    (b"i+3e", 1, bc.E_INT),
    (b"i 3e", 1, bc.E_INT),
    (b"i3.5e", 2, bc.E_INT_END),
    (b"i" + b"1" * 257 + b"e", 257, bc.E_INT_LONG),
    (b"03:abc", 0, bc.E_LEN_LEADING_ZERO),
    (b"00:", 0, bc.E_LEN_LEADING_ZERO),
    (b"5:abc", 0, bc.E_LEN_PAST_END),
    (b"4294967296:x", 0, bc.E_LEN_PAST_END),
    (b"99999999999999999999999999999:", 0, bc.E_LEN_PAST_END),
    (b"1", 1, bc.E_END),
    (b"1x", 1, bc.E_COLON),
    (b"-1:a", 0, bc.E_TYPE),
    (b"l", 1, bc.E_END),
    (b"li1e", 4, bc.E_END),
    (b"d", 1, bc.E_END),
    (b"d1:a", 4, bc.E_END),
    (b"di1ei2ee", 1, bc.E_KEY_TYPE),
    (b"dle1:ae", 1, bc.E_KEY_TYPE),
    (b"d1:bi1e1:ai2ee", 7, bc.E_KEY_ORDER),
    (b"d1:ai1e1:ai2ee", 7, bc.E_KEY_DUP),
    (b"d2:abi1e1:ai2ee", 8, bc.E_KEY_ORDER),
    (b"d1:\xffi1e1:\x00i2ee", 7, bc.E_KEY_ORDER),
    (b"i1ei2e", 3, bc.E_TRAILING),
    (b"4:spamx", 6, bc.E_TRAILING),
    (b"lee", 2, bc.E_TRAILING),
    (b"x", 0, bc.E_TYPE),
    (b"e", 0, bc.E_TYPE),
    (b"l1:ax", 4, bc.E_TYPE),
    (b"s", 0, bc.E_TYPE),
]


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("data,offset,reason", INVALID)
def test_rejections_with_offsets(codec, data, offset, reason):
    dec, _ = codec
    with pytest.raises(BencodeError) as ei:
        dec(data)
    assert (ei.value.offset, ei.value.reason) == (offset, reason)
    assert isinstance(ei.value, RemoteProtocolError)
    assert ei.value.error_code == 203


@pytest.mark.parametrize("codec", CODECS)
def test_depth_limit(codec):
    dec, enc = codec
    ok = b"l" * 64 + b"e" * 64
    assert enc(dec(ok)) == ok
    with pytest.raises(BencodeError) as ei:
        dec(b"l" * 65 + b"e" * 65)
    assert (ei.value.offset, ei.value.reason) == (64, bc.E_DEPTH)
    nested_d = b"d1:a" * 65 + b"i0e" + b"e" * 65
    with pytest.raises(BencodeError) as ei:
        dec(nested_d)
    assert (ei.value.offset, ei.value.reason) == (64 * 4, bc.E_DEPTH)
    assert dec(b"llee", bc.DEFAULT_MAX_SIZE, 2) == [[]]
    with pytest.raises(BencodeError):
        dec(b"llee", bc.DEFAULT_MAX_SIZE, 1)
    # Deep input far past the limit fails fast at the limit, never on the C stack.
    with pytest.raises(BencodeError) as ei:
        dec(b"l" * 60000)
    assert ei.value.offset == 64


@pytest.mark.parametrize("codec", CODECS)
def test_size_limit(codec):
    dec, _ = codec
    edge = b"%d:" % 65530 + b"x" * 65530
    assert len(edge) == bc.DEFAULT_MAX_SIZE
    assert dec(edge) == b"x" * 65530
    data = b"%d:" % 65531 + b"x" * 65531
    with pytest.raises(BencodeError) as ei:
        dec(data)
    assert (ei.value.offset, ei.value.reason) == (bc.DEFAULT_MAX_SIZE, bc.E_TOO_BIG)
    assert dec(data, 70000) == b"x" * 65531
    with pytest.raises(BencodeError) as ei:
        dec(b"i1e", 2)
    assert ei.value.offset == 2


@pytest.mark.parametrize("codec", CODECS)
def test_bad_arguments_are_caller_errors(codec):
    dec, enc = codec
    for bad in ("4:spam", 4, None, 1.5):
        with pytest.raises(TypeError):
            dec(bad)
    with pytest.raises(ValueError):
        dec(b"i1e", 100, 0)
    with pytest.raises(ValueError):
        dec(b"i1e", -1, 64)
    with pytest.raises(ValueError):
        enc(1, 0)


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_types(codec):
    _, enc = codec
    assert enc(bytearray(b"ab")) == b"2:ab"
    assert enc(memoryview(b"abc")[1:]) == b"2:bc"
    assert enc((1, b"x", [])) == b"li1e1:xlee"
    assert enc({b"b": 1, b"a": {b"d": [], b"c": b""}}) == b"d1:ad1:c0:1:dlee1:bi1ee"
    assert enc({b"\xff": 0, b"\x00": 1, b"": 2, b"\x00\x00": 3}) == b"d0:i2e1:\x00i1e2:\x00\x00i3e1:\xffi0ee"
    import enum

    class Code(enum.IntEnum):
        X = 201

    assert enc([Code.X]) == b"li201ee"
    big = 10**255 * 9
    assert enc(big) == b"i9" + b"0" * 255 + b"e"
    assert enc(-(2**64)) == b"i-18446744073709551616e"


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("bad", ["text", True, False, 1.0, None, object(), {"k": 1}, {1: 2},
                                 [b"ok", "no"], {b"a": set()}, 10**256, -(10**256), 2**2000])
def test_encoder_rejections(codec, bad):
    _, enc = codec
    with pytest.raises(BencodeEncodeError) as ei:
        enc(bad)
    assert isinstance(ei.value, LocalProtocolError)


@pytest.mark.parametrize("codec", CODECS)
def test_encoder_depth_and_cycles(codec):
    _, enc = codec
    v: list = []
    for _ in range(63):
        v = [v]
    assert enc(v) == b"l" * 64 + b"e" * 64
    with pytest.raises(BencodeEncodeError):
        enc([v])
    cyc: list = []
    cyc.append(cyc)
    with pytest.raises(BencodeEncodeError):
        enc(cyc)
    d: dict = {}
    d[b"x"] = d
    with pytest.raises(BencodeEncodeError):
        enc(d)


@pytest.mark.parametrize("codec", CODECS)
def test_every_prefix_and_trailing_garbage(codec):
    dec, _ = codec
    msg = b"d1:rd2:id20:0123456789abcdefghij5:nodes26:" + bytes(range(26)) + b"e1:t2:aa1:y1:re"
    assert dec(msg)[b"t"] == b"aa"
    for i in range(len(msg)):
        with pytest.raises(BencodeError):
            dec(msg[:i])
    for tail in (b"\x00", b"e", b"i1e", msg):
        with pytest.raises(BencodeError) as ei:
            dec(msg + tail)
        assert ei.value.offset == len(msg)


# ---- Hypothesis ---------------------------------------------------------------------

values = st.recursive(
    st.integers(min_value=-(10**40), max_value=10**40) | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.binary(max_size=8), children, max_size=6),
    max_leaves=30,
)


@settings(max_examples=n_examples(1000), **PROPS)
@given(values)
def test_roundtrip_values(v):
    data = bc.encode(v)
    assert bc.decode(data) == v
    assert bc.py_encode(v) == data
    assert bc.py_decode(data) == v


# Seeds for mutation: valid encodings of KRPC-shaped and odd values (a fixed corpus, so
# that the cases go to mutating bytes rather than to generating trees).
SEEDS = [data for data, _ in VALID] + [
    b"d1:rd2:id20:0123456789abcdefghij5:nodes52:" + bytes(range(52)) + b"e1:t2:aa1:v4:QD011:y1:re",
    b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
    b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe"
    b"1:q13:announce_peer1:t2:aa1:y1:qe",
    b"lld1:ai-12e0:lei0eee1:xe",
    b"d1:ai1e1:bli2ei3ee1:cd1:dd1:ei4eeee",
]


def mutate(data: bytes, ops: bytes) -> bytes:
    """Apply byte edits encoded 3 bytes each: (kind, position, byte); the byte is biased
    towards bencode syntax.  Bytes are cheap for Hypothesis to generate and shrink."""
    b = bytearray(data)
    special = b"0123456789ield:-e"
    for i in range(0, len(ops) - 2, 3):
        kind, pos, byte = ops[i] % 3, ops[i + 1] * 3, ops[i + 2]
        if byte >= 128:
            byte = special[byte % len(special)]
        pos %= len(b) + 1
        if kind == 0 and pos < len(b):
            b[pos] = byte
        elif kind == 1:
            b.insert(pos, byte)
        elif pos < len(b):
            del b[pos]
    return bytes(b)


mutations = st.builds(mutate, st.sampled_from(SEEDS), st.binary(min_size=3, max_size=9))


def _assert_total(data: bytes) -> None:
    try:
        v = bc.decode(data)
    except BencodeError as e:
        assert 0 <= e.offset <= len(data)
    else:
        assert bc.encode(v) == data


@settings(max_examples=n_examples(30000), **PROPS)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_bencode_error(data):
    _assert_total(data)


@settings(max_examples=n_examples(12000), **PROPS)
@given(mutations)
def test_mutated_encodings_decode_or_bencode_error(data):
    _assert_total(data)


def _outcome(fn, data):
    try:
        return ("ok", fn(data))
    except BencodeError as e:
        return ("err", e.offset, e.reason)


@pytest.mark.skipif(not bc.KERNEL, reason="C kernel not built (pure build)")
@settings(max_examples=n_examples(12000), **PROPS)
@given(st.one_of(st.binary(max_size=80), mutations))
def test_kernel_matches_reference(data):
    from qudag_core import _bencode

    assert _outcome(_bencode.decode, data) == _outcome(bc.py_decode, data)


encodable_or_not = st.recursive(
    st.one_of(st.integers(min_value=-(10**300), max_value=10**300), st.binary(max_size=8),
              st.binary(max_size=8).map(bytearray), st.text(max_size=3), st.booleans(), st.none(),
              st.floats(allow_nan=False)),
    lambda c: st.lists(c, max_size=4) | st.lists(c, max_size=3).map(tuple)
    | st.dictionaries(st.binary(max_size=4) | st.text(max_size=2) | st.integers(0, 3), c, max_size=4),
    max_leaves=12,
)


def _enc_outcome(fn, v):
    try:
        return ("ok", fn(v))
    except BencodeEncodeError:
        return ("err",)


@pytest.mark.skipif(not bc.KERNEL, reason="C kernel not built (pure build)")
@settings(max_examples=n_examples(800), **PROPS)
@given(encodable_or_not)
def test_kernel_encoder_matches_reference(v):
    from qudag_core import _bencode

    assert _enc_outcome(_bencode.encode, v) == _enc_outcome(bc.py_encode, v)


@pytest.mark.skipif(not bc.KERNEL, reason="C kernel not built (pure build)")
def test_kernel_does_not_leak():
    """Allocated blocks stay flat over many decodes/encodes, failing ones included."""
    import gc
    import sys

    from qudag_core import _bencode

    inputs = [d for d, _ in VALID] + [d for d, _, _ in INVALID] + [b"l" * 100, b"d1:ai" + b"9" * 300 + b"ee"]
    values = [v for _, v in VALID] + [["x", 1], {b"a": [1.5]}, 10**400, {b"b": 1, b"a": 2}]

    def work():
        for _ in range(200):
            for d in inputs:
                try:
                    _bencode.decode(d)
                except BencodeError:
                    pass
            for v in values:
                try:
                    _bencode.encode(v)
                except BencodeEncodeError:
                    pass

    work()
    gc.collect()
    before = sys.getallocatedblocks()
    work()
    gc.collect()
    assert sys.getallocatedblocks() - before < 200
