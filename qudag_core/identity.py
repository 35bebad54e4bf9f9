"""Node identities and node certificates (docs/handshake.md §1).

A node *is* its ML-DSA-65 key (FIPS 204).  ``NodeId`` is the first 20 bytes of BLAKE3
``derive_key("qudag 2026 identity node-id", mldsa_public_key)``: 160 bits, the size of a
BEP 5 routing-table id, and self-certifying (whoever shows the public key proves the id).

Each node also holds a static X-Wing KEM key.  A ``NodeCertificate`` binds that KEM key
and the node's addresses to the identity with one ML-DSA signature (context string
``b"qudag 2026 node-certificate"``).  The handshake authenticates peers by encapsulating
to these certified KEM keys instead of signing every handshake (KEMTLS/Rosenpass style),
so a certificate is verified once and then served from ``CertificateCache``.

Wire encoding (all integers big-endian), parsed strictly -- truncation, trailing bytes,
wrong field lengths, unknown version, unknown address type are each a declared error::

    u8   version (=1)
    u16  len(mldsa_pk) (=1952)  || mldsa_pk
    u16  len(xwing_pk) (=1216)  || xwing_pk
    u8   n_addresses (0..8)     || n x ( u8 type (4|6) || 4|16 address bytes || u16 port )
    u64  issued_at   u64 expires_at      (unix seconds, issued_at < expires_at)
    u16  len(sig) (=3309)       || ML-DSA-65 signature over every byte before it

The design decision a reader asks about: the cache stores only certificates whose
signature verified, and a lookup hits only when the presented encoding equals a cached
one *byte for byte* (signature included); the validity window is re-checked on every
lookup because it depends on ``now``.  Entries are indexed by the last 32 bytes of the
encoding (the tail of the ML-DSA signature) and then compared in full: a memcmp instead
of hashing 6.5 kB on every handshake.  Two encodings sharing a tail simply miss and are
verified like any new certificate.
"""
from __future__ import annotations

import ipaddress
import struct
from collections import OrderedDict

from qudag_core.crypto.hashing import derive_key
from qudag_core.crypto.mldsa import PK_SIZE as MLDSA_PK_SIZE
from qudag_core.crypto.mldsa import SEED_SIZE as MLDSA_SEED_SIZE
from qudag_core.crypto.mldsa import SIG_SIZE as MLDSA_SIG_SIZE
from qudag_core.crypto.mldsa import MlDsa65PrivateKey, MlDsa65PublicKey
from qudag_core.crypto.xwing import PK_SIZE as XWING_PK_SIZE
from qudag_core.crypto.xwing import SK_SIZE as XWING_SEED_SIZE
from qudag_core.crypto.xwing import XWingPrivateKey, XWingPublicKey
from qudag_core.errors import CryptoError, InvalidSignature, LocalProtocolError, RemoteProtocolError

__all__ = [
    "NODE_ID_SIZE",
    "CERT_VERSION",
    "MAX_ADDRESSES",
    "MAX_CERT_SIZE",
    "CERT_SIGNATURE_CONTEXT",
    "NodeId",
    "NodeAddress",
    "NodeCertificate",
    "CertificateCache",
    "Identity",
    "CertificateError",
    "CertificateTruncated",
    "CertificateTrailingBytes",
    "CertificateBadLength",
    "CertificateUnknownVersion",
    "CertificateBadAddress",
    "CertificateBadSignature",
    "CertificateExpired",
    "CertificateNotYetValid",
]

NODE_ID_SIZE = 20
CERT_VERSION = 1
MAX_ADDRESSES = 8
CERT_SIGNATURE_CONTEXT = b"qudag 2026 node-certificate"
_NODE_ID_CONTEXT = "qudag 2026 identity node-id"
_IDENTITY_DIGEST_CONTEXT = "qudag 2026 identity digest"
_ADDR_V4 = 4
_ADDR_V6 = 6
# Largest encoding: every fixed field plus MAX_ADDRESSES IPv6 entries.
MAX_CERT_SIZE = 1 + 2 + MLDSA_PK_SIZE + 2 + XWING_PK_SIZE + 1 + MAX_ADDRESSES * 19 + 16 + 2 + MLDSA_SIG_SIZE
_U64_MAX = (1 << 64) - 1

