"""Descriptors, the descriptor store and the publisher (docs/dark.md §3-5)."""
from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from dark_helpers import NOW, RELAY_CERT, SERVICE_CERT, SERVICE_ID, Rng, forge, service
from qudag_core.crypto import MlDsa65PrivateKey
from qudag_core.dark.address import DarkAddress
from qudag_core.dark.descriptor import (
    KIND_SERVICE,
    KIND_TOMBSTONE,
    OVERLAP_SECONDS,
    PERIOD_SECONDS,
    DarkService,
    DescriptorBadSignature,
    DescriptorDecryptFailed,
    DescriptorError,
    DescriptorMalformed,
    DescriptorNotSaved,
    DescriptorStore,
    DescriptorWrongIdentity,
    OuterDescriptor,
    Publisher,
    PutStatus,
    descriptor_index,
    lookup_periods,
    period_of,
    period_signing_key,
    publish_periods,
)
from qudag_core.errors import LocalProtocolError

SVC = service()
ADDR = SVC.address
P = period_of(NOW)
REAL = SVC.build(P, 100, NOW + 3 * 3600, Rng(b"real"))


def test_round_trip_and_layers():
    outer = OuterDescriptor.from_bytes(REAL)
    assert outer.to_bytes() == REAL
    assert outer.index == descriptor_index(ADDR, P) and outer.period == P and outer.revision == 100
    assert outer.period_public_key == period_signing_key(SERVICE_ID.signing_key.seed, P).public_key.raw
    # The outer layer shows neither the identity key, the address nor the endpoint.
    for secret in (SERVICE_ID.signing_key.public_key.raw[:64], ADDR.raw, SERVICE_CERT.to_bytes()[:64], b"\x7f\x00\x00\x01"):
        assert secret not in REAL
    inner = outer.decrypt(ADDR)
    assert inner.kind == KIND_SERVICE and inner.expires_at == NOW + 3 * 3600
    assert inner.identity_public_key == SERVICE_ID.signing_key.public_key.raw
    svc_cert, relays = inner.certificates(NOW)
    assert svc_cert == SERVICE_CERT and relays == []
    assert svc_cert.identity_digest == ADDR.identity_digest


def test_period_keys_and_indices_unlinkable_across_periods():
    a, b = OuterDescriptor.from_bytes(REAL), OuterDescriptor.from_bytes(SVC.build(P + 1, 100, NOW + 3600, Rng()))
    assert a.index != b.index and a.period_public_key != b.period_public_key
    assert period_signing_key(SERVICE_ID.signing_key.seed, P).seed != SERVICE_ID.signing_key.seed


def test_wrong_address_fails_to_decrypt():
    other = DarkAddress.from_public_key(MlDsa65PrivateKey(bytes(32)).public_key.raw)
    with pytest.raises(DescriptorDecryptFailed):
        OuterDescriptor.from_bytes(REAL).decrypt(other)


def test_intro_relays_instead_of_address():
    svc = DarkService.from_identity(SERVICE_ID, intro_relays=[RELAY_CERT])
    inner = OuterDescriptor.from_bytes(svc.build(P, 1, NOW + 60, Rng())).decrypt(svc.address)
    assert inner.service_certificate is None
    assert inner.certificates(NOW) == (None, [RELAY_CERT])


def test_build_needs_an_endpoint():
    with pytest.raises(LocalProtocolError):
        DarkService(bytes([6]) * 32).build(P, 1, NOW + 60, Rng())
    assert DarkService(bytes([6]) * 32).build(P, 1, NOW + 60, Rng(), tombstone=True)


def test_forgeries_detected_by_client_checks():
    own = OuterDescriptor.from_bytes(forge(ADDR, P, 500, bytes([1]) * 32))
    with pytest.raises(DescriptorWrongIdentity):
        own.decrypt(ADDR)
    claimed = OuterDescriptor.from_bytes(forge(ADDR, P, 500, bytes([2]) * 32, claim_identity_pk=SERVICE_ID.signing_key.public_key.raw))
    with pytest.raises(DescriptorBadSignature):
        claimed.decrypt(ADDR)


@pytest.mark.parametrize("cut", [0, 1, 40, 2000, len(REAL) - 1])
def test_truncation_and_trailing(cut):
    with pytest.raises(DescriptorMalformed):
        OuterDescriptor.from_bytes(REAL[:cut])
    with pytest.raises(DescriptorMalformed):
        OuterDescriptor.from_bytes(REAL + b"\x00" * (cut + 1))


