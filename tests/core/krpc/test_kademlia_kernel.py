"""The XOR-selection kernel ``qudag_core._kademlia.closest_indices`` (csrc/kademlia.c)
against its pure reference ``routing.closest_indices_py`` and a plain sort (BEP 5
"Routing Table": the nodes nearest a target by XOR distance)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from qudag_core.krpc.routing import closest_indices_py

try:
    from qudag_core._kademlia import closest_indices as kernel
except ImportError:  # pure build
    kernel = None

IMPLS = [pytest.param(closest_indices_py, id="py"),
         pytest.param(kernel, id="c", marks=pytest.mark.skipif(kernel is None, reason="C kernel not built (pure build)"))]

ids_lists = st.lists(st.binary(min_size=20, max_size=20), max_size=80)


def by_sort(ids: list[bytes], target: bytes, count: int) -> list[int]:
    t = int.from_bytes(target, "big")
    return sorted(range(len(ids)), key=lambda i: int.from_bytes(ids[i], "big") ^ t)[:max(0, count)]


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=400, deadline=None)
@given(ids=ids_lists, target=st.binary(min_size=20, max_size=20), count=st.integers(-2, 100),
       dup=st.booleans())
def test_matches_a_plain_sort(impl, ids, target, count, dup):
    if dup and ids:
        ids = ids + ids[: len(ids) // 2]  # equal ids tie-break by index, as a stable sort
    assert impl(b"".join(ids), target, count) == by_sort(ids, target, count)


@pytest.mark.parametrize("impl", IMPLS)
def test_known_answer(impl):
    # ids 0x00.., 0x80.., 0x01.., 0xff..: from target 0x81.. the XOR distances are
    # 0x81, 0x01, 0x80, 0x7e (first byte), so nearest first: 1, 3, 2, 0
    ids = [bytes([b]) + bytes(19) for b in (0x00, 0x80, 0x01, 0xFF)]
    target = bytes([0x81]) + bytes(19)
    assert impl(b"".join(ids), target, 4) == [1, 3, 2, 0]
    assert impl(b"".join(ids), target, 2) == [1, 3]
    # the last byte decides between ids equal up to byte 19
    near = [bytes(19) + bytes([x]) for x in (5, 4, 7)]
    assert impl(b"".join(near), bytes(20), 3) == [1, 0, 2]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("ids,target", [(b"\x00" * 19, b"\x00" * 20), (b"\x00" * 20, b"\x00" * 19),
                                        (b"\x00" * 41, b"\x00" * 20)])
def test_malformed_input_is_a_value_error(impl, ids, target):
    with pytest.raises(ValueError):
        impl(ids, target, 1)


@pytest.mark.skipif(kernel is None, reason="C kernel not built (pure build)")
def test_kernel_takes_buffers_and_large_tables():
    import os

    ids = bytearray(os.urandom(20 * 3000))
    target = os.urandom(20)
    want = by_sort([bytes(ids[i:i + 20]) for i in range(0, len(ids), 20)], target, 20)
    assert kernel(ids, target, 20) == want
    assert kernel(memoryview(ids), target, 20) == want
    assert kernel(b"", target, 5) == []