SECRET_MLDSA = "mldsa65-seed"
SECRET_XWING = "xwing-seed"


# --------------------------------------------------------------------------- errors

def identity_digest_of(mldsa_public_key: bytes) -> bytes:
    """The 32-byte identity digest of an ML-DSA-65 public key: what ``Identity`` and
    ``NodeCertificate`` call ``identity_digest`` and what a dark address commits to."""
    return derive_key(_IDENTITY_DIGEST_CONTEXT, bytes(mldsa_public_key), 32)

class CertificateError(RemoteProtocolError):
    """A node certificate is malformed, badly signed or outside its validity window."""

    error_code = 0x20


class CertificateTruncated(CertificateError):
    """The encoding ends before the certificate does."""

    error_code = 0x21


class CertificateTrailingBytes(CertificateError):
    """Bytes follow the signature."""

    error_code = 0x22


class CertificateBadLength(CertificateError):
    """A length field does not hold the one value this version allows."""

    error_code = 0x23


class CertificateUnknownVersion(CertificateError):
    """The version byte names no version we implement."""

    error_code = 0x24


class CertificateBadAddress(CertificateError):
    """An address entry has an unknown type, a zero port, or there are too many."""

    error_code = 0x25


class CertificateBadSignature(CertificateError):
    """The signature or one of the public keys does not verify."""

    error_code = 0x26


class CertificateExpired(CertificateError):
    """``now`` is at or past ``expires_at``."""

    error_code = 0x27


class CertificateNotYetValid(CertificateError):
    """``now`` is before ``issued_at``."""

    error_code = 0x28


# --------------------------------------------------------------------------- NodeId
class NodeId(bytes):
    """A 20-byte self-certifying node id (immutable ``bytes`` subclass)."""

    __slots__ = ()

    def __new__(cls, raw: bytes) -> "NodeId":
        if len(raw) != NODE_ID_SIZE:
            raise ValueError(f"NodeId must be {NODE_ID_SIZE} bytes, got {len(raw)}")
        return bytes.__new__(cls, raw)

    @classmethod
    def from_public_key(cls, mldsa_public_key: bytes) -> "NodeId":
        return cls(derive_key(_NODE_ID_CONTEXT, bytes(mldsa_public_key), NODE_ID_SIZE))

    @classmethod
    def from_hex(cls, text: str) -> "NodeId":
        return cls(bytes.fromhex(text))

    def distance(self, other: bytes) -> int:
        """Kademlia XOR distance as an integer (BEP 5)."""
        if len(other) != NODE_ID_SIZE:
            raise ValueError("distance needs another 20-byte id")
        return int.from_bytes(self, "big") ^ int.from_bytes(other, "big")

    def __repr__(self) -> str:
        return f"NodeId({self.hex()})"

    def __str__(self) -> str:
        return self.hex()


# --------------------------------------------------------------------------- addresses
class NodeAddress(tuple):
    """``(host, port)`` with ``host`` a normalised IPv4 or IPv6 literal."""

    __slots__ = ()

    def __new__(cls, host: str, port: int) -> "NodeAddress":
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise CertificateBadAddress(f"not an IP address: {host!r}") from None
        if not isinstance(port, int) or not 0 < port < 65536:
            raise CertificateBadAddress(f"bad port {port!r}")
        return tuple.__new__(cls, (str(ip), port))

    @property
    def host(self) -> str:
        return self[0]

    @property
    def port(self) -> int:
        return self[1]

    def encode(self) -> bytes:
        ip = ipaddress.ip_address(self[0])
        kind = _ADDR_V4 if ip.version == 4 else _ADDR_V6
        return bytes((kind,)) + ip.packed + struct.pack(">H", self[1])