@given(st.binary(max_size=4000))
@settings(max_examples=200, deadline=None)
def test_garbage_is_declared_error(blob):
    with pytest.raises(DescriptorError):
        OuterDescriptor.from_bytes(blob).decrypt(ADDR)


# ---------------------------------------------------------------- store
def test_store_accepts_and_rejects_rollback():
    store = DescriptorStore()
    assert store.put(REAL, NOW) is PutStatus.ACCEPTED
    assert store.get(descriptor_index(ADDR, P)) == [REAL]
    assert store.put(REAL, NOW) is PutStatus.ROLLBACK  # replay
    older = SVC.build(P, 99, NOW + 3600, Rng(b"old"))
    assert store.put(older, NOW) is PutStatus.ROLLBACK
    newer = SVC.build(P, 101, NOW + 3600, Rng(b"new"))
    assert store.put(newer, NOW) is PutStatus.REPLACED
    assert store.get(descriptor_index(ADDR, P)) == [newer]
    assert store.put(REAL, NOW) is PutStatus.ROLLBACK


def test_store_period_window_and_expiry():
    store = DescriptorStore()
    assert store.put(REAL, NOW + 2 * PERIOD_SECONDS) is PutStatus.STALE_PERIOD
    assert store.put(REAL, NOW - 2 * PERIOD_SECONDS) is PutStatus.STALE_PERIOD
    assert store.put(REAL, NOW) is PutStatus.ACCEPTED
    assert store.get(descriptor_index(ADDR, P), NOW + PERIOD_SECONDS) == [REAL]
    assert store.get(descriptor_index(ADDR, P), NOW + 2 * PERIOD_SECONDS) == []
    assert len(store) == 0


def test_forgery_flood_never_evicts_the_real_descriptor():
    store = DescriptorStore(slots_per_index=8)
    assert store.put(REAL, NOW).accepted
    statuses = [store.put(forge(ADDR, P, 10**9, bytes([i]) * 32), NOW) for i in range(1, 12)]
    assert statuses.count(PutStatus.ACCEPTED) == 7 and statuses[7:] == [PutStatus.FULL] * 4
    held = store.get(descriptor_index(ADDR, P))
    assert held[0] == REAL and len(held) == 8
    # Only the holder of the real period key can replace the real slot.
    newer = SVC.build(P, 101, NOW + 3600, Rng(b"n2"))
    assert store.put(newer, NOW) is PutStatus.REPLACED
    assert store.get(descriptor_index(ADDR, P))[0] == newer
    # And the client-side checks pick the real one out of the crowd.
    good = []
    for d in store.get(descriptor_index(ADDR, P)):
        try:
            OuterDescriptor.from_bytes(d).decrypt(ADDR)
            good.append(d)
        except DescriptorError:
            pass
    assert good == [newer]


def test_store_documented_limit_when_forgeries_come_first():
    """docs/dark.md §4: slots are first-come; a forger who fills every slot of an index
    *before* the service publishes there makes the store refuse the real descriptor."""
    store = DescriptorStore(slots_per_index=2)
    for i in (1, 2):
        assert store.put(forge(ADDR, P, 1, bytes([i]) * 32), NOW).accepted
    assert store.put(REAL, NOW) is PutStatus.FULL


def test_store_bounds_indices():
    store = DescriptorStore(max_indices=1)
    assert store.put(REAL, NOW).accepted
    other = DarkService(bytes([42]) * 32, certificate=SERVICE_CERT)
    assert store.put(other.build(P, 1, NOW + 60, Rng()), NOW) is PutStatus.STORE_FULL


