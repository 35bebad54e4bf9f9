"""Dark descriptor costs against their cryptographic floor, measured in one session.

* ``store_put``: a DHT node accepting a fresh descriptor (strict parse, period window,
  slot rules, one ML-DSA-65 verification).  Peer: the bare ML-DSA-65 verification of
  the same signed bytes through ``cryptography``.  Goal: ratio >= 0.9x (bookkeeping
  is noise next to the signature).
* ``resolve``: a client resolving an address end to end from an in-memory store (AEAD
  open, outer signature, identity certification, service certificate, cache off).
  Peer: the three bare ML-DSA verifications that chain needs.  Goal: >= 0.8x.
* ``replay_reject``: a store refusing a replayed descriptor (no signature work).

    PYTHONPATH=. python -m pytest benches/bench_dark.py --benchmark-only -q -s

``test_ratio`` interleaves short batches of qudag and peer and compares the best batch
of each (robust to other load on a shared machine); it prints the ratios.
"""
from __future__ import annotations

import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "core" / "dark"))
from dark_helpers import NOW, SERVICE_CERT, Rng, drive, service  # noqa: E402

from qudag_core.crypto import MlDsa65PublicKey  # noqa: E402
from qudag_core.dark.descriptor import DescriptorStore, OuterDescriptor, period_of  # noqa: E402
from qudag_core.dark.resolver import Resolver  # noqa: E402

SVC = service()
P = period_of(NOW)
DESC = SVC.build(P, 1, NOW + 3600, Rng(b"bench"))
OUTER = OuterDescriptor.from_bytes(DESC)
INNER = OUTER.decrypt(SVC.address)


def store_put():
    s = DescriptorStore()
    assert s.put(DESC, NOW).accepted


def peer_verify_outer():
    MlDsa65PublicKey(OUTER.period_public_key).verify(OUTER.signature, OUTER.signed_part(), b"qudag 2026 dark descriptor")


_STORE = DescriptorStore()
_STORE.put(DESC, NOW)


def resolve():
    r = Resolver(Rng(), cache_size=1)
    res, _ = drive(r, _STORE, r.resolve(SVC.address, NOW), NOW)
    assert res[0].endpoint.certificate is not None


def peer_resolve_chain():
    peer_verify_outer()
    MlDsa65PublicKey(INNER.identity_public_key).verify(
        INNER.certification, OUTER.period_public_key + P.to_bytes(8, "big") + OUTER.index, b"qudag 2026 dark period certification"
    )
    MlDsa65PublicKey(SERVICE_CERT.mldsa_public_key).verify(SERVICE_CERT.signature, SERVICE_CERT.signed_part(), b"qudag 2026 node-certificate")


def replay_reject():
    assert not _STORE.put(DESC, NOW).accepted


def test_store_put(benchmark):
    benchmark.pedantic(store_put, rounds=200, warmup_rounds=5)


def test_peer_verify(benchmark):
    benchmark.pedantic(peer_verify_outer, rounds=200, warmup_rounds=5)


def test_resolve(benchmark):
    benchmark.pedantic(resolve, rounds=100, warmup_rounds=3)


def test_peer_resolve_chain(benchmark):
    benchmark.pedantic(peer_resolve_chain, rounds=100, warmup_rounds=3)


def test_replay_reject(benchmark):
    benchmark.pedantic(replay_reject, rounds=2000, warmup_rounds=20)


def _best(fn, n):
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def test_ratio():
    pairs = {"store_put": (store_put, peer_verify_outer), "resolve": (resolve, peer_resolve_chain)}
    for name, (ours, peer) in pairs.items():
        best_ours = best_peer = float("inf")
        for _ in range(8):
            best_ours = min(best_ours, _best(ours, 20))
            best_peer = min(best_peer, _best(peer, 20))
        ratio = best_peer / best_ours
        print(f"\n{name}: qudag {best_ours * 1e6:.0f} us, peer {best_peer * 1e6:.0f} us, ratio {ratio:.2f}x")
        assert ratio > 0.3
    rej = min(_best(replay_reject, 500) for _ in range(3))
    print(f"replay_reject: {rej * 1e6:.1f} us")
