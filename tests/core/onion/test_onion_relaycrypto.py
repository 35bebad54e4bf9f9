"""Relay crypto (docs/onion.md §2): kernel == fallback byte for byte, layered round trips,
and tagging resistance: every flipped bit at every hop is detected, and chains."""
from __future__ import annotations

import pytest

from qudag_core.onion import relaycrypto as R
from qudag_core.onion.cells import CELL_SIZE, HEADER_SIZE

SECRETS = [bytes([i]) * 32 for i in (1, 2, 3)]


def layer(secret, direction, pure=False):
    return R.new_layer(secret, direction, CELL_SIZE, HEADER_SIZE, pure=pure)


def test_repr_hides_keys():
    k = R.derive_layer_keys(SECRETS[0], R.FORWARD)
    assert SECRETS[0].hex() not in repr(k) and k.block_key.hex() not in repr(k)
    assert "cell_size=1024" in repr(layer(SECRETS[0], R.FORWARD))


def test_directions_and_hops_get_distinct_keys():
    ks = [R.derive_layer_keys(s, d) for s in SECRETS for d in (R.FORWARD, R.BACKWARD)]
    material = [k.block_key + k.hash_key + k.ctr_key + k.recog_key for k in ks]
    assert len(set(material)) == len(material)
    for k in ks:
        parts = [k.block_key, k.hash_key, k.ctr_key, k.recog_key]
        assert len(set(parts)) == 4


@pytest.mark.skipif(not R.HAVE_KERNEL, reason="C kernel not built (pure build)")
@pytest.mark.parametrize("n", [1, 3, 8, 9, 64, 65, 130])
def test_kernel_matches_fallback(n, rng):
    secret = rng(32)
    for direction in (R.FORWARD, R.BACKWARD):
        c_enc, p_enc = layer(secret, direction), layer(secret, direction, pure=True)
        c_dec, p_dec = layer(secret, direction), layer(secret, direction, pure=True)
        for originate in (True, False, True):
            a = bytearray(rng(n * CELL_SIZE))
            b = bytearray(a)
            c_enc.encrypt(a, originate=originate)
            p_enc.encrypt(b, originate=originate)
            assert a == b
            # and random (not layer-produced) input through decrypt
            junk = bytearray(rng(n * CELL_SIZE))
            junk2 = bytearray(junk)
            assert c_dec.decrypt(junk) == p_dec.decrypt(junk2)
            assert junk == junk2


@pytest.mark.skipif(not R.HAVE_KERNEL, reason="C kernel not built (pure build)")
def test_kernel_zero_copy_views_and_uninitialised(rng):
    """A memoryview slice is transformed in place (no copy); an object whose __init__ never
    ran refuses politely."""
    secret = rng(32)
    big = bytearray(rng(4 * CELL_SIZE))
    ref = bytearray(big[CELL_SIZE : 3 * CELL_SIZE])
    layer(secret, R.FORWARD).encrypt(memoryview(big)[CELL_SIZE : 3 * CELL_SIZE], originate=True)
    layer(secret, R.FORWARD, pure=True).encrypt(ref, originate=True)
    assert big[CELL_SIZE : 3 * CELL_SIZE] == ref
    bare = R._CRelayLayer.__new__(R._CRelayLayer)
    with pytest.raises(ValueError):
        bare.decrypt(bytearray(CELL_SIZE))
    with pytest.raises(ValueError):
        R._CRelayLayer(bytes(32), bytes(32), bytes(32), bytes(32), bytes(16), 70000, 0)


@pytest.mark.parametrize("pure", [False, True])
def test_buffer_checks(pure):
    lay = layer(SECRETS[0], R.FORWARD, pure=pure)
    with pytest.raises(ValueError):
        lay.decrypt(bytearray(CELL_SIZE + 1))
    with pytest.raises((TypeError, BufferError)):
        lay.decrypt(bytes(CELL_SIZE))
    assert lay.decrypt(bytearray()) == b""
    with pytest.raises(ValueError):
        R.PureRelayLayer(bytes(31), bytes(32), bytes(32), bytes(32), bytes(16), CELL_SIZE, 5)
    if R.HAVE_KERNEL:
        with pytest.raises(ValueError):
            R._CRelayLayer(bytes(32), bytes(32), bytes(32), bytes(32), bytes(15), CELL_SIZE, 5)
        with pytest.raises(ValueError):
            R._CRelayLayer(bytes(32), bytes(32), bytes(32), bytes(32), bytes(16), 20, 5)


