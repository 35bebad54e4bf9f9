"""Encrypted, per-period descriptors for dark services; the store and publisher rules
(docs/dark.md §3-5; modelled on Tor rend-spec-v3 §2.2 "blinded keys", §2.5 descriptor
layers and the revision-counter rule).

Per time period ``p = floor(now / 86400)`` and address ``A`` (its 35 raw bytes)::

    index(A, p)  = derive_key("qudag 2026 dark descriptor index", A | u64 p)[:20]
    key(A, p)    = derive_key("qudag 2026 dark descriptor key",   A | u64 p)     (32 B)
    seed(I, p)   = derive_key("qudag 2026 dark period key", identity_seed | u64 p)

Outer (plaintext) layer, all integers big-endian::

    u8 version(=1) | 20 index | u64 period | u64 revision |
    1952 period ML-DSA pk | 12 nonce | u32 len | ChaCha20-Poly1305 ciphertext |
    3309 ML-DSA signature by the period key over every byte before it
         (context b"qudag 2026 dark descriptor")

AEAD associated data = every outer byte before the ciphertext length.  Inner layer::

    u8 kind (1 = service, 2 = tombstone) | u64 expires_at |
    1952 identity ML-DSA pk | 3309 identity signature over
         (period pk | u64 period | index) (context b"qudag 2026 dark period certification") |
    u16 len | service NodeCertificate (0 = none) |
    u8 n_intro (0..8) | n x (u16 len | intro relay NodeCertificate)

The decision a reader asks about: ML-DSA keys cannot be blinded like Ed25519, so each
period gets its own ML-DSA key derived from the identity seed, certified by the identity
key *inside* the encrypted layer.  Stores see only unlinkable per-period keys, yet can
check signature, index and revision without decrypting; anyone who knows the address can
publish a forgery at its index, so stores keep several first-come slots per index (keyed
by period key) and clients pick the descriptor whose inner certification verifies.
"""
from __future__ import annotations

import enum
import struct
from collections import OrderedDict
from typing import Callable, Optional, Sequence

from qudag_core.crypto.aead import ChaCha20Poly1305Key
from qudag_core.crypto.hashing import blake3_hash, derive_key
from qudag_core.crypto.mldsa import PK_SIZE as MLDSA_PK_SIZE
from qudag_core.crypto.mldsa import SIG_SIZE as MLDSA_SIG_SIZE
from qudag_core.crypto.mldsa import MlDsa65PrivateKey, MlDsa65PublicKey
from qudag_core.dark.address import DarkAddress
from qudag_core.errors import (CryptoError, DecryptError, InvalidSignature, LocalProtocolError, QudagError,
                               RemoteProtocolError)
from qudag_core.identity import CertificateError, NodeCertificate

__all__ = [
    "PERIOD_SECONDS",
    "OVERLAP_SECONDS",
    "INDEX_LEN",
    "MAX_DESCRIPTOR_SIZE",
    "KIND_SERVICE",
    "KIND_TOMBSTONE",
    "period_of",
    "descriptor_index",
    "descriptor_key",
    "period_signing_key",
    "publish_periods",
    "OuterDescriptor",
    "InnerDescriptor",
    "DarkService",
    "DescriptorStore",
    "PutStatus",
    "Publisher",
    "DescriptorError",
    "DescriptorMalformed",
    "DescriptorBadSignature",
    "DescriptorDecryptFailed",
    "DescriptorWrongIdentity",
    "DescriptorExpired",
    "DescriptorNotSaved",
]

