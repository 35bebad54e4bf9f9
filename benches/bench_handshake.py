"""Full handshakes per second, both sides in one process, against Noise XX.

qudag: ``InitiatorHandshake`` + ``ResponderHandshake`` (framing, certificate cache,
replay filter, key confirmation: the whole stream API), static keys and certificates
preloaded and cached as in steady state.  Peer: the ``noiseprotocol`` package's
``Noise_XX_25519_ChaChaPoly_BLAKE2s`` full handshake (three messages, both sides), with
its static key pairs also preloaded.  Goal: qudag >= 0.8x the Noise rate.

    PYTHONPATH=. python -m pytest benches/bench_handshake.py --benchmark-only -q -s

``test_ratio`` interleaves short batches of both and compares the best batch of each,
which is robust to other load on a shared machine; it prints the ratio.
"""
from __future__ import annotations

import os
import time

import pytest

noise_connection = pytest.importorskip("noise.connection")
from noise.backends.default.keypairs import KeyPair25519  # noqa: E402

from qudag_core.handshake import HandshakeComplete, InitiatorHandshake, ResponderContext  # noqa: E402
from qudag_core.identity import CertificateCache, Identity  # noqa: E402

NOW = 1_800_000_000.0
_NOISE_NAME = b"Noise_XX_25519_ChaChaPoly_BLAKE2s"


def _noise_setup(preloaded: bool = True):
    """``preloaded``: static key pairs parsed once and reused (steady state; reaches
    into ``noise_protocol.keypairs`` because the package has no public API for it).
    Otherwise the documented ``set_keypair_from_private_bytes`` per connection, which
    costs one X25519 base-point multiplication per side."""
    si, sr = os.urandom(32), os.urandom(32)
    ki = KeyPair25519.from_private_bytes(si)
    kr = KeyPair25519.from_private_bytes(sr)

    def handshake():
        i = noise_connection.NoiseConnection.from_name(_NOISE_NAME)
        r = noise_connection.NoiseConnection.from_name(_NOISE_NAME)
        i.set_as_initiator()
        r.set_as_responder()
        if preloaded:
            i.noise_protocol.keypairs["s"] = ki
            r.noise_protocol.keypairs["s"] = kr
        else:
            i.set_keypair_from_private_bytes(noise_connection.Keypair.STATIC, si)
            r.set_keypair_from_private_bytes(noise_connection.Keypair.STATIC, sr)
        i.start_handshake()
        r.start_handshake()
        r.read_message(i.write_message())
        i.read_message(r.write_message())
        r.read_message(i.write_message())
        assert i.handshake_finished and r.handshake_finished

    return handshake


def _qudag_setup():
    ii = Identity.generate(os.urandom)
    ir = Identity.generate(os.urandom)
    ci = ii.issue_certificate([("127.0.0.1", 4000)], now=NOW - 60, lifetime=86400)
    cr = ir.issue_certificate([("127.0.0.1", 4433)], now=NOW - 60, lifetime=86400)
    r_cache = CertificateCache()
    r_cache.add_verified(ci)
    i_cache = CertificateCache()
    i_cache.add_verified(cr)
    ctx = ResponderContext(ir, cr, rng=os.urandom, cert_cache=r_cache)
    addr = ("127.0.0.1", 40000)

    def handshake():
        i = InitiatorHandshake(ii, ci, rng=os.urandom, now=NOW, peer_certificate=cr, cert_cache=i_cache)
        r = ctx.new_handshake(now=NOW, peer_address=addr)
        r.receive_data(i.data_to_send())
        ev_i = i.receive_data(r.data_to_send())
        ev_r = r.receive_data(i.data_to_send())
        assert type(ev_i[0]) is HandshakeComplete and type(ev_r[0]) is HandshakeComplete

    return handshake