def test_store_bounds_bytes_and_frees_them_on_expiry():
    """A count bound alone lets maximal descriptors grow the store without limit in
    bytes: ``max_bytes`` refuses a put that would exceed it (before any signature
    check), a replacement is charged only its growth, and expiry gives the bytes back."""
    size = len(REAL)
    store = DescriptorStore(max_bytes=size + size // 2)
    assert store.put(REAL, NOW).accepted
    assert store.bytes_held == size
    other = DarkService(bytes([42]) * 32, certificate=SERVICE_CERT).build(P, 1, NOW + 60, Rng())
    checks = store.signature_checks
    assert store.put(other, NOW) is PutStatus.STORE_FULL
    assert store.signature_checks == checks
    assert store.bytes_held == size and len(store) == 1
    # Two periods later the held descriptor has expired and its bytes are free again.
    later = NOW + 2 * 86400
    fresh = DarkService(bytes([42]) * 32, certificate=SERVICE_CERT).build(P + 2, 1, later + 60, Rng())
    assert store.put(fresh, later).accepted
    assert store.bytes_held == len(fresh) and len(store) == 1


def _mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    kind = rnd.randrange(6)
    if kind == 0:  # flip one bit
        i = rnd.randrange(len(b))
        b[i] ^= 1 << rnd.randrange(8)
    elif kind == 1:  # set a byte to a different value
        i = rnd.randrange(len(b))
        b[i] = (b[i] + rnd.randrange(1, 256)) % 256
    elif kind == 2:  # truncate
        del b[rnd.randrange(len(b)) :]
    elif kind == 3:  # append
        b += rnd.randbytes(rnd.randrange(1, 64))
    elif kind == 4:  # several flips, biased to the header (index, period, revision, key)
        for _ in range(rnd.randrange(1, 8)):
            i = rnd.randrange(2000) if rnd.random() < 0.5 else rnd.randrange(len(b))
            b[i] ^= rnd.randrange(1, 256)
    else:  # insert or delete a span
        i = rnd.randrange(len(b))
        if rnd.random() < 0.5:
            b[i:i] = rnd.randbytes(rnd.randrange(1, 32))
        else:
            del b[i : i + rnd.randrange(1, 32)]
    out = bytes(b)
    return out if out != data else out + b"\x00"


def test_hundred_thousand_mutations_all_rejected():
    """100,000 random mutations of a valid descriptor put to a store holding it: every one
    is rejected (parse, period window, revision, or signature).  Mutations that leave the
    header alone are caught as replays before any ML-DSA work; the rest pay one verify."""
    n = 100_000
    store = DescriptorStore()
    assert store.put(REAL, NOW).accepted
    rnd = random.Random(1234)
    counts: dict = {}
    start = time.monotonic()
    for _ in range(n):
        status = store.put(_mutate(REAL, rnd), NOW)
        assert not status.accepted, status
        counts[status] = counts.get(status, 0) + 1
    elapsed = time.monotonic() - start
    assert store.get(descriptor_index(ADDR, P)) == [REAL]
    assert sum(counts.values()) == n and len(counts) >= 3
    print(f"mutations: {counts} signature checks {store.signature_checks} in {elapsed:.1f}s")


# ---------------------------------------------------------------- publisher
def test_publish_and_lookup_periods_overlap():
    start = P * PERIOD_SECONDS
    assert publish_periods(start + 3600) == [P]
    assert publish_periods(start + PERIOD_SECONDS - OVERLAP_SECONDS) == [P, P + 1]
    assert lookup_periods(start + 3600) == [P, P - 1]
    assert lookup_periods(start + 12 * 3600) == [P]
    assert lookup_periods(start + PERIOD_SECONDS - 1) == [P, P + 1]


def test_publisher_lifecycle():
    pub = Publisher(service(), Rng(b"pub"), republish_interval=3600, lifetime=3 * 3600)
    store = DescriptorStore()
    first = pub.due(NOW)
    assert [i for i, _ in first] == [descriptor_index(ADDR, P)]
    assert all(store.put(d, NOW).accepted for _, d in first)
    assert pub.due(NOW + 10) == [] and pub.get_timer() == NOW + 3600
    again = pub.due(NOW + 3600)
    r1, r2 = (OuterDescriptor.from_bytes(d).revision for d in (first[0][1], again[0][1]))
    assert r2 > r1
    assert store.put(again[0][1], NOW + 3600) is PutStatus.REPLACED
    # Entering the overlap window publishes to the next period's index too.
    late = P * PERIOD_SECONDS + PERIOD_SECONDS - OVERLAP_SECONDS + 1
    both = pub.due(late)
    assert [i for i, _ in both] == [descriptor_index(ADDR, P), descriptor_index(ADDR, P + 1)]
    tomb = pub.unpublish(late + 1)
    for (_, d), (_, t) in zip(both, tomb):
        assert OuterDescriptor.from_bytes(t).revision > OuterDescriptor.from_bytes(d).revision
        assert OuterDescriptor.from_bytes(t).decrypt(ADDR).kind == KIND_TOMBSTONE
    for _, d in both + tomb:
        assert store.put(d, late).accepted
    assert OuterDescriptor.from_bytes(store.get(descriptor_index(ADDR, P))[0]).decrypt(ADDR).kind == KIND_TOMBSTONE
    assert pub.due(late + 7200) == [] and pub.get_timer() is None
    with pytest.raises(LocalProtocolError):
        pub.unpublish(late + 2)
    assert pub.state == Publisher.ERROR
    with pytest.raises(LocalProtocolError):
        pub.due(late + 3)


SHARED_SERVICE = service()


class PublisherMachine(RuleBasedStateMachine):
    """Random event orders: time steps, due(), unpublish(); every descriptor produced is
    accepted by a store in order, revisions only grow, no publish after unpublish."""

    def __init__(self):
        super().__init__()
        self.pub = Publisher(SHARED_SERVICE, Rng(b"sm"), republish_interval=3600, lifetime=7200)
        self.store = DescriptorStore()
        self.now = float(NOW)
        self.last_rev = -1
        self.unpublished = False

    @rule(dt=st.sampled_from([0, 1, 1800, 3600, 5 * 3600, 13 * 3600]))
    def tick(self, dt):
        self.now += dt

    @rule()
    def due(self):
        if self.pub.state == Publisher.ERROR:
            with pytest.raises(LocalProtocolError):
                self.pub.due(self.now)
            return
        out = self.pub.due(self.now)
        if self.unpublished:
            assert out == []
        self._absorb(out)

    @rule()
    def unpublish(self):
        if self.pub.state in (Publisher.UNPUBLISHED, Publisher.ERROR):
            with pytest.raises(LocalProtocolError):
                self.pub.unpublish(self.now)
            assert self.pub.state == Publisher.ERROR
            return
        self._absorb(self.pub.unpublish(self.now))
        self.unpublished = True

    def _absorb(self, out):
        revs = set()
        for index, data in out:
            d = OuterDescriptor.from_bytes(data)
            assert d.index == index and d.revision > self.last_rev
            revs.add(d.revision)
            assert self.store.put(data, self.now).accepted
        assert len(revs) <= 1  # one revision per (re)publish, shared by both periods
        if out:
            self.last_rev = OuterDescriptor.from_bytes(out[-1][1]).revision

    @invariant()
    def timer_consistent(self):
        t = self.pub.get_timer()
        assert (t is None) == (self.pub.state != Publisher.PUBLISHED)


TestPublisherMachine = PublisherMachine.TestCase
TestPublisherMachine.settings = settings(max_examples=15, stateful_step_count=12, deadline=None)


# A pool built once: real revisions 1..4, forgeries by 10 keys, replays come for free.
_REAL_POOL = [SVC.build(P, rev, NOW + 3600, Rng(bytes([rev]))) for rev in range(1, 5)]
_FORGED_POOL = [forge(ADDR, P, 10**6 + i, bytes([i + 1]) * 32) for i in range(10)]


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 9)), max_size=30), st.integers(1, 8))
@settings(max_examples=60, deadline=None)
def test_store_random_put_orders(ops, slots):
    """Any order of real and forged puts: never more than ``slots`` per index, the real
    slot (once stored) only ever moves to a higher real revision, and no forgery that
    arrives after the real descriptor removes it."""
    store = DescriptorStore(slots_per_index=slots)
    idx = descriptor_index(ADDR, P)
    real_rev = None
    for is_real, i in ops:
        data = _REAL_POOL[i % 4] if is_real else _FORGED_POOL[i]
        status = store.put(data, NOW)
        held = store.get(idx)
        assert len(held) <= slots
        if is_real and status.accepted:
            real_rev = i % 4 + 1
        if real_rev is not None:
            mine = [d for d in held if d in _REAL_POOL]
            assert len(mine) == 1 and OuterDescriptor.from_bytes(mine[0]).revision == real_rev


