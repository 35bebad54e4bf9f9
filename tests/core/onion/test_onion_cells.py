"""Cells (docs/onion.md §1): fixed size, open enums, restricted per-state parsers."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qudag_core.errors import RemoteProtocolError
from qudag_core.onion import cells as C


def test_sizes_add_up():
    assert C.CELL_SIZE == 1024
    assert C.HEADER_SIZE + C.PAYLOAD_SIZE == C.CELL_SIZE
    assert C.TAG_SIZE + C.RELAY_HEADER_SIZE + C.RELAY_DATA_MAX == C.PAYLOAD_SIZE


def test_known_layout():
    cell = C.build_cell(0x01020304, C.CellCommand.DESTROY, b"\x07")
    assert len(cell) == C.CELL_SIZE
    assert bytes(cell[:6]) == bytes([1, 2, 3, 4, 4, 7])
    assert bytes(cell[6:]) == bytes(C.CELL_SIZE - 6)
    p = C.build_relay_payload(C.RelayCommand.DATA, 0x0102, b"hi")
    assert bytes(p[:16]) == bytes(16)
    assert bytes(p[16:23]) == bytes([1, 1, 2, 0, 2]) + b"hi"


@given(circ=st.integers(0, 2**32 - 1), cmd=st.integers(0, 255), payload=st.binary(max_size=C.PAYLOAD_SIZE))
def test_cell_round_trip_and_open_enum(circ, cmd, payload):
    raw = bytes(C.build_cell(circ, cmd, payload))
    cell = C.Cell(raw)
    assert cell.circ_id == circ
    assert bytes(cell.payload[: len(payload)]) == payload
    if cmd in set(int(c) for c in C.CellCommand):
        assert cell.command == C.CellCommand(cmd)
    else:
        assert cell.command == C.Unrecognized(cmd)
    assert "payload" not in repr(cell)


@given(cmd=st.integers(0, 255), stream=st.integers(0, 0xFFFF), data=st.binary(max_size=C.RELAY_DATA_MAX))
def test_relay_payload_round_trip(cmd, stream, data):
    msg = C.parse_relay_payload(C.build_relay_payload(cmd, stream, data, pad=lambda n: b"\xaa" * n))
    assert msg.stream_id == stream and msg.data == data
    assert msg.command == C.relay_command_of(cmd)


AWAIT_CREATED = frozenset({C.CellCommand.CREATED, C.CellCommand.DESTROY})


@pytest.mark.parametrize("cmd", list(C.CellCommand))
def test_restricted_parser_awaiting_created(cmd):
    raw = C.build_cell(5, cmd)
    if cmd in AWAIT_CREATED:
        assert C.parse_cell(raw, AWAIT_CREATED).command == cmd
    else:
        with pytest.raises(C.UnexpectedCell):
            C.parse_cell(raw, AWAIT_CREATED)


def test_unrecognized_only_where_tolerated():
    raw = C.build_cell(5, 200)
    with pytest.raises(C.UnexpectedCell):
        C.parse_cell(raw, AWAIT_CREATED)
    assert C.parse_cell(raw, AWAIT_CREATED | {C.Unrecognized}).command == C.Unrecognized(200)


@given(st.binary(max_size=2 * C.CELL_SIZE), st.frozensets(st.sampled_from(list(C.CellCommand))))
def test_any_bytes_give_cell_or_declared_error(data, allowed):
    try:
        cell = C.parse_cell(data, allowed)
    except C.CellError as e:
        assert isinstance(e, RemoteProtocolError)
    else:
        assert cell.command in allowed


@given(st.binary(min_size=C.PAYLOAD_SIZE, max_size=C.PAYLOAD_SIZE))
def test_relay_parser_any_payload(payload):
    try:
        msg = C.parse_relay_payload(payload)
    except C.MalformedCell:
        assert int.from_bytes(payload[19:21], "big") > C.RELAY_DATA_MAX
    else:
        assert len(msg.data) <= C.RELAY_DATA_MAX


def _cells(n):
    return [bytes(C.build_cell(i, C.CellCommand.RELAY, bytes([i]) * 10)) for i in range(n)]


@pytest.mark.parametrize("mode", ["whole", "bytewise", "garbage"])
def test_reader_feeds(mode):
    cells = _cells(3)
    stream = b"".join(cells)
    r = C.CellReader()
    got = []
    if mode == "whole":
        r.feed(stream)
    elif mode == "bytewise":
        for i in range(len(stream)):
            r.feed(stream[i : i + 1])
            c = r.next_cell()
            if c is not None:
                got.append(c)
    else:
        r.feed(stream + b"\x01\x02\x03")
    while (c := r.next_cell()) is not None:
        got.append(c)
    assert got == cells
    assert r.buffered == (3 if mode == "garbage" else 0)


def test_reader_cap():
    r = C.CellReader(max_buffered=2 * C.CELL_SIZE)
    r.feed(bytes(2 * C.CELL_SIZE))
    with pytest.raises(C.MalformedCell):
        r.feed(b"x")


def test_wrong_size_cells_rejected():
    for n in (0, 1, C.CELL_SIZE - 1, C.CELL_SIZE + 1):
        with pytest.raises(C.MalformedCell):
            C.Cell(bytes(n))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3000), max_size=40), st.integers(1, 4096))
def test_padding_pool_hands_out_each_random_byte_once(sizes, block):
    """Every request gets exactly n bytes, the next unused ones of the current rng block;
    a new block is drawn only when the rest is too short, and no byte is handed out twice."""
    import hashlib

    blocks: list[bytes] = []

    def rng(n):
        blocks.append(hashlib.shake_256(len(blocks).to_bytes(4, "big")).digest(n))
        return blocks[-1]

    pool = C.PaddingPool(rng, block=block)
    cur, pos = b"", 0
    for n in sizes:
        before = len(blocks)
        got = pool(n)
        if len(blocks) > before:
            assert len(blocks) == before + 1 and n > len(cur) - pos
            cur, pos = blocks[-1], 0
            assert len(cur) == max(block, n)
        assert got == cur[pos : pos + n]
        pos += n
    assert "random" in repr(pool) and "PaddingPool" in repr(pool)
