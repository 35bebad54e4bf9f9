"""Shared builders for the dark tests: a service, forgeries, an in-memory DHT adapter."""
from __future__ import annotations

import hashlib
import struct

from qudag_core.crypto import ChaCha20Poly1305Key, MlDsa65PrivateKey
from qudag_core.dark.descriptor import (
    KIND_SERVICE,
    PERIOD_SECONDS,
    DarkService,
    InnerDescriptor,
    OuterDescriptor,
    descriptor_index,
    descriptor_key,
)
from qudag_core.dark.events import FetchDescriptors
from qudag_core.identity import Identity

#: Ten hours into period 20000 (away from both overlap windows).
NOW = 20000 * PERIOD_SECONDS + 10 * 3600


class Rng:
    def __init__(self, seed: bytes = b"dark") -> None:
        self.seed, self.ctr = seed, 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self.seed + self.ctr.to_bytes(8, "big")).digest()
            self.ctr += 1
        return out[:n]


SERVICE_ID = Identity(bytes([7]) * 32, bytes([8]) * 32)
SERVICE_CERT = SERVICE_ID.issue_certificate([("127.0.0.1", 4433)], now=NOW - 86400, lifetime=30 * 86400)
RELAY_ID = Identity(bytes([9]) * 32, bytes([10]) * 32)
RELAY_CERT = RELAY_ID.issue_certificate([("10.0.0.1", 9000)], now=NOW - 86400, lifetime=30 * 86400)


def service(**kw) -> DarkService:
    kw.setdefault("certificate", SERVICE_CERT)
    return DarkService.from_identity(SERVICE_ID, **kw)


def forge(address, period: int, revision: int, forger_seed: bytes, *, claim_identity_pk: bytes | None = None,
          certificate: bytes | None = None, rng=None) -> bytes:
    """A descriptor by someone who knows ``address`` but not its identity seed: their own
    period key, encrypted under the real address key, at the real index.  The inner layer
    either names the forger's own identity key or the real one with a bogus certification."""
    rng = rng or Rng(b"forge" + forger_seed)
    pkey = MlDsa65PrivateKey(forger_seed)
    forger_identity = MlDsa65PrivateKey(bytes(b ^ 0x55 for b in forger_seed))
    index = descriptor_index(address, period)
    ipk = claim_identity_pk if claim_identity_pk is not None else forger_identity.public_key.raw
    cert_sig = forger_identity.sign(pkey.public_key.raw + struct.pack(">Q", period) + index, b"qudag 2026 dark period certification")
    inner = InnerDescriptor(kind=KIND_SERVICE, expires_at=int(NOW + 3 * 3600), identity_public_key=ipk,
                            certification=cert_sig, service_certificate=certificate or RELAY_CERT.to_bytes())
    outer = OuterDescriptor(index=index, period=period, revision=revision, period_public_key=pkey.public_key.raw,
                            nonce=rng(12), ciphertext=b"")
    outer.ciphertext = ChaCha20Poly1305Key(descriptor_key(address, period)).seal(outer.nonce, inner.to_bytes(), outer.header())
    outer.signature = pkey.sign(outer.signed_part(), b"qudag 2026 dark descriptor")
    return outer.to_bytes()


def drive(resolver, store, events, now, *, fail=(), max_rounds: int = 20):
    """In-memory DHT adapter: answer every FetchDescriptors from ``store`` until the
    resolver produces a result; returns (results, fetches seen)."""
    results, fetches = [], []
    pending = list(events)
    for _ in range(max_rounds):
        if not pending:
            break
        nxt = []
        for ev in pending:
            if isinstance(ev, FetchDescriptors):
                fetches.append(ev)
                if ev.index in fail:
                    nxt += resolver.on_fetch_failed(ev.query_id, now)
                else:
                    nxt += resolver.on_fetch_result(ev.query_id, store.get(ev.index, now), now)
            else:
                results.append(ev)
        pending = nxt
    assert not pending, "resolver did not finish within the round bound"
    return results, fetches