# ---------------------------------------------------------------- store persistence hooks
class _Mirror:
    """A listener that keeps what a write-through database would: one row per
    (index, period key), upserted in place (so slot order is first-stored order), and
    every row of an index deleted when it expires."""

    def __init__(self, fail: bool = False) -> None:
        self.rows: dict = {}
        self.calls: list = []
        self.fail = fail

    def descriptor_stored(self, index, period_public_key, data, period, now):
        self.calls.append(("stored", index, period_public_key, period, now))
        if self.fail:
            raise DescriptorNotSaved("disk full")
        self.rows[(index, period_public_key)] = data

    def descriptors_removed(self, index):
        self.calls.append(("removed", index))
        for key in [k for k in self.rows if k[0] == index]:
            del self.rows[key]


_OTHER = DarkService(bytes([42]) * 32, certificate=SERVICE_CERT)
# Real and forged descriptors at this period's index, and another service's descriptors in
# this period and the next two, so that advancing the clock expires some and not others.
_HOOK_POOL = (_REAL_POOL + _FORGED_POOL[:4]
              + [_OTHER.build(P + k, rev, NOW + k * PERIOD_SECONDS + 3600, Rng(bytes([k, rev])))
                 for k in range(3) for rev in (1, 2)])
_HOOK_INDICES = sorted({OuterDescriptor.from_bytes(d).index for d in _HOOK_POOL})


