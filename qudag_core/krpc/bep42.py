"""BEP 42 "DHT Security extension": node ids tied to the node's external IP.

``crc32c((ip & 0x030f3fff) | (r << 29))`` for IPv4 (``ip`` as a big-endian 32-bit word),
``crc32c((ip & 0x0103070f1f3f7fff) | (r << 61))`` for IPv6 (``ip`` = the high 64 bits);
the first 21 bits of the node id must equal the first 21 bits of that CRC, and the low 3
bits of the id's last byte are ``r`` (BEP 42 "Node ID restriction").  Local addresses are
exempt (BEP 42 "Enforcement"): 10/8, 172.16/12, 192.168/16, 169.254/16, 127/8, and, as
the IPv6 equivalents, ::1, fe80::/10 (link-local), fc00::/7 (unique local) and IPv4-mapped
forms of the IPv4 blocks.

The design decision: CRC32C (Castagnoli, reflected polynomial 0x82F63B78) is written here,
table-driven, rather than in the C kernel: it runs over 4 or 8 bytes once per node id
checked, which costs well under a microsecond compiled, and it is a checksum, not a
cipher.  Randomness comes in as ``rng(n) -> bytes`` like every qudag core.
"""
from __future__ import annotations

import ipaddress
from typing import Callable, Union

__all__ = [
    "crc32c",
    "node_id_prefix",
    "node_id_for_ip",
    "generate_node_id",
    "is_exempt",
    "is_valid_node_id",
]

IPLike = Union[str, bytes, ipaddress.IPv4Address, ipaddress.IPv6Address]


def _make_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE: list[int] = _make_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC32C (Castagnoli) of ``data``, continuing from ``crc`` (as zlib.crc32 does)."""
    c = crc ^ 0xFFFFFFFF
    table = _TABLE
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def _packed(ip: IPLike) -> bytes:
    """4 or 16 bytes; an IPv4-mapped IPv6 address (::ffff:a.b.c.d) is its IPv4 form, the
    address the node really has on the wire."""
    if isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        raw = ip.packed
    elif isinstance(ip, str):
        raw = ipaddress.ip_address(ip).packed
    else:
        raw = bytes(ip)
        if len(raw) not in (4, 16):
            raise ValueError(f"packed IP address must be 4 or 16 bytes, got {len(raw)}")
    if len(raw) == 16 and raw[:12] == b"\x00" * 10 + b"\xff\xff":
        raw = raw[12:]
    return raw


def node_id_prefix(ip: IPLike, r: int) -> int:
    """The 32-bit CRC whose top 21 bits a node id for ``ip`` with random ``r`` must carry."""
    if not 0 <= r <= 7:
        raise ValueError("r must be in 0..7")
    raw = _packed(ip)
    if len(raw) == 4:
        word = (int.from_bytes(raw, "big") & 0x030F3FFF) | (r << 29)
        return crc32c(word.to_bytes(4, "big"))
    word = (int.from_bytes(raw[:8], "big") & 0x0103070F1F3F7FFF) | (r << 61)
    return crc32c(word.to_bytes(8, "big"))


def node_id_for_ip(ip: IPLike, rand: int, filler: bytes) -> bytes:
    """The deterministic form: ``rand`` is the id's last byte (its low 3 bits are ``r``),
    ``filler`` gives the 3 free bits of byte 2 (its first byte's low bits) and bytes 3..18."""
    if not 0 <= rand <= 255:
        raise ValueError("rand must be a byte")
    filler = bytes(filler)
    if len(filler) != 17:
        raise ValueError("filler must be 17 bytes")
    crc = node_id_prefix(ip, rand & 7)
    return bytes(
        [(crc >> 24) & 0xFF, (crc >> 16) & 0xFF, ((crc >> 8) & 0xF8) | (filler[0] & 7)]
    ) + filler[1:] + bytes([rand])


def generate_node_id(ip: IPLike, rng: Callable[[int], bytes]) -> bytes:
    """A fresh BEP 42-conforming node id for external address ``ip``."""
    r = rng(18)
    return node_id_for_ip(ip, r[0], r[1:])


_EXEMPT_V4 = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "127.0.0.0/8")
)
_EXEMPT_V6 = tuple(ipaddress.ip_network(n) for n in ("::1/128", "fe80::/10", "fc00::/7"))


def is_exempt(ip: IPLike) -> bool:
    """Whether ``ip`` is a local address BEP 42 exempts from the node-id check."""
    addr = ipaddress.ip_address(_packed(ip))
    nets = _EXEMPT_V6 if isinstance(addr, ipaddress.IPv6Address) else _EXEMPT_V4
    return any(addr in net for net in nets)


def is_valid_node_id(node_id: bytes, ip: IPLike) -> bool:
    """Whether ``node_id`` satisfies BEP 42 for ``ip`` (always true for exempt addresses)."""
    node_id = bytes(node_id)
    if len(node_id) != 20:
        return False
    if is_exempt(ip):
        return True
    crc = node_id_prefix(ip, node_id[19] & 7)
    return (
        node_id[0] == (crc >> 24) & 0xFF
        and node_id[1] == (crc >> 16) & 0xFF
        and (node_id[2] & 0xF8) == ((crc >> 8) & 0xF8)
    )