class ThreeHops:
    """Client layers and relay layers for a 3-hop circuit, in-process."""

    def __init__(self, pure=False):
        self.cf = [layer(s, R.FORWARD, pure) for s in SECRETS]
        self.cb = [layer(s, R.BACKWARD, pure) for s in SECRETS]
        self.rf = [layer(s, R.FORWARD, pure) for s in SECRETS]
        self.rb = [layer(s, R.BACKWARD, pure) for s in SECRETS]

    def client_wrap(self, buf, target):
        self.cf[target].encrypt(buf, originate=True)
        for i in range(target - 1, -1, -1):
            self.cf[i].encrypt(buf)

    def client_unwrap(self, buf):
        """Peel until recognised: the hop index, or None (-> destroy)."""
        for i in range(3):
            if self.cb[i].decrypt(buf) == b"\x01":
                return i
        return None


def payload(i):
    return bytes(HEADER_SIZE) + bytes([i % 256]) * (CELL_SIZE - HEADER_SIZE)


@pytest.mark.parametrize("pure", [False, True])
def test_round_trips_both_directions(pure):
    c = ThreeHops(pure)
    for k in range(12):
        target = k % 3
        buf = bytearray(payload(k))
        c.client_wrap(buf, target)
        assert buf[HEADER_SIZE + 16 :] != payload(k)[HEADER_SIZE + 16 :]
        for hop in range(3):
            flags = c.rf[hop].decrypt(buf)
            if hop == target:
                assert flags == b"\x01"
                break
            assert flags == b"\x00"
        assert buf[HEADER_SIZE + 16 :] == payload(k)[HEADER_SIZE + 16 :]
        back = bytearray(payload(k + 100))
        c.rb[target].encrypt(back, originate=True)
        for hop in range(target - 1, -1, -1):
            c.rb[hop].encrypt(back)
        assert c.client_unwrap(back) == target
        assert back[HEADER_SIZE + 16 :] == payload(k + 100)[HEADER_SIZE + 16 :]


def _bits():
    n = (CELL_SIZE - HEADER_SIZE) * 8
    return range(n)