def _normalise_addresses(addresses) -> tuple:
    out = []
    for entry in addresses:
        if isinstance(entry, NodeAddress):
            out.append(entry)
        else:
            host, port = entry
            out.append(NodeAddress(host, port))
    if len(out) > MAX_ADDRESSES:
        raise CertificateBadAddress(f"at most {MAX_ADDRESSES} addresses, got {len(out)}")
    return tuple(out)


# --------------------------------------------------------------------------- certificate
class NodeCertificate:
    """A signed binding of an X-Wing static key and addresses to an ML-DSA identity.

    Parsed keys are cached on the object (``xwing_key()``, ``mldsa_key()``) so that a
    certificate served from ``CertificateCache`` costs no re-parsing on the hot path."""

    __slots__ = (
        "version",
        "mldsa_public_key",
        "xwing_public_key",
        "addresses",
        "issued_at",
        "expires_at",
        "signature",
        "_encoded",
        "_node_id",
        "_identity_digest",
        "_xwing",
        "_mldsa",
        "_verified",
    )

    def __init__(
        self,
        *,
        mldsa_public_key: bytes,
        xwing_public_key: bytes,
        addresses=(),
        issued_at: int,
        expires_at: int,
        signature: bytes = b"",
        version: int = CERT_VERSION,
    ) -> None:
        self.version = version
        self.mldsa_public_key = bytes(mldsa_public_key)
        self.xwing_public_key = bytes(xwing_public_key)
        self.addresses = _normalise_addresses(addresses)
        self.issued_at = int(issued_at)
        self.expires_at = int(expires_at)
        self.signature = bytes(signature)
        self._encoded = None
        self._node_id = None
        self._identity_digest = None
        self._xwing = None
        self._mldsa = None
        self._verified = False
        if len(self.mldsa_public_key) != MLDSA_PK_SIZE or len(self.xwing_public_key) != XWING_PK_SIZE:
            raise CertificateBadLength("public key of the wrong length")
        if not 0 <= self.issued_at < self.expires_at <= _U64_MAX:
            raise CertificateBadLength("need 0 <= issued_at < expires_at < 2**64")

    # -- encoding
    def signed_part(self) -> bytes:
        parts = [
            struct.pack(">BH", self.version, len(self.mldsa_public_key)),
            self.mldsa_public_key,
            struct.pack(">H", len(self.xwing_public_key)),
            self.xwing_public_key,
            bytes((len(self.addresses),)),
        ]
        parts.extend(a.encode() for a in self.addresses)
        parts.append(struct.pack(">QQ", self.issued_at, self.expires_at))
        return b"".join(parts)

    def to_bytes(self) -> bytes:
        if self._encoded is None:
            if len(self.signature) != MLDSA_SIG_SIZE:
                raise LocalProtocolError("certificate is not signed")
            self._encoded = self.signed_part() + struct.pack(">H", len(self.signature)) + self.signature
        return self._encoded

    @classmethod
    def from_bytes(cls, data: bytes) -> "NodeCertificate":
        """Strict parse; raises a ``CertificateError`` subclass, never anything else."""
        data = bytes(data)
        n = len(data)
        if n > MAX_CERT_SIZE:
            raise CertificateTrailingBytes(f"certificate of {n} bytes exceeds {MAX_CERT_SIZE}")
        pos = 0

        def take(k: int) -> bytes:
            nonlocal pos
            if pos + k > n:
                raise CertificateTruncated(f"certificate truncated at byte {pos} (needs {k} more)")
            chunk = data[pos : pos + k]
            pos += k
            return chunk

        version = take(1)[0]
        if version != CERT_VERSION:
            raise CertificateUnknownVersion(f"unknown certificate version {version}")
        if struct.unpack(">H", take(2))[0] != MLDSA_PK_SIZE:
            raise CertificateBadLength("ML-DSA public key length")
        mldsa_pk = take(MLDSA_PK_SIZE)
        if struct.unpack(">H", take(2))[0] != XWING_PK_SIZE:
            raise CertificateBadLength("X-Wing public key length")
        xwing_pk = take(XWING_PK_SIZE)
        count = take(1)[0]
        if count > MAX_ADDRESSES:
            raise CertificateBadAddress(f"{count} addresses, at most {MAX_ADDRESSES}")
        addrs = []
        for _ in range(count):
            kind = take(1)[0]
            if kind == _ADDR_V4:
                host = str(ipaddress.IPv4Address(take(4)))
            elif kind == _ADDR_V6:
                host = str(ipaddress.IPv6Address(take(16)))
            else:
                raise CertificateBadAddress(f"unknown address type {kind}")
            port = struct.unpack(">H", take(2))[0]
            addrs.append(NodeAddress(host, port))
        issued_at, expires_at = struct.unpack(">QQ", take(16))
        if not issued_at < expires_at:
            raise CertificateBadLength("issued_at must precede expires_at")
        if struct.unpack(">H", take(2))[0] != MLDSA_SIG_SIZE:
            raise CertificateBadLength("signature length")
        sig = take(MLDSA_SIG_SIZE)
        if pos != n:
            raise CertificateTrailingBytes(f"{n - pos} bytes after the signature")
        cert = cls(
            mldsa_public_key=mldsa_pk,
            xwing_public_key=xwing_pk,
            addresses=addrs,
            issued_at=issued_at,
            expires_at=expires_at,
            signature=sig,
            version=version,
        )
        cert._encoded = data
        return cert

    # -- derived values, computed once
    @property
    def node_id(self) -> NodeId:
        if self._node_id is None:
            self._node_id = NodeId.from_public_key(self.mldsa_public_key)
        return self._node_id

    @property
    def identity_digest(self) -> bytes:
        """32-byte BLAKE3 digest of the ML-DSA key: what the handshake transcript binds."""
        if self._identity_digest is None:
            self._identity_digest = derive_key(_IDENTITY_DIGEST_CONTEXT, self.mldsa_public_key, 32)
        return self._identity_digest

    def xwing_key(self) -> XWingPublicKey:
        if self._xwing is None:
            try:
                self._xwing = XWingPublicKey(self.xwing_public_key)
            except CryptoError as exc:
                raise CertificateBadSignature(f"certified X-Wing key rejected: {exc}") from None
        return self._xwing

    def mldsa_key(self) -> MlDsa65PublicKey:
        if self._mldsa is None:
            try:
                self._mldsa = MlDsa65PublicKey(self.mldsa_public_key)
            except CryptoError as exc:
                raise CertificateBadSignature(f"ML-DSA key rejected: {exc}") from None
        return self._mldsa

    # -- checks
    def check_validity(self, now: float) -> None:
        if now < self.issued_at:
            raise CertificateNotYetValid(f"certificate valid from {self.issued_at}, now {now:.0f}")
        if now >= self.expires_at:
            raise CertificateExpired(f"certificate expired at {self.expires_at}, now {now:.0f}")

    def verify(self, now: float) -> None:
        """Check the signature (once per object) and the validity window at ``now``."""
        if not self._verified:
            try:
                self.mldsa_key().verify(self.signature, self.signed_part(), CERT_SIGNATURE_CONTEXT)
            except InvalidSignature:
                raise CertificateBadSignature("certificate signature does not verify") from None
            self.xwing_key()
            self._verified = True
        self.check_validity(now)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeCertificate) and other.to_bytes() == self.to_bytes()

    def __hash__(self) -> int:
        return hash(self.to_bytes())

    def __repr__(self) -> str:
        return (
            f"NodeCertificate(node_id={self.node_id.hex()}, addresses={list(self.addresses)!r}, "
            f"issued_at={self.issued_at}, expires_at={self.expires_at})"
        )


