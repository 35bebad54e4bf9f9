"""Relay cell crypto: one onion layer per hop and direction, tagging-resistant.

Implements the construction of docs/onion.md §2 (after Tor proposal 359, Counter Galois
Onion): a 16-byte tag T is enciphered with an LRW tweakable block cipher whose tweak is
GHASH(chain || rest-of-cell), the rest is AES-CTR under the new tag, and the plaintext-side
tag chains into the next cell's tweak.  A modified cell decrypts to a random tag (so it is
not recognised where it must be) and poisons the chain, so every later cell fails too.

The decision a reader asks about: the batch kernel ``qudag_core._relay.RelayLayer`` (C,
libcrypto EVP) is used when importable; ``PureRelayLayer`` is the byte-identical fallback
on ``cryptography`` primitives.  Both take a writable buffer of n x cell_size bytes and
transform the bytes ``[offset, cell_size)`` of each cell in place.

Keys: ``derive_layer_keys(secret, direction)`` expands the hop's handshake secret with
BLAKE3 ``derive_key`` under a context string per direction, giving four independent
AES-256 keys and the initial chain value.
"""
from __future__ import annotations

import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from qudag_core.crypto import derive_key

try:
    from qudag_core._relay import RelayLayer as _CRelayLayer
except ImportError:  # pure build, or no compiler
    _CRelayLayer = None

__all__ = [
    "FORWARD",
    "BACKWARD",
    "HAVE_KERNEL",
    "LayerKeys",
    "derive_layer_keys",
    "PureRelayLayer",
    "new_layer",
]

FORWARD = "forward"
BACKWARD = "backward"
HAVE_KERNEL: bool = _CRelayLayer is not None

_CONTEXT = {
    FORWARD: "qudag 2026 onion relay layer forward keys",
    BACKWARD: "qudag 2026 onion relay layer backward keys",
}
_ZERO_IV12 = bytes(12)


class LayerKeys:
    """Four AES-256 keys and the initial 16-byte chain value for one layer."""

    __slots__ = ("block_key", "hash_key", "ctr_key", "recog_key", "chain")

    def __init__(self, material: bytes) -> None:
        if len(material) != 144:
            raise ValueError("layer key material must be 144 bytes")
        self.block_key = material[0:32]
        self.hash_key = material[32:64]
        self.ctr_key = material[64:96]
        self.recog_key = material[96:128]
        self.chain = material[128:144]

    def __repr__(self) -> str:
        return "LayerKeys(<secret>)"


def derive_layer_keys(secret: bytes, direction: str) -> LayerKeys:
    """Per-hop, per-direction keys from the hop's 32-byte handshake secret."""
    return LayerKeys(derive_key(_CONTEXT[direction], secret, 144))


def _xor16(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(16, "big")


class PureRelayLayer:
    """Pure-Python layer with exactly the kernel's bytes (see csrc/relay.c header).

    Per cell: GMAC through one ``AESGCM.encrypt`` call on an empty plaintext (its tag), and
    CTR through one reused context re-pointed with ``reset_nonce``: creating ``Cipher``
    objects per cell cost ~4 us each, more than the AES work."""

    __slots__ = ("_enc", "_dec", "_recog", "_gmac", "_ctr_ctx", "_cell", "_off", "_chain", "_expect")

    def __init__(self, block_key, hash_key, ctr_key, recog_key, chain, cell_size, offset) -> None:
        for k in (block_key, hash_key, ctr_key, recog_key):
            if len(k) != 32:
                raise ValueError("relay layer keys must be 32 bytes each")
        if len(chain) != 16:
            raise ValueError("chain value must be 16 bytes")
        if offset < 0 or cell_size <= 0 or not 17 <= cell_size - offset <= 65536:
            raise ValueError("bad cell_size/offset")
        blk = algorithms.AES(bytes(block_key))
        self._enc = Cipher(blk, modes.ECB()).encryptor()
        self._dec = Cipher(blk, modes.ECB()).decryptor()
        self._recog = Cipher(algorithms.AES(bytes(recog_key)), modes.ECB()).encryptor()
        self._gmac = AESGCM(bytes(hash_key))
        self._ctr_ctx = Cipher(algorithms.AES(bytes(ctr_key)), modes.CTR(bytes(16))).encryptor()
        self._cell = cell_size
        self._off = offset
        self._chain = bytes(chain)
        self._expect = self._recog.update(self._chain)

    def __repr__(self) -> str:
        return f"<PureRelayLayer cell_size={self._cell} offset={self._off}>"

    def _h(self, c) -> bytes:
        # GMAC_Kh(S || C) = the GCM tag over an empty plaintext with S || C as AAD
        return self._gmac.encrypt(_ZERO_IV12, b"", self._chain + bytes(c))

    def _ctr(self, iv: bytes, c) -> bytes:
        # a fresh keystream from counter block iv (128-bit big-endian, as the kernel's)
        self._ctr_ctx.reset_nonce(iv)
        return self._ctr_ctx.update(c)

    def _cells(self, buf):
        mv = memoryview(buf).cast("B")
        if mv.readonly:
            raise TypeError("buffer must be writable")
        if len(mv) % self._cell:
            raise ValueError("buffer length is not a multiple of cell_size")
        return mv, len(mv) // self._cell

    def encrypt(self, buf, originate: bool = False) -> None:
        mv, n = self._cells(buf)
        for i in range(n):
            t0 = i * self._cell + self._off
            c0 = t0 + 16
            end = (i + 1) * self._cell
            t = self._expect if originate else bytes(mv[t0:c0])
            h = self._h(mv[c0:end])
            self._chain = t
            t2 = _xor16(self._enc.update(_xor16(t, h)), h)
            mv[t0:c0] = t2
            mv[c0:end] = self._ctr(t2, mv[c0:end])
            if originate:
                self._expect = self._recog.update(t)
        if n and not originate:
            self._expect = self._recog.update(self._chain)

    def decrypt(self, buf) -> bytes:
        mv, n = self._cells(buf)
        flags = bytearray(n)
        for i in range(n):
            t0 = i * self._cell + self._off
            c0 = t0 + 16
            end = (i + 1) * self._cell
            t2 = bytes(mv[t0:c0])
            mv[c0:end] = self._ctr(t2, mv[c0:end])
            h = self._h(mv[c0:end])
            t = _xor16(self._dec.update(_xor16(t2, h)), h)
            mv[t0:c0] = t
            flags[i] = 1 if hmac.compare_digest(t, self._expect) else 0
            self._chain = t
            self._expect = self._recog.update(t)
        return bytes(flags)


def new_layer(secret: bytes, direction: str, cell_size: int, offset: int, *, pure: bool = False):
    """A layer for one hop and direction: the C kernel if available (unless ``pure``)."""
    k = derive_layer_keys(secret, direction)
    cls = PureRelayLayer if (pure or _CRelayLayer is None) else _CRelayLayer
    return cls(k.block_key, k.hash_key, k.ctr_key, k.recog_key, k.chain, cell_size, offset)
