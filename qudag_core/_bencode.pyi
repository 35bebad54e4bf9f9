"""Strict canonical bencode kernel (csrc/bencode.c); contract in qudag_core.krpc.bencode."""
from typing import Any

MAX_DEPTH: int
MAX_DEPTH_LIMIT: int
DEFAULT_MAX_SIZE: int
MAX_INT_DIGITS: int

def decode(data: bytes | bytearray | memoryview, max_size: int = 65536, max_depth: int = 64) -> Any: ...
def encode(obj: Any, max_depth: int = 64) -> bytes: ...
