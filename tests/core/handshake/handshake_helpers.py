"""Test helpers that read like the protocol (after h11 ``ConnectionPair`` and aioquic
``client_and_server``): build identities once, pair an initiator with a responder,
and pump bytes between them."""
from __future__ import annotations

import functools
import hashlib

from qudag_core.handshake import (
    HandshakeComplete,
    InitiatorHandshake,
    ResponderContext,
    Terminated,
)
from qudag_core.identity import CertificateCache, Identity

NOW = 1_800_000_000.0
INITIATOR_ADDR = ("192.0.2.10", 40000)


class Rng:
    """Deterministic ``rng(n)`` (counter-mode SHA-256), one stream per label."""

    def __init__(self, label: bytes = b"hs") -> None:
        self._label = label
        self._ctr = 0

    def __call__(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(self._label + self._ctr.to_bytes(8, "big")).digest()
            self._ctr += 1
        return out[:n]


@functools.lru_cache(maxsize=None)
def identity(name: str) -> Identity:
    """A fixed identity per name (seeds derived from the name)."""
    return Identity(hashlib.sha256(b"mldsa " + name.encode()).digest(), hashlib.sha256(b"xwing " + name.encode()).digest())


@functools.lru_cache(maxsize=None)
def certificate(name: str, port: int = 4433):
    ident = identity(name)
    return ident.issue_certificate([("127.0.0.1", port), ("::1", port)], now=NOW - 3600, lifetime=30 * 86400)


def responder_context(name: str = "responder", **kw) -> ResponderContext:
    kw.setdefault("rng", Rng(b"ctx " + name.encode()))
    return ResponderContext(identity(name), certificate(name), **kw)


def initiator(name: str = "initiator", peer: str | None = "responder", *, rng=None, now: float = NOW, **kw) -> InitiatorHandshake:
    if peer is not None and "peer_certificate" not in kw:
        kw["peer_certificate"] = certificate(peer)
    return InitiatorHandshake(identity(name), certificate(name), rng=rng or Rng(b"init " + name.encode()), now=now, **kw)


def handshake_pair(ctx: ResponderContext | None = None, *, now: float = NOW, peer_address=INITIATOR_ADDR,
                   address_validated: bool = False, **init_kw):
    """A fresh (initiator, responder) pair; the initiator's first message is queued."""
    ctx = ctx or responder_context()
    init = initiator(now=now, **init_kw)
    resp = ctx.new_handshake(now=now, peer_address=peer_address, address_validated=address_validated)
    return init, resp


def roundtrip(init, resp, *, max_steps: int = 10, record: list | None = None):
    """Pump bytes until both sides are quiet.  Returns (initiator events, responder events).
    ``record`` collects every (direction, bytes) flight."""
    ev_i: list = []
    ev_r: list = []
    for _ in range(max_steps):
        moved = False
        data = init.data_to_send()
        if data:
            moved = True
            if record is not None:
                record.append(("i->r", data))
            ev_r += resp.receive_data(data)
        data = resp.data_to_send()
        if data:
            moved = True
            if record is not None:
                record.append(("r->i", data))
            ev_i += init.receive_data(data)
        if not moved:
            break
    return ev_i, ev_r


def completed(events) -> list:
    return [e for e in events if isinstance(e, HandshakeComplete)]


def terminated(events) -> list:
    return [e for e in events if isinstance(e, Terminated)]


def fresh_cache(*names: str) -> CertificateCache:
    cache = CertificateCache()
    for n in names:
        cache.add_verified(certificate(n))
    return cache


def _all_slots(cls):
    out = []
    for klass in cls.__mro__:
        out.extend(getattr(klass, "__slots__", ()))
    return out


def clone_state(st):
    """Copy a consume-once step state (transcript hasher copied, keys shared)."""
    new = type(st).__new__(type(st))
    for name in _all_slots(type(st)):
        if hasattr(st, name):
            setattr(new, name, getattr(st, name))
    t = getattr(st, "transcript", None)
    if t is not None:
        nt = type(t).__new__(type(t))
        nt._h = t._h.copy()
        new.transcript = nt
    return new


def clone(hs):
    """Snapshot a handshake stream object so one recorded flight can be replayed to
    many identical copies (the bit-flip tests)."""
    from qudag_core.handshake.wire import FrameReader

    new = type(hs).__new__(type(hs))
    for name in _all_slots(type(hs)):
        if hasattr(hs, name):
            setattr(new, name, getattr(hs, name))
    reader = FrameReader()
    reader.feed(bytes(hs._reader._buf))
    new._reader = reader
    new._out = list(hs._out)
    if hs._hs is not None:
        new._hs = clone_state(hs._hs)
    return new