_CACHE_INDEX = 32  # bytes of the encoding's tail that index CertificateCache


class CertificateCache:
    """Bounded LRU of signature-verified certificates, matched on the whole encoding.

    ``verify(data, now)`` parses and checks a certificate the first time and returns the
    cached ``NodeCertificate`` (with its parsed keys) afterwards; the validity window is
    checked on every call.  ``signature_checks`` counts ML-DSA verifications done."""

    __slots__ = ("_entries", "max_entries", "hits", "misses", "signature_checks")

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._entries: OrderedDict = OrderedDict()
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self.signature_checks = 0

    def __len__(self) -> int:
        return len(self._entries)

    def verify(self, data, now: float) -> NodeCertificate:
        if isinstance(data, NodeCertificate):
            data = data.to_bytes()
        elif type(data) is not bytes:
            data = bytes(data)  # a memoryview compares element by element: copy once
        key = data[-_CACHE_INDEX:]
        cert = self._entries.get(key)
        if cert is not None and cert._encoded == data:
            self.hits += 1
            self._entries.move_to_end(key)
            cert.check_validity(now)
            return cert
        self.misses += 1
        cert = NodeCertificate.from_bytes(data)
        self.signature_checks += 1
        cert.verify(now)
        self._entries[key] = cert
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return cert

    def add_verified(self, cert: NodeCertificate) -> None:
        """Insert a certificate we issued or already verified (e.g. our own)."""
        cert._verified = True
        self._entries[cert.to_bytes()[-_CACHE_INDEX:]] = cert
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