def test_listener_sees_accepts_and_expiries_before_they_apply():
    store = DescriptorStore()
    seen = []

    class Checking(_Mirror):
        def descriptor_stored(self, index, period_public_key, data, period, now):
            seen.append(store.get(index))  # not applied yet
            super().descriptor_stored(index, period_public_key, data, period, now)

        def descriptors_removed(self, index):
            seen.append(store.get(index))  # still there
            super().descriptors_removed(index)

    store.listener = mirror = Checking()
    idx = descriptor_index(ADDR, P)
    assert store.put(_REAL_POOL[0], NOW) is PutStatus.ACCEPTED
    assert store.put(_REAL_POOL[0], NOW) is PutStatus.ROLLBACK  # refused: the listener is not told
    assert store.put(_REAL_POOL[1], NOW) is PutStatus.REPLACED
    d = OuterDescriptor.from_bytes(_REAL_POOL[1])
    assert mirror.calls == [("stored", idx, d.period_public_key, P, NOW)] * 2
    assert seen == [[], [_REAL_POOL[0]]]
    later = _OTHER.build(P + 2, 1, NOW + 2 * PERIOD_SECONDS + 60, Rng())
    assert store.put(later, NOW + 2 * PERIOD_SECONDS).accepted
    assert ("removed", idx) in mirror.calls and seen[2] == [_REAL_POOL[1]]
    assert mirror.rows == {(e[0], e[1]): e[2] for e in store.entries()}


def test_listener_failure_refuses_the_put_and_leaves_the_store():
    store = DescriptorStore()
    store.listener = _Mirror(fail=True)
    assert store.put(REAL, NOW) is PutStatus.NOT_SAVED
    assert not PutStatus.NOT_SAVED.accepted
    assert len(store) == 0 and store.bytes_held == 0 and store.get(descriptor_index(ADDR, P)) == []
    store.listener = None
    assert store.put(REAL, NOW) is PutStatus.ACCEPTED


def test_restore_checks_like_put_and_does_not_tell_the_listener():
    store = DescriptorStore(slots_per_index=2)
    store.listener = mirror = _Mirror()
    tampered = bytearray(REAL)
    tampered[-5] ^= 1  # in the signature
    assert store.restore(bytes(tampered), NOW) is PutStatus.BAD_SIGNATURE
    assert store.restore(REAL, NOW) is PutStatus.ACCEPTED
    assert store.restore(REAL[:-1], NOW) is PutStatus.MALFORMED
    assert store.restore(REAL, NOW + 2 * PERIOD_SECONDS) is PutStatus.STALE_PERIOD
    assert store.restore(REAL, NOW) is PutStatus.ROLLBACK
    assert store.restore(_FORGED_POOL[0], NOW).accepted
    assert store.restore(_FORGED_POOL[1], NOW) is PutStatus.FULL
    assert mirror.calls == [] and len(store) == 2
    assert [e[2] for e in store.entries()] == [REAL, _FORGED_POOL[0]]


@given(st.lists(st.one_of(st.integers(0, len(_HOOK_POOL) - 1), st.just("tick")), max_size=25),
       st.integers(1, 4))
@settings(max_examples=50, deadline=None)
def test_any_puts_and_expiries_then_restore_gives_the_same_gets(ops, slots):
    """Whatever puts and period changes happen, the listener's rows are exactly the
    store's entries, and restoring those rows (in the database's order) into a fresh
    store with the same bounds serves the same ``get()`` at every index."""
    store = DescriptorStore(slots_per_index=slots)
    store.listener = mirror = _Mirror()
    now = NOW
    for op in ops:
        if op == "tick":
            now += PERIOD_SECONDS
        else:
            store.put(_HOOK_POOL[op], now)
    store.get(b"\0" * 20, now)  # sweep expired periods, as a served get does
    assert mirror.rows == {(e[0], e[1]): e[2] for e in store.entries()}
    fresh = DescriptorStore(slots_per_index=slots)
    for data in mirror.rows.values():
        assert fresh.restore(data, now).accepted
    for idx in _HOOK_INDICES:
        assert fresh.get(idx, now) == store.get(idx, now)
    assert fresh.bytes_held == store.bytes_held and len(fresh) == len(store)