def _fresh(direction, hops, pure):
    return [layer(SECRETS[h], direction, pure) for h in hops]


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize("tamper_hop", [0, 1, 2])
def test_forward_tagging_every_bit(pure, tamper_hop):
    """Flip each bit of the relay payload as it enters hop ``tamper_hop``: no hop from there
    on recognises it, and a later good cell for the exit fails too (chaining)."""
    c = ThreeHops(pure)
    first = bytearray(payload(1) * 1)
    second = bytearray(payload(2))
    c.client_wrap(first, 2)
    c.client_wrap(second, 2)
    for hop in range(tamper_hop):  # unaffected hops before the tamper point
        c.rf[hop].decrypt(first)
        c.rf[hop].decrypt(second)
    detected = 0
    for bit in _bits():
        layers = _fresh(R.FORWARD, range(tamper_hop, 3), pure)
        bad = bytearray(first)
        bad[HEADER_SIZE + bit // 8] ^= 1 << (bit % 8)
        later = bytearray(second)
        for lay in layers:
            assert lay.decrypt(bad) == b"\x00"
            assert lay.decrypt(later) == b"\x00"
        detected += 1
    assert detected == len(_bits())
    # control: without the flip both cells arrive
    layers = _fresh(R.FORWARD, range(tamper_hop, 3), pure)
    ok1, ok2 = bytearray(first), bytearray(second)
    assert [lay.decrypt(ok1) for lay in layers][-1] == b"\x01"
    assert [lay.decrypt(ok2) for lay in layers][-1] == b"\x01"


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize("tamper_after", [2, 1, 0])
def test_backward_tagging_every_bit(pure, tamper_after):
    """The exit (hop 2) sends two cells back; flip each bit as it leaves hop ``tamper_after``:
    the client recognises neither the tampered cell nor the next one."""
    c = ThreeHops(pure)
    cells = [bytearray(payload(7)), bytearray(payload(8))]
    for buf in cells:
        c.rb[2].encrypt(buf, originate=True)
        for hop in range(1, tamper_after - 1, -1):
            c.rb[hop].encrypt(buf)
    # cells now sit at the output of hop `tamper_after`
    below = list(range(tamper_after - 1, -1, -1))
    for bit in _bits():
        relays = _fresh(R.BACKWARD, below, pure)
        client = _fresh(R.BACKWARD, range(3), pure)
        bad, later = bytearray(cells[0]), bytearray(cells[1])
        bad[HEADER_SIZE + bit // 8] ^= 1 << (bit % 8)
        for buf in (bad, later):
            for lay in relays:
                lay.encrypt(buf)
            assert [lay.decrypt(buf) for lay in client] == [b"\x00"] * 3
    relays = _fresh(R.BACKWARD, below, pure)
    client = _fresh(R.BACKWARD, range(3), pure)
    for buf in (bytearray(cells[0]), bytearray(cells[1])):
        for lay in relays:
            lay.encrypt(buf)
        assert [lay.decrypt(buf) for lay in client] == [b"\x00", b"\x00", b"\x01"]


@pytest.mark.parametrize("pure", [False, True])
def test_construction_equations(rng, pure):
    """docs/onion.md §2.2, recomputed from the definition with the AEAD API (AESGCM tag over
    empty plaintext = GMAC) and raw AES blocks, independently of both implementations."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    secret = rng(32)
    k = R.derive_layer_keys(secret, R.FORWARD)

    def aes(key, block):
        return Cipher(algorithms.AES(key), modes.ECB()).encryptor().update(block)

    def xor(a, b):
        return bytes(x ^ y for x, y in zip(a, b))

    lay = layer(secret, R.FORWARD, pure)
    s = k.chain
    for _ in range(3):
        plain = bytearray(rng(CELL_SIZE))
        cell = bytearray(plain)
        lay.encrypt(cell, originate=True)
        n = aes(k.recog_key, s)
        c = bytes(plain[HEADER_SIZE + 16 :])
        h = AESGCM(k.hash_key).encrypt(bytes(12), b"", s + c)  # = GHASH(S||C) ^ E(J0)
        t2 = xor(aes(k.block_key, xor(n, h)), h)
        assert bytes(cell[HEADER_SIZE : HEADER_SIZE + 16]) == t2
        ks = Cipher(algorithms.AES(k.ctr_key), modes.CTR(t2)).encryptor().update(bytes(len(c)))
        assert bytes(cell[HEADER_SIZE + 16 :]) == xor(c, ks)
        assert cell[:HEADER_SIZE] == plain[:HEADER_SIZE]  # the link header is not touched
        s = n  # the chain moves to the plaintext-side tag


@pytest.mark.parametrize("pure", [False, True])
@pytest.mark.parametrize(
    "tag",
    [
        bytes(8) + b"\xff" * 7 + b"\xf0",  # the counter carries into the high 64 bits mid-cell
        b"\xff" * 16,  # the 128-bit counter wraps to zero after the first block
        b"\x12" * 8 + b"\xff" * 8,
        bytes(15) + b"\xc1",  # the low byte reaches 0xff at the last block, no carry
        bytes(15) + b"\xc2",  # the low byte carries at the last block
    ],
)
def test_peel_ctr_counter_carries(tag, pure, rng):
    """The CTR iv of a peel is the incoming tag, so a hostile sender chooses it: counter
    blocks must carry like 128-bit big-endian CTR (cryptography's), checked against the
    §2.2 peel equations computed here from the definition."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if not pure and not R.HAVE_KERNEL:
        pytest.skip("C kernel not built (pure build)")
    secret = rng(32)
    k = R.derive_layer_keys(secret, R.FORWARD)
    cells = bytearray(rng(2 * CELL_SIZE))
    for i in range(2):
        cells[i * CELL_SIZE + HEADER_SIZE : i * CELL_SIZE + HEADER_SIZE + 16] = tag
    expect, s = bytearray(cells), k.chain
    for i in range(2):
        t0, c0 = i * CELL_SIZE + HEADER_SIZE, i * CELL_SIZE + HEADER_SIZE + 16
        c2 = bytes(expect[c0 : (i + 1) * CELL_SIZE])
        c = Cipher(algorithms.AES(k.ctr_key), modes.CTR(tag)).encryptor().update(c2)
        h = AESGCM(k.hash_key).encrypt(bytes(12), b"", s + c)
        x = Cipher(algorithms.AES(k.block_key), modes.ECB()).decryptor().update(
            bytes(a ^ b for a, b in zip(tag, h))
        )
        t = bytes(a ^ b for a, b in zip(x, h))
        expect[t0:c0], expect[c0 : (i + 1) * CELL_SIZE] = t, c
        s = t
    assert layer(secret, R.FORWARD, pure).decrypt(cells) == b"\x00\x00"
    assert cells == expect