VERSION = 1
PERIOD_SECONDS = 86400
OVERLAP_SECONDS = 6 * 3600
INDEX_LEN = 20
NONCE_LEN = 12
MAX_INTRO = 8
KIND_SERVICE = 1
KIND_TOMBSTONE = 2
_INDEX_CONTEXT = "qudag 2026 dark descriptor index"
_KEY_CONTEXT = "qudag 2026 dark descriptor key"
_PERIOD_KEY_CONTEXT = "qudag 2026 dark period key"
_OUTER_SIG_CONTEXT = b"qudag 2026 dark descriptor"
_CERTIFY_CONTEXT = b"qudag 2026 dark period certification"
_HEADER_LEN = 1 + INDEX_LEN + 8 + 8 + MLDSA_PK_SIZE + NONCE_LEN
_MAX_CERT = 1 + 2 + MLDSA_PK_SIZE + 2 + 1216 + 1 + 8 * 19 + 16 + 2 + MLDSA_SIG_SIZE
MAX_INNER_SIZE = 1 + 8 + MLDSA_PK_SIZE + MLDSA_SIG_SIZE + 2 + _MAX_CERT + 1 + MAX_INTRO * (2 + _MAX_CERT)
MAX_DESCRIPTOR_SIZE = _HEADER_LEN + 4 + MAX_INNER_SIZE + 16 + MLDSA_SIG_SIZE


# --------------------------------------------------------------------------- errors
class DescriptorError(RemoteProtocolError):
    """A descriptor is unusable."""

    error_code = 0x60


class DescriptorMalformed(DescriptorError):
    """Truncated, trailing bytes, wrong length field, unknown version or kind."""

    error_code = 0x61


class DescriptorBadSignature(DescriptorError):
    """The period signature or the identity's certification does not verify."""

    error_code = 0x62


class DescriptorDecryptFailed(DescriptorError):
    """The inner layer does not open under this address and period (forged or other)."""

    error_code = 0x63


class DescriptorWrongIdentity(DescriptorError):
    """The inner identity key does not hash to the address's identity digest."""

    error_code = 0x64


class DescriptorExpired(DescriptorError):
    """The inner ``expires_at`` is at or before ``now``."""

    error_code = 0x65


class DescriptorNotSaved(QudagError):
    """Raised by a ``DescriptorStore.listener`` that could not save a descriptor: the
    put is refused (``PutStatus.NOT_SAVED``) and the store is left unchanged."""


