"""Strict, canonical bencode (BEP 3 "bencoding"), as KRPC (BEP 5) carries it.

``decode(data)`` accepts exactly the canonical encoding of a value and nothing else, so
``encode(decode(b)) == b`` for every accepted ``b``.  That makes the verbatim-bytes rule of
BEP 44 ("use the verbatim bencoded representation as it appeared in the message") hold by
construction: re-encoding a decoded ``v`` gives the bytes that were signed.

Rejected, each with a ``BencodeError`` carrying the byte ``offset``:

* leading zeros (``i03e``, ``03:abc``), ``i-0e``, ``ie``, ``i-e``;
* dictionary keys that are not byte strings, out of raw byte order, or repeated;
* a string length that points past the end of the input (checked while the length digits
  are read, so nothing is allocated for it);
* nesting deeper than ``max_depth`` containers (default ``MAX_DEPTH`` = 64);
* inputs longer than ``max_size`` bytes (default ``DEFAULT_MAX_SIZE`` = 64 KiB: the
  largest UDP payload is 65,507 bytes, so any datagram fits, and the largest qudag channel
  record, ~6.5 KiB, fits ten times over; a caller that knows its transport passes less);
* integers of more than ``MAX_INT_DIGITS`` (256) decimal digits, i.e. beyond ~850 bits.
  BEP 3 sets no bound, but decoding an unbounded decimal is quadratic and KRPC needs no
  more than 64 bits; 256 digits keeps every Python ``int`` anyone would bencode;
* trailing bytes after the value and any byte that starts no value.

Types: ``int`` <-> integer, ``bytes`` <-> string, ``list`` <-> list, ``dict[bytes, ...]``
<-> dictionary.  The encoder also takes ``bytearray``/``memoryview`` (as strings) and
``tuple`` (as a list).  It refuses ``str``: KRPC strings are binary (ids, tokens, compact
addresses), and an implicit UTF-8 step would hide a missing ``.encode()``; it refuses
``bool`` too, which bencode cannot tell from an integer.

The hot path is the C kernel ``qudag_core._bencode`` (csrc/bencode.c); ``py_decode`` and
``py_encode`` below are the reference the kernel is tested against: same values, same
error offsets and messages.  The design decision a reader would ask about: the decoder
errs at the *first* violation in reading order, so the offset is well defined.
"""
from __future__ import annotations

from typing import Any, Union

from qudag_core.krpc.errors import BencodeEncodeError, BencodeError

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_DEPTH",
    "MAX_DEPTH_LIMIT",
    "MAX_INT_DIGITS",
    "BencodeError",
    "BencodeEncodeError",
    "decode",
    "encode",
    "py_decode",
    "py_encode",
    "KERNEL",
]

Bencodable = Union[int, bytes, bytearray, memoryview, list, tuple, dict]

DEFAULT_MAX_SIZE = 65536
MAX_DEPTH = 64
MAX_DEPTH_LIMIT = 512  # hard cap on max_depth: both codecs recurse on the C stack
MAX_INT_DIGITS = 256
_MAX_INT_BITS = 900  # > 256 digits for sure (10**256 has 851 bits); cheap pre-check

# Error messages, shared verbatim with csrc/bencode.c.
E_END = "unexpected end of input"
E_TYPE = "invalid value type byte"
E_INT = "invalid integer"
E_NEG_ZERO = "negative zero"
E_INT_LEADING_ZERO = "leading zero in integer"
E_INT_LONG = "integer too long"
E_INT_END = "expected 'e' after integer"
E_LEN_LEADING_ZERO = "leading zero in string length"
E_LEN_PAST_END = "declared length past end of input"
E_COLON = "expected ':' after string length"
E_KEY_TYPE = "dictionary key is not a byte string"
E_KEY_ORDER = "dictionary keys out of order"
E_KEY_DUP = "duplicate dictionary key"
E_DEPTH = "nesting too deep"
E_TRAILING = "trailing bytes after value"
E_TOO_BIG = "input larger than the size limit"


def _check_limits(max_size: int, max_depth: int) -> None:
    if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be in 1..{MAX_DEPTH_LIMIT}")
    if max_size < 0:
        raise ValueError("max_size must be >= 0")


def _str(buf: bytes, p: int, n: int) -> tuple[bytes, int]:
    # buf[p] is a digit.
    if buf[p] == 0x30 and p + 1 < n and 0x30 <= buf[p + 1] <= 0x39:
        raise BencodeError(E_LEN_LEADING_ZERO, offset=p)
    length = 0
    r = p
    while r < n:
        c = buf[r]
        if c < 0x30 or c > 0x39:
            break
        length = length * 10 + (c - 0x30)
        r += 1
        if length > n:
            raise BencodeError(E_LEN_PAST_END, offset=p)
    if r >= n:
        raise BencodeError(E_END, offset=n)
    if buf[r] != 0x3A:
        raise BencodeError(E_COLON, offset=r)
    s = r + 1
    if length > n - s:
        raise BencodeError(E_LEN_PAST_END, offset=p)
    return buf[s:s + length], s + length


def _int(buf: bytes, p: int, n: int) -> tuple[int, int]:
    # buf[p] == 'i'
    q = p + 1
    neg = False
    if q < n and buf[q] == 0x2D:
        neg = True
        q += 1
    if q >= n:
        raise BencodeError(E_END, offset=n)
    c = buf[q]
    if c < 0x30 or c > 0x39:
        raise BencodeError(E_INT, offset=q)
    if c == 0x30:
        if neg:
            raise BencodeError(E_NEG_ZERO, offset=q)
        if q + 1 < n and 0x30 <= buf[q + 1] <= 0x39:
            raise BencodeError(E_INT_LEADING_ZERO, offset=q)
    r = q
    while r < n:
        c = buf[r]
        if c < 0x30 or c > 0x39:
            break
        if r - q >= MAX_INT_DIGITS:
            raise BencodeError(E_INT_LONG, offset=r)
        r += 1
    if r >= n:
        raise BencodeError(E_END, offset=n)
    if buf[r] != 0x65:
        raise BencodeError(E_INT_END, offset=r)
    v = int(buf[q:r])
    return (-v if neg else v), r + 1