# --------------------------------------------------------------------------- identity
class Identity:
    """A node's long-term secrets: the ML-DSA-65 identity key and the static X-Wing key."""

    __slots__ = ("signing_key", "kem_key", "node_id", "_digest")

    def __init__(self, mldsa_seed: bytes, xwing_seed: bytes) -> None:
        if len(mldsa_seed) != MLDSA_SEED_SIZE or len(xwing_seed) != XWING_SEED_SIZE:
            raise ValueError("identity seeds must be 32 bytes each")
        self.signing_key = MlDsa65PrivateKey(mldsa_seed)
        self.kem_key = XWingPrivateKey(xwing_seed)
        self.node_id = NodeId.from_public_key(self.signing_key.public_key.raw)
        self._digest = derive_key(_IDENTITY_DIGEST_CONTEXT, self.signing_key.public_key.raw, 32)

    @classmethod
    def generate(cls, rng) -> "Identity":
        return cls(rng(MLDSA_SEED_SIZE), rng(XWING_SEED_SIZE))

    @property
    def identity_digest(self) -> bytes:
        return self._digest

    def issue_certificate(self, addresses=(), now: float = 0, lifetime: int = 7 * 86400) -> NodeCertificate:
        """Sign a certificate valid from ``int(now)`` for ``lifetime`` seconds."""
        if lifetime <= 0:
            raise ValueError("lifetime must be positive")
        issued = int(now)
        cert = NodeCertificate(
            mldsa_public_key=self.signing_key.public_key.raw,
            xwing_public_key=self.kem_key.public_key.raw,
            addresses=addresses,
            issued_at=issued,
            expires_at=issued + int(lifetime),
        )
        cert.signature = self.signing_key.sign(cert.signed_part(), CERT_SIGNATURE_CONTEXT)
        cert._mldsa = self.signing_key.public_key
        cert._xwing = self.kem_key.public_key
        cert._node_id = self.node_id
        cert._verified = True
        return cert

    def secrets(self) -> dict:
        """Named secret blobs for the keystore: ``mldsa65-seed`` and ``xwing-seed``."""
        return {SECRET_MLDSA: self.signing_key.seed, SECRET_XWING: self.kem_key.seed}

    @classmethod
    def from_secrets(cls, secrets: dict) -> "Identity":
        try:
            return cls(secrets[SECRET_MLDSA], secrets[SECRET_XWING])
        except KeyError as exc:
            raise ValueError(f"identity secret {exc.args[0]!r} missing") from None

    def __repr__(self) -> str:
        return f"Identity(node_id={self.node_id.hex()})"