# --------------------------------------------------------------------------- derivations
def period_of(now: float) -> int:
    return int(now // PERIOD_SECONDS)


def _ap(address: DarkAddress, period: int) -> bytes:
    return address.raw + struct.pack(">Q", period)


def descriptor_index(address: DarkAddress, period: int) -> bytes:
    """The 20-byte blinded DHT index of ``address``'s descriptor in ``period``."""
    return derive_key(_INDEX_CONTEXT, _ap(address, period), INDEX_LEN)


def descriptor_key(address: DarkAddress, period: int) -> bytes:
    return derive_key(_KEY_CONTEXT, _ap(address, period), 32)


def period_signing_key(identity_seed: bytes, period: int) -> MlDsa65PrivateKey:
    return MlDsa65PrivateKey(derive_key(_PERIOD_KEY_CONTEXT, bytes(identity_seed) + struct.pack(">Q", period), 32))


def publish_periods(now: float) -> list:
    """Periods to publish to at ``now``: the current one, plus the next during the last
    ``OVERLAP_SECONDS`` of the current period."""
    p = period_of(now)
    if now - p * PERIOD_SECONDS >= PERIOD_SECONDS - OVERLAP_SECONDS:
        return [p, p + 1]
    return [p]


def lookup_periods(now: float) -> list:
    """Periods a resolver tries, in order: current; then the next one in the last
    overlap hours (a publisher may already have moved on) or the previous one in the first
    overlap hours (a publisher's clock may lag)."""
    p = period_of(now)
    into = now - p * PERIOD_SECONDS
    if into >= PERIOD_SECONDS - OVERLAP_SECONDS:
        return [p, p + 1]
    if into < OVERLAP_SECONDS:
        return [p, p - 1]
    return [p]


# --------------------------------------------------------------------------- outer layer
class OuterDescriptor:
    """The plaintext layer, parsed strictly.  ``verify()`` checks the period signature."""

    __slots__ = ("version", "index", "period", "revision", "period_public_key", "nonce", "ciphertext", "signature", "_raw", "_signed_len")

    def __init__(self, *, index: bytes, period: int, revision: int, period_public_key: bytes, nonce: bytes, ciphertext: bytes, signature: bytes = b"") -> None:
        self.version = VERSION
        self.index = bytes(index)
        self.period = period
        self.revision = revision
        self.period_public_key = bytes(period_public_key)
        self.nonce = bytes(nonce)
        self.ciphertext = bytes(ciphertext)
        self.signature = bytes(signature)
        self._raw: Optional[bytes] = None
        self._signed_len = 0

    def header(self) -> bytes:
        return (
            bytes((self.version,)) + self.index + struct.pack(">QQ", self.period, self.revision)
            + self.period_public_key + self.nonce
        )

    def signed_part(self) -> bytes:
        return self.header() + struct.pack(">I", len(self.ciphertext)) + self.ciphertext

    def to_bytes(self) -> bytes:
        if self._raw is None:
            self._raw = self.signed_part() + self.signature
        return self._raw

    @property
    def size(self) -> int:
        """Encoded length in bytes."""
        return len(self.to_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> "OuterDescriptor":
        """Strict parse; raises ``DescriptorMalformed`` only."""
        data = bytes(data)
        n = len(data)
        if n > MAX_DESCRIPTOR_SIZE:
            raise DescriptorMalformed(f"descriptor of {n} bytes exceeds {MAX_DESCRIPTOR_SIZE}")
        if n < _HEADER_LEN + 4 + MLDSA_SIG_SIZE:
            raise DescriptorMalformed("descriptor truncated")
        if data[0] != VERSION:
            raise DescriptorMalformed(f"unknown descriptor version {data[0]}")
        p = 1
        index = data[p : p + INDEX_LEN]
        p += INDEX_LEN
        period, revision = struct.unpack(">QQ", data[p : p + 16])
        p += 16
        pk = data[p : p + MLDSA_PK_SIZE]
        p += MLDSA_PK_SIZE
        nonce = data[p : p + NONCE_LEN]
        p += NONCE_LEN
        (clen,) = struct.unpack(">I", data[p : p + 4])
        p += 4
        if p + clen + MLDSA_SIG_SIZE != n:
            raise DescriptorMalformed("ciphertext length does not match the descriptor size")
        if clen < 16:
            raise DescriptorMalformed("ciphertext shorter than its tag")
        d = cls(index=index, period=period, revision=revision, period_public_key=pk, nonce=nonce, ciphertext=data[p : p + clen], signature=data[p + clen :])
        d._raw = data
        d._signed_len = p + clen
        return d

    def verify(self) -> None:
        """Raise ``DescriptorBadSignature`` unless the period key signed this descriptor."""
        raw = self.to_bytes()
        signed = raw[: self._signed_len] if self._signed_len else self.signed_part()
        try:
            MlDsa65PublicKey(self.period_public_key).verify(self.signature, signed, _OUTER_SIG_CONTEXT)
        except (InvalidSignature, CryptoError):
            raise DescriptorBadSignature("descriptor signature does not verify") from None

    def open(self, address: DarkAddress) -> "InnerDescriptor":
        """Decrypt and parse the inner layer with ``address``'s key for this period, and
        check that its identity key hashes to the address.  Cheap (no ML-DSA)."""
        try:
            pt = ChaCha20Poly1305Key(descriptor_key(address, self.period)).open(self.nonce, self.ciphertext, self.header())
        except DecryptError:
            raise DescriptorDecryptFailed("descriptor does not decrypt under this address") from None
        inner = InnerDescriptor.from_bytes(pt)
        if not address.matches_public_key(inner.identity_public_key):
            raise DescriptorWrongIdentity("descriptor's identity key is not the address's")
        return inner

    def verify_certification(self, inner: "InnerDescriptor") -> None:
        """Check the identity key's signature over (period key, period, index)."""
        try:
            MlDsa65PublicKey(inner.identity_public_key).verify(
                inner.certification, _certified(self.period_public_key, self.period, self.index), _CERTIFY_CONTEXT
            )
        except (InvalidSignature, CryptoError):
            raise DescriptorBadSignature("identity certification of the period key does not verify") from None

    def decrypt(self, address: DarkAddress) -> "InnerDescriptor":
        """``open`` + ``verify`` + ``verify_certification``: the full chain
        address -> identity key -> period key -> this descriptor.  Does not check expiry."""
        inner = self.open(address)
        self.verify()
        self.verify_certification(inner)
        return inner

    def __repr__(self) -> str:
        return f"OuterDescriptor(index={self.index.hex()}, period={self.period}, revision={self.revision})"


def _certified(period_pk: bytes, period: int, index: bytes) -> bytes:
    return period_pk + struct.pack(">Q", period) + index


# --------------------------------------------------------------------------- inner layer
class InnerDescriptor:
    """The decrypted layer: who the service is and how to reach it."""

    __slots__ = ("kind", "expires_at", "identity_public_key", "certification", "service_certificate", "intro_relays")

    def __init__(self, *, kind: int, expires_at: int, identity_public_key: bytes, certification: bytes,
                 service_certificate: Optional[bytes] = None, intro_relays: Sequence[bytes] = ()) -> None:
        self.kind = kind
        self.expires_at = expires_at
        self.identity_public_key = bytes(identity_public_key)
        self.certification = bytes(certification)
        self.service_certificate = None if service_certificate is None else bytes(service_certificate)
        self.intro_relays = tuple(bytes(c) for c in intro_relays)

    def to_bytes(self) -> bytes:
        if len(self.intro_relays) > MAX_INTRO:
            raise LocalProtocolError(f"at most {MAX_INTRO} introduction relays")
        cert = self.service_certificate or b""
        parts = [bytes((self.kind,)), struct.pack(">Q", self.expires_at), self.identity_public_key, self.certification,
                 struct.pack(">H", len(cert)), cert, bytes((len(self.intro_relays),))]
        for c in self.intro_relays:
            parts += [struct.pack(">H", len(c)), c]
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> "InnerDescriptor":
        n = len(data)
        pos = 0

        def take(k: int) -> bytes:
            nonlocal pos
            if pos + k > n:
                raise DescriptorMalformed("inner descriptor truncated")
            chunk = data[pos : pos + k]
            pos += k
            return chunk

        kind = take(1)[0]
        if kind not in (KIND_SERVICE, KIND_TOMBSTONE):
            raise DescriptorMalformed(f"unknown descriptor kind {kind}")
        (expires_at,) = struct.unpack(">Q", take(8))
        ipk = take(MLDSA_PK_SIZE)
        cert_sig = take(MLDSA_SIG_SIZE)
        (clen,) = struct.unpack(">H", take(2))
        cert = take(clen) if clen else None
        count = take(1)[0]
        if count > MAX_INTRO:
            raise DescriptorMalformed("too many introduction relays")
        intros = []
        for _ in range(count):
            (k,) = struct.unpack(">H", take(2))
            intros.append(take(k))
        if pos != n:
            raise DescriptorMalformed("trailing bytes in the inner descriptor")
        return cls(kind=kind, expires_at=expires_at, identity_public_key=ipk, certification=cert_sig,
                   service_certificate=cert, intro_relays=intros)

    def certificates(self, now: float) -> tuple:
        """``(service_certificate | None, [intro relay certificates])``, each parsed and
        verified at ``now``; raises ``CertificateError``."""
        svc = None
        if self.service_certificate is not None:
            svc = NodeCertificate.from_bytes(self.service_certificate)
            svc.verify(now)
        relays = []
        for raw in self.intro_relays:
            c = NodeCertificate.from_bytes(raw)
            c.verify(now)
            relays.append(c)
        return svc, relays


# --------------------------------------------------------------------------- service side
class DarkService:
    """What a service needs to publish: the signing identity behind its address (long-term
    or ephemeral ML-DSA key, as a seed), its node certificate and/or intro relays."""

    __slots__ = ("identity_key", "address", "certificate", "intro_relays", "_period_keys")

    def __init__(self, identity_seed: bytes, certificate: Optional[NodeCertificate] = None,
                 intro_relays: Sequence[NodeCertificate] = ()) -> None:
        self.identity_key = MlDsa65PrivateKey(identity_seed)
        self.address = DarkAddress.from_public_key(self.identity_key.public_key.raw)
        self.certificate = certificate
        self.intro_relays = tuple(intro_relays)
        self._period_keys: OrderedDict = OrderedDict()

    @classmethod
    def from_identity(cls, identity, **kw) -> "DarkService":
        """The long-term address of a node ``Identity``: address identity == certificate identity."""
        return cls(identity.signing_key.seed, **kw)

    def __repr__(self) -> str:  # never the seeds
        return f"DarkService(address={self.address}, intro_relays={len(self.intro_relays)})"

    def period_key(self, period: int) -> MlDsa65PrivateKey:
        key = self._period_keys.get(period)
        if key is None:
            key = period_signing_key(self.identity_key.seed, period)
            self._period_keys[period] = key
            while len(self._period_keys) > 4:
                self._period_keys.popitem(last=False)
        return key

    def build(self, period: int, revision: int, expires_at: int, rng: Callable[[int], bytes], *, tombstone: bool = False) -> bytes:
        if not tombstone and self.certificate is None and not self.intro_relays:
            raise LocalProtocolError("a service descriptor needs a certificate or intro relays")
        index = descriptor_index(self.address, period)
        pkey = self.period_key(period)
        ppk = pkey.public_key.raw
        inner = InnerDescriptor(
            kind=KIND_TOMBSTONE if tombstone else KIND_SERVICE,
            expires_at=int(expires_at),
            identity_public_key=self.identity_key.public_key.raw,
            certification=self.identity_key.sign(_certified(ppk, period, index), _CERTIFY_CONTEXT),
            service_certificate=None if tombstone or self.certificate is None else self.certificate.to_bytes(),
            intro_relays=() if tombstone else [c.to_bytes() for c in self.intro_relays],
        )
        outer = OuterDescriptor(index=index, period=period, revision=revision, period_public_key=ppk, nonce=rng(NONCE_LEN), ciphertext=b"")
        outer.ciphertext = ChaCha20Poly1305Key(descriptor_key(self.address, period)).seal(outer.nonce, inner.to_bytes(), outer.header())
        outer.signature = pkey.sign(outer.signed_part(), _OUTER_SIG_CONTEXT)
        return outer.to_bytes()


# --------------------------------------------------------------------------- store
class PutStatus(enum.Enum):
    ACCEPTED = "accepted"
    REPLACED = "replaced"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad signature"
    STALE_PERIOD = "period too old or too far ahead"
    ROLLBACK = "revision not above the stored one"
    FULL = "all slots for this index are held"
    STORE_FULL = "store full"
    NOT_SAVED = "could not be saved"

    @property
    def accepted(self) -> bool:
        return self in (PutStatus.ACCEPTED, PutStatus.REPLACED)


class DescriptorStore:
    """Sans-IO store of outer descriptors for a DHT node (docs/dark.md §4).

    Policy per index: at most ``slots_per_index`` slots, one per period public key,
    first come first served.  A put for a held key replaces it only with a strictly
    higher revision (tombstones included); a put for a new key takes a free slot or is
    refused (``FULL``) -- nothing is ever evicted to make room, so a flood of forgeries
    can't displace a descriptor stored before it.  Descriptors of periods older than
    ``current - 1`` are dropped; periods beyond ``current + 1`` are refused.  Indices are
    bounded by ``max_indices`` and the bytes held by ``max_bytes`` (``STORE_FULL`` once
    either is reached and every held period is current): a count bound alone would let
    maximal (~17 KB) descriptors in every slot grow the store to gigabytes.

    Checks run cheapest first: size/parse, period window, then (for a held key) the
    revision, and only then the ML-DSA signature -- so replays and most garbage cost no
    signature verification, and nothing unverified is ever stored.

    Persistence hook (as ``RecordStore.listener``): ``listener`` (default None) is told
    of every change *before* it is applied in memory --
    ``descriptor_stored(index, period_public_key, data, period, now)`` when a put is
    accepted or replaces a slot, ``descriptors_removed(index)`` when an index expires.
    A listener that raises ``DescriptorNotSaved`` from ``descriptor_stored`` refuses the
    put (``NOT_SAVED``) and leaves the store unchanged, so a write-through database
    (``qudag_io.persist``) commits a descriptor before the reply acknowledging it is
    built; ``descriptors_removed`` must not raise.  ``entries()`` and ``restore()``
    enumerate and reload descriptors; ``restore`` runs every check ``put`` runs,
    the ML-DSA signature included (a saved file is only as trustworthy as its
    permissions), and does not tell the listener."""

    __slots__ = ("_by_index", "slots_per_index", "max_indices", "max_bytes", "signature_checks",
                 "_swept_period", "_bytes", "listener")

    def __init__(self, slots_per_index: int = 8, max_indices: int = 65536,
                 max_bytes: int = 64 * 1024 * 1024) -> None:
        if slots_per_index < 1 or max_indices < 1 or max_bytes < 1:
            raise ValueError("store bounds must be positive")
        self._by_index: OrderedDict = OrderedDict()  # index -> OrderedDict[period_pk, OuterDescriptor]
        self.slots_per_index = slots_per_index
        self.max_indices = max_indices
        self.max_bytes = max_bytes
        self.signature_checks = 0
        self._swept_period = -1
        self._bytes = 0  # len(to_bytes()) of every held descriptor
        #: persistence hook (see the class docstring); ``None``: no listener
        self.listener: object = None

    def _expire(self, now: float) -> None:
        # Entries only age out at period boundaries: sweep once per period, not per put.
        cur = period_of(now)
        if cur == self._swept_period:
            return
        self._swept_period = cur
        for idx in [i for i, slots in self._by_index.items() if next(iter(slots.values())).period < cur - 1]:
            if self.listener is not None:
                self.listener.descriptors_removed(idx)
            self._bytes -= sum(d.size for d in self._by_index.pop(idx).values())

    def put(self, data: bytes, now: float) -> PutStatus:
        return self._put(data, now, True)

    def restore(self, data: bytes, now: float) -> PutStatus:
        """Reload a descriptor saved from ``entries()``: every check of ``put`` (period
        window, slots, bounds, signature), without telling the listener (the
        descriptor came from it).  Restoring ``entries()`` in order into an empty store
        with the same bounds gives back the same ``get()`` results."""
        return self._put(data, now, False)

    def entries(self) -> list:
        """``[(index, period_public_key, data, period)]``, index by index, each index's
        slots earliest-stored first (the order ``restore`` needs)."""
        return [(idx, pk, d.to_bytes(), d.period) for idx, slots in self._by_index.items()
                for pk, d in slots.items()]

    def _put(self, data: bytes, now: float, notify: bool) -> PutStatus:
        try:
            d = OuterDescriptor.from_bytes(data)
        except DescriptorMalformed:
            return PutStatus.MALFORMED
        cur = period_of(now)
        if not cur - 1 <= d.period <= cur + 1:
            return PutStatus.STALE_PERIOD
        slots = self._by_index.get(d.index)
        held = None if slots is None else slots.get(d.period_public_key)
        if held is not None and (d.revision <= held.revision or d.period != held.period):
            return PutStatus.ROLLBACK
        if held is None and slots is not None and len(slots) >= self.slots_per_index:
            return PutStatus.FULL
        self._expire(now)
        if slots is None:
            if len(self._by_index) >= self.max_indices:
                return PutStatus.STORE_FULL
        if self._bytes - (held.size if held is not None else 0) + len(data) > self.max_bytes:
            return PutStatus.STORE_FULL
        self.signature_checks += 1
        try:
            d.verify()
        except DescriptorBadSignature:
            return PutStatus.BAD_SIGNATURE
        if notify and self.listener is not None:
            try:
                self.listener.descriptor_stored(d.index, d.period_public_key, d.to_bytes(), d.period, now)
            except DescriptorNotSaved:
                return PutStatus.NOT_SAVED
        if slots is None:
            slots = self._by_index[d.index] = OrderedDict()
        slots[d.period_public_key] = d
        self._bytes += d.size - (held.size if held is not None else 0)
        return PutStatus.REPLACED if held is not None else PutStatus.ACCEPTED

    def get(self, index: bytes, now: Optional[float] = None) -> list:
        """Every descriptor held at ``index``, earliest-stored first."""
        if now is not None:
            self._expire(now)
        slots = self._by_index.get(bytes(index))
        if slots is None or (now is not None and next(iter(slots.values())).period < period_of(now) - 1):
            return []
        return [d.to_bytes() for d in slots.values()]

    def __len__(self) -> int:
        return sum(len(s) for s in self._by_index.values())

    @property
    def bytes_held(self) -> int:
        """Encoded size of every descriptor held (what ``max_bytes`` bounds)."""
        return self._bytes


# --------------------------------------------------------------------------- publisher
class Publisher:
    """Keeps a service's descriptors published (a table-driven state machine).

    ``due(now)`` returns ``[(index, descriptor_bytes), ...]`` to put when a (re)publish is
    due (first call, then every ``republish_interval``, or when a new period enters the
    publish set), each with a fresh revision ``max(last + 1, int(now))`` -- monotonic
    across restarts as long as the clock is.  ``unpublish(now)`` returns tombstones with a
    higher revision; afterwards ``due`` returns nothing.  Misuse moves to a sticky ERROR.
    """

    IDLE, PUBLISHED, UNPUBLISHED, ERROR = "IDLE", "PUBLISHED", "UNPUBLISHED", "ERROR"
    _TRANSITIONS = {
        (IDLE, "due"): PUBLISHED,
        (PUBLISHED, "due"): PUBLISHED,
        (IDLE, "unpublish"): UNPUBLISHED,
        (PUBLISHED, "unpublish"): UNPUBLISHED,
        (UNPUBLISHED, "due"): UNPUBLISHED,
    }

    def __init__(self, service: DarkService, rng: Callable[[int], bytes], *, republish_interval: float = 3600.0,
                 lifetime: float = 3 * 3600.0, revision: int = 0) -> None:
        if not 0 < republish_interval < lifetime:
            raise ValueError("need 0 < republish_interval < lifetime")
        self.service = service
        self.rng = rng
        self.republish_interval = republish_interval
        self.lifetime = lifetime
        self.revision = revision
        self.state = self.IDLE
        self._next: Optional[float] = None
        self._periods: tuple = ()

    def _step(self, event: str) -> None:
        nxt = self._TRANSITIONS.get((self.state, event))
        if nxt is None:
            self.state = self.ERROR
            raise LocalProtocolError(f"publisher cannot {event} in state {self.state}")
        self.state = nxt

    def get_timer(self) -> Optional[float]:
        if self.state != self.PUBLISHED:
            return None
        return self._next

    def due(self, now: float) -> list:
        if self.state == self.ERROR:
            raise LocalProtocolError("publisher is in the ERROR state")
        self._step("due")
        if self.state == self.UNPUBLISHED:
            return []
        periods = tuple(publish_periods(now))
        if self._next is not None and now < self._next and periods == self._periods:
            return []
        self._periods = periods
        self._next = now + self.republish_interval
        return self._build(now, tombstone=False)

    def unpublish(self, now: float) -> list:
        self._step("unpublish")
        return self._build(now, tombstone=True)

    def _build(self, now: float, tombstone: bool) -> list:
        self.revision = max(self.revision + 1, int(now))
        out = []
        for p in publish_periods(now):
            data = self.service.build(p, self.revision, int(now + self.lifetime), self.rng, tombstone=tombstone)
            out.append((descriptor_index(self.service.address, p), data))
        return out