def _crypto_floor_setup():
    """Reference, not a competitor: only the ``cryptography`` calls a qudag handshake
    cannot avoid (ML-KEM-768 keygen + public-key export, key parse, 3 encapsulations,
    3 decapsulations; 2 X25519 key generations, 6 exchanges), in handshake order, with
    no wrappers, hashing, AEAD or framing.  Shows how much of the gap to Noise is glue.
    Uses the same library entry points as ``qudag_core.crypto``."""
    from qudag_core.crypto import mlkem, x25519

    seed, priv, pub = mlkem._from_seed, x25519._from_private, x25519._from_public
    s_r_m, s_i_m = seed(os.urandom(64)), seed(os.urandom(64))
    p_r_m, p_i_m = s_r_m.public_key(), s_i_m.public_key()
    s_r_x, s_i_x = priv(os.urandom(32)), priv(os.urandom(32))
    p_r_x, p_i_x = s_r_x.public_key(), s_i_x.public_key()

    def handshake():
        e_m = seed(os.urandom(64))
        ek = e_m.public_key().public_bytes_raw()
        e_x = priv(os.urandom(32))
        e_i = e_x.public_key().public_bytes_raw()
        _, ct1 = p_r_m.encapsulate()
        e_x.exchange(p_r_x)
        s_r_m.decapsulate(ct1)
        s_r_x.exchange(pub(e_i))
        epk = mlkem._from_public(ek)
        r_x = priv(os.urandom(32))
        e_r = r_x.public_key().public_bytes_raw()
        _, ct2 = epk.encapsulate()
        r_x.exchange(pub(e_i))
        _, ct3 = p_i_m.encapsulate()
        r_x.exchange(p_i_x)
        e_m.decapsulate(ct2)
        e_x.exchange(pub(e_r))
        s_i_m.decapsulate(ct3)
        s_i_x.exchange(pub(e_r))

    return handshake


def _best_batch(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def measure_ratio(batches: int = 15, per_batch: int = 20, preloaded: bool = True) -> tuple[float, float, float]:
    noise, qudag = _noise_setup(preloaded), _qudag_setup()
    noise(), qudag()
    tn, tq = [], []
    for _ in range(batches):
        tn.append(_best_batch(noise, per_batch))
        tq.append(_best_batch(qudag, per_batch))
    best_n, best_q = min(tn), min(tq)
    return 1 / best_n, 1 / best_q, best_n / best_q


def measure_floor(batches: int = 15, per_batch: int = 20) -> tuple[float, float, float]:
    """Microseconds per handshake: (Noise XX preloaded, qudag, crypto-library floor),
    interleaved like ``measure_ratio``."""
    fns = (_noise_setup(True), _qudag_setup(), _crypto_floor_setup())
    for f in fns:
        f()
    best = [float("inf")] * 3
    for _ in range(batches):
        for i, f in enumerate(fns):
            best[i] = min(best[i], _best_batch(f, per_batch))
    return tuple(b * 1e6 for b in best)


def test_noise_xx_handshake(benchmark):
    benchmark.pedantic(_noise_setup(), rounds=40, iterations=5, warmup_rounds=2)


def test_noise_xx_handshake_public_api(benchmark):
    benchmark.pedantic(_noise_setup(preloaded=False), rounds=40, iterations=5, warmup_rounds=2)


def test_qudag_handshake(benchmark):
    benchmark.pedantic(_qudag_setup(), rounds=40, iterations=5, warmup_rounds=2)


def test_ratio(benchmark):
    import qudag_core

    noise_rate, qudag_rate, ratio = measure_ratio()
    noise_api_rate, qudag_rate2, ratio_api = measure_ratio(preloaded=False)
    us_noise, us_qudag, us_floor = measure_floor()
    benchmark.extra_info.update(noise_hs_per_s=noise_rate, qudag_hs_per_s=qudag_rate, ratio=ratio,
                                noise_public_api_hs_per_s=noise_api_rate, ratio_vs_public_api=ratio_api,
                                crypto_floor_us=us_floor, ratio_if_zero_overhead=us_noise / us_floor)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(
        f"\nhandshakes/s (both sides, compiled={qudag_core.COMPILED}): "
        f"noise XX preloaded keys {noise_rate:.0f} vs qudag {qudag_rate:.0f} -> ratio {ratio:.2f}; "
        f"noise XX public API {noise_api_rate:.0f} vs qudag {qudag_rate2:.0f} -> ratio {ratio_api:.2f}; "
        f"library crypto calls alone {us_floor:.0f} us vs noise {us_noise:.0f} us "
        f"(ratio if qudag had zero overhead {us_noise / us_floor:.2f})"
    )
    assert ratio > 0 and ratio_api > 0


if __name__ == "__main__":
    for pre in (True, False):
        n, q, r = measure_ratio(preloaded=pre)
        print(f"noise XX ({'preloaded keys' if pre else 'public API'}) {n:.0f}/s  qudag {q:.0f}/s  ratio {r:.2f}")
    n, q, f = measure_floor()
    print(f"us per handshake: noise XX {n:.0f}, qudag {q:.0f}, library crypto calls alone {f:.0f} "
          f"(ratio if qudag had zero overhead: {n / f:.2f})")