def _value(buf: bytes, p: int, n: int, depth: int, max_depth: int) -> tuple[Any, int]:
    if p >= n:
        raise BencodeError(E_END, offset=n)
    c = buf[p]
    if 0x30 <= c <= 0x39:
        return _str(buf, p, n)
    if c == 0x69:  # i
        return _int(buf, p, n)
    if c == 0x64:  # d
        if depth >= max_depth:
            raise BencodeError(E_DEPTH, offset=p)
        d: dict[bytes, Any] = {}
        prev: bytes | None = None
        p += 1
        while True:
            if p >= n:
                raise BencodeError(E_END, offset=n)
            c = buf[p]
            if c == 0x65:
                return d, p + 1
            if c < 0x30 or c > 0x39:
                raise BencodeError(E_KEY_TYPE, offset=p)
            k, kp = _str(buf, p, n)
            if prev is not None and k <= prev:
                raise BencodeError(E_KEY_DUP if k == prev else E_KEY_ORDER, offset=p)
            v, p = _value(buf, kp, n, depth + 1, max_depth)
            d[k] = v
            prev = k
    if c == 0x6C:  # l
        if depth >= max_depth:
            raise BencodeError(E_DEPTH, offset=p)
        lst: list[Any] = []
        p += 1
        while True:
            if p >= n:
                raise BencodeError(E_END, offset=n)
            if buf[p] == 0x65:
                return lst, p + 1
            v, p = _value(buf, p, n, depth + 1, max_depth)
            lst.append(v)
    raise BencodeError(E_TYPE, offset=p)


def py_decode(data: bytes, max_size: int = DEFAULT_MAX_SIZE, max_depth: int = MAX_DEPTH) -> Any:
    """Reference decoder (pure Python); see the module docstring for what it rejects."""
    _check_limits(max_size, max_depth)
    mv = memoryview(data)  # TypeError for str and other non-buffers: caller misuse
    n = mv.nbytes
    if n > max_size:
        raise BencodeError(E_TOO_BIG, offset=max_size)
    buf = mv.tobytes()
    v, p = _value(buf, 0, n, 0, max_depth)
    if p != n:
        raise BencodeError(E_TRAILING, offset=p)
    return v


def _enc(obj: Any, out: list, depth: int, max_depth: int) -> None:
    t = type(obj)
    if t is bytes:
        out.append(b"%d:" % len(obj))
        out.append(obj)
    elif t is dict:
        if depth >= max_depth:
            raise BencodeEncodeError("nesting too deep")
        out.append(b"d")
        for k in obj:
            if not isinstance(k, bytes):
                raise BencodeEncodeError(f"dictionary key must be bytes, not {type(k).__name__}")
        for k in sorted(obj):
            out.append(b"%d:" % len(k))
            out.append(bytes(k))
            _enc(obj[k], out, depth + 1, max_depth)
        out.append(b"e")
    elif t is int:
        _enc_int(obj, out)
    elif t is list or t is tuple:
        if depth >= max_depth:
            raise BencodeEncodeError("nesting too deep")
        out.append(b"l")
        for item in obj:
            _enc(item, out, depth + 1, max_depth)
        out.append(b"e")
    elif isinstance(obj, bool):
        raise BencodeEncodeError("bool has no bencode form; use 0 or 1")
    elif isinstance(obj, int):
        _enc_int(obj, out)
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        b = bytes(obj)
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(obj, dict):
        _enc(dict(obj), out, depth, max_depth)
    elif isinstance(obj, (list, tuple)):
        _enc(list(obj), out, depth, max_depth)
    elif isinstance(obj, str):
        raise BencodeEncodeError("str has no bencode form; encode it to bytes first")
    else:
        raise BencodeEncodeError(f"cannot bencode {type(obj).__name__}")


def _enc_int(v: int, out: list) -> None:
    v = int(v)
    if v.bit_length() > _MAX_INT_BITS:
        raise BencodeEncodeError("integer too long")
    s = b"%d" % v
    if len(s) - (1 if v < 0 else 0) > MAX_INT_DIGITS:
        raise BencodeEncodeError("integer too long")
    out.append(b"i")
    out.append(s)
    out.append(b"e")


def py_encode(obj: Bencodable, max_depth: int = MAX_DEPTH) -> bytes:
    """Reference encoder (pure Python): canonical bencode, dictionary keys sorted bytewise."""
    if not 1 <= max_depth <= MAX_DEPTH_LIMIT:
        raise ValueError(f"max_depth must be in 1..{MAX_DEPTH_LIMIT}")
    out: list = []
    _enc(obj, out, 0, max_depth)
    return b"".join(out)


try:
    from qudag_core import _bencode as _kernel
except ImportError:  # pure build (QUDAG_NO_EXTENSIONS=1) or no compiler
    _kernel = None

KERNEL: bool = _kernel is not None
"""Whether the C kernel serves ``decode``/``encode``."""

if _kernel is not None:
    # Bound directly (no Python wrapper frame): the kernel takes the same arguments and
    # defaults as py_decode / py_encode.
    decode = _kernel.decode
    encode = _kernel.encode
else:
    decode = py_decode
    encode = py_encode
