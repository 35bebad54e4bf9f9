"""Dark addresses, aliases and ephemeral identities (docs/dark.md §1-2).

A dark address is a self-certifying name, shaped after the Tor v3 onion address
(rend-spec-v3 §6 "Encoding onion addresses": base32(PUBKEY | CHECKSUM | VERSION)):

    address  = base32(DIGEST | CHECKSUM | VERSION) + ".dark"     (lowercase, no padding)
    DIGEST   = 32-byte identity digest of the service's ML-DSA-65 key
               (derive_key("qudag 2026 identity digest", mldsa_pk), as ``Identity``)
    CHECKSUM = derive_key("qudag 2026 dark address checksum", DIGEST | VERSION)[:2]
    VERSION  = 0x01

35 bytes encode to exactly 56 base32 characters.  The design decision a reader asks
about: ML-DSA-65 public keys are 1,952 bytes, so unlike Tor's Ed25519 key the address
commits to a *hash* of the key; the key itself travels inside the encrypted descriptor
and the resolver checks it against DIGEST.

Human aliases (``my-domain.dark``) are first-come claims signed by their owner that point
at a full address (``AliasClaim``, ``AliasStore``).  A 56-character label made only of
base32 characters is always read as an address, never as an alias.
"""
from __future__ import annotations

import base64
import binascii
import struct
from collections import OrderedDict
from typing import Union

from qudag_core.crypto.hashing import derive_key
from qudag_core.crypto.mldsa import PK_SIZE as MLDSA_PK_SIZE
from qudag_core.crypto.mldsa import SIG_SIZE as MLDSA_SIG_SIZE
from qudag_core.crypto.mldsa import MlDsa65PrivateKey, MlDsa65PublicKey
from qudag_core.identity import identity_digest_of
from qudag_core.errors import CryptoError, InvalidSignature, QudagError, RemoteProtocolError

__all__ = [
    "ADDRESS_VERSION",
    "ADDRESS_LEN",
    "ADDRESS_TEXT_LEN",
    "SUFFIX",
    "DarkAddress",
    "Alias",
    "parse_name",
    "identity_digest_of",
    "ephemeral_signing_key",
    "AliasClaim",
    "AliasStore",
    "AddressError",
    "AddressSyntaxError",
    "AddressChecksumError",
    "AddressVersionError",
    "AliasSyntaxError",
    "AliasClaimError",
    "AliasRejected",
]

ADDRESS_VERSION = 1
DIGEST_LEN = 32
ADDRESS_LEN = DIGEST_LEN + 2 + 1
ADDRESS_TEXT_LEN = 56
SUFFIX = ".dark"
MAX_NAME_LEN = 63 + len(SUFFIX)
_CHECKSUM_CONTEXT = "qudag 2026 dark address checksum"
_EPHEMERAL_CONTEXT = "qudag 2026 dark ephemeral identity"
_ALIAS_CONTEXT = b"qudag 2026 dark alias claim"
_B32 = frozenset("abcdefghijklmnopqrstuvwxyz234567")
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


# --------------------------------------------------------------------------- errors
class AddressError(QudagError, ValueError):
    """A name is not a valid dark address or alias."""

    error_code = 0x50


class AddressSyntaxError(AddressError):
    """Not of the form ``<label>.dark`` with a well-formed label."""

    error_code = 0x51


class AddressChecksumError(AddressError):
    """The 56-character label decodes, but its checksum does not match (a typo)."""

    error_code = 0x52


class AddressVersionError(AddressError):
    """The checksum is right but the version byte names no version we implement."""

    error_code = 0x53


class AliasSyntaxError(AddressSyntaxError):
    """The alias label breaks the label rules (3-63 of [a-z0-9-], no edge or double hyphen)."""

    error_code = 0x54


class AliasClaimError(RemoteProtocolError):
    """An alias claim is malformed or its signature does not verify."""

    error_code = 0x55


class AliasRejected(RemoteProtocolError):
    """A well-formed claim the store refuses (taken by another owner, or not newer)."""

    error_code = 0x56


# --------------------------------------------------------------------------- addresses
def _checksum(digest: bytes, version: int) -> bytes:
    return derive_key(_CHECKSUM_CONTEXT, digest + bytes((version,)), 2)


class DarkAddress:
    """A parsed, checksum-verified dark address.  ``str(addr)`` is its text form."""

    __slots__ = ("identity_digest", "version", "_raw", "_text")

    def __init__(self, identity_digest: bytes, version: int = ADDRESS_VERSION) -> None:
        identity_digest = bytes(identity_digest)
        if len(identity_digest) != DIGEST_LEN:
            raise AddressSyntaxError(f"identity digest must be {DIGEST_LEN} bytes")
        if version != ADDRESS_VERSION:
            raise AddressVersionError(f"unknown dark address version {version}")
        self.identity_digest = identity_digest
        self.version = version
        self._raw = identity_digest + _checksum(identity_digest, version) + bytes((version,))
        self._text = base64.b32encode(self._raw).decode("ascii").lower() + SUFFIX

    @classmethod
    def from_public_key(cls, mldsa_public_key: bytes) -> "DarkAddress":
        return cls(identity_digest_of(mldsa_public_key))

    @classmethod
    def parse(cls, text: str) -> "DarkAddress":
        """Parse a full address; aliases are refused (use ``parse_name``)."""
        name = parse_name(text)
        if not isinstance(name, DarkAddress):
            raise AddressSyntaxError(f"{text!r} is an alias, not a full dark address")
        return name

    @classmethod
    def _from_label(cls, label: str) -> "DarkAddress":
        try:
            raw = base64.b32decode(label.upper())
        except (binascii.Error, ValueError):  # pragma: no cover - alphabet checked first
            raise AddressSyntaxError("label is not base32") from None
        digest, check, version = raw[:DIGEST_LEN], raw[DIGEST_LEN:DIGEST_LEN + 2], raw[-1]
        if _checksum(digest, version) != check:
            raise AddressChecksumError("dark address checksum mismatch (mistyped address?)")
        if version != ADDRESS_VERSION:
            raise AddressVersionError(f"unknown dark address version {version}")
        return cls(digest, version)

    @property
    def raw(self) -> bytes:
        """The 35 bytes DIGEST | CHECKSUM | VERSION (what every derivation hashes)."""
        return self._raw

    def matches_public_key(self, mldsa_public_key: bytes) -> bool:
        return identity_digest_of(mldsa_public_key) == self.identity_digest

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"DarkAddress({self._text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DarkAddress) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)


class Alias(str):
    """A validated, lowercase alias such as ``my-domain.dark`` (a ``str`` subclass)."""

    __slots__ = ()

    @property
    def label(self) -> str:
        return self[: -len(SUFFIX)]


def _check_alias_label(label: str) -> None:
    if not 3 <= len(label) <= 63:
        raise AliasSyntaxError(f"alias label must be 3-63 characters, got {len(label)}")
    if not set(label) <= _LABEL_CHARS:
        raise AliasSyntaxError("alias label may hold only letters, digits and hyphens")
    if label[0] == "-" or label[-1] == "-":
        raise AliasSyntaxError("alias label may not start or end with a hyphen")
    if "--" in label:
        raise AliasSyntaxError("alias label may not contain '--'")


def parse_name(text: object) -> Union[DarkAddress, Alias]:
    """Parse ``<label>.dark``: a 56-character base32 label is an address, anything else
    must satisfy the alias rules.  Case-insensitive (ASCII).  Raises ``AddressError``."""
    if not isinstance(text, str):
        raise AddressSyntaxError("a dark name is a string")
    if len(text) > MAX_NAME_LEN + 1 or not text.isascii():
        raise AddressSyntaxError("not a dark name (too long or not ASCII)")
    name = text.lower()
    if not name.endswith(SUFFIX):
        raise AddressSyntaxError("a dark name ends in '.dark'")
    label = name[: -len(SUFFIX)]
    if len(label) == ADDRESS_TEXT_LEN and set(label) <= _B32:
        return DarkAddress._from_label(label)
    _check_alias_label(label)
    return Alias(name)


# --------------------------------------------------------------------------- ephemeral
def ephemeral_signing_key(node_seed: bytes, index: int) -> MlDsa65PrivateKey:
    """The ``index``-th ephemeral ML-DSA identity of a node: its seed is
    derive_key("qudag 2026 dark ephemeral identity", node_seed | u32 index).  Unlinkable
    to the node's long-term key without ``node_seed``; use ``MlDsa65PrivateKey.generate``
    for a random one instead."""
    if len(node_seed) != 32:
        raise ValueError("node seed must be 32 bytes")
    if not 0 <= index < 1 << 32:
        raise ValueError("ephemeral index must fit in 32 bits")
    return MlDsa65PrivateKey(derive_key(_EPHEMERAL_CONTEXT, bytes(node_seed) + struct.pack(">I", index), 32))


# --------------------------------------------------------------------------- aliases
class AliasClaim:
    """A signed first-come claim: ``alias`` points at ``target``.

    Wire (big-endian): u8 version(1) | u8 len | alias | 35 target | u64 revision |
    1952 owner ML-DSA pk | 3309 signature over everything before it
    (context ``b"qudag 2026 dark alias claim"``)."""

    __slots__ = ("alias", "target", "owner_public_key", "revision", "signature")
    VERSION = 1

    def __init__(self, *, alias: str, target: DarkAddress, owner_public_key: bytes, revision: int, signature: bytes = b"") -> None:
        name = alias if isinstance(alias, Alias) else parse_name(alias)
        if not isinstance(name, Alias):
            raise AliasSyntaxError("alias claims name an alias, not an address")
        self.alias = name
        self.target = target
        self.owner_public_key = bytes(owner_public_key)
        self.revision = int(revision)
        self.signature = bytes(signature)
        if len(self.owner_public_key) != MLDSA_PK_SIZE or not 0 <= self.revision < 1 << 64:
            raise AliasClaimError("bad owner key length or revision")

    @classmethod
    def sign(cls, owner: MlDsa65PrivateKey, alias: str, target: DarkAddress, revision: int) -> "AliasClaim":
        name = parse_name(alias)
        if not isinstance(name, Alias):
            raise AliasSyntaxError(f"{alias!r} is not an alias")
        claim = cls(alias=name, target=target, owner_public_key=owner.public_key.raw, revision=revision)
        claim.signature = owner.sign(claim.signed_part(), _ALIAS_CONTEXT)
        return claim

    def signed_part(self) -> bytes:
        a = str(self.alias).encode("ascii")
        return bytes((self.VERSION, len(a))) + a + self.target.raw + struct.pack(">Q", self.revision) + self.owner_public_key

    def to_bytes(self) -> bytes:
        return self.signed_part() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> "AliasClaim":
        """Parse and verify; raises ``AliasClaimError`` / ``AddressError`` only."""
        data = bytes(data)
        if len(data) < 2 or data[0] != cls.VERSION:
            raise AliasClaimError("unknown alias claim version or truncated")
        n = data[1]
        want = 2 + n + ADDRESS_LEN + 8 + MLDSA_PK_SIZE + MLDSA_SIG_SIZE
        if len(data) != want:
            raise AliasClaimError(f"alias claim must be {want} bytes, got {len(data)}")
        try:
            alias_text = data[2 : 2 + n].decode("ascii")
        except UnicodeDecodeError:
            raise AliasClaimError("alias is not ASCII") from None
        name = parse_name(alias_text)
        if not isinstance(name, Alias) or str(name) != alias_text:
            raise AliasClaimError("claimed name is not a canonical alias")
        p = 2 + n
        raw_target = data[p : p + ADDRESS_LEN]
        target = DarkAddress._from_label(base64.b32encode(raw_target).decode("ascii").lower())
        p += ADDRESS_LEN
        (revision,) = struct.unpack(">Q", data[p : p + 8])
        p += 8
        claim = cls(alias=name, target=target, owner_public_key=data[p : p + MLDSA_PK_SIZE], revision=revision, signature=data[p + MLDSA_PK_SIZE :])
        try:
            MlDsa65PublicKey(claim.owner_public_key).verify(claim.signature, claim.signed_part(), _ALIAS_CONTEXT)
        except (InvalidSignature, CryptoError):
            raise AliasClaimError("alias claim signature does not verify") from None
        return claim


class AliasStore:
    """First-come alias registry (sans-IO, bounded LRU over aliases).

    Rule: the first valid claim for an alias wins; a claim by a different owner key is
    refused for as long as the entry is held; the same owner may update it with a
    strictly higher revision.  When full, the least recently *claimed* alias is evicted
    (so a long-lived store is first-come only within its memory bound -- docs/dark.md)."""

    __slots__ = ("_claims", "max_entries")

    def __init__(self, max_entries: int = 4096) -> None:
        self._claims: OrderedDict = OrderedDict()
        self.max_entries = max_entries

    def put(self, data: bytes) -> AliasClaim:
        """Verify and store; raises ``AliasClaimError``/``AddressError``/``AliasRejected``."""
        claim = AliasClaim.from_bytes(data)
        held = self._claims.get(str(claim.alias))
        if held is not None:
            if held.owner_public_key != claim.owner_public_key:
                raise AliasRejected(f"{claim.alias} is already claimed by another owner")
            if claim.revision <= held.revision:
                raise AliasRejected(f"revision {claim.revision} is not above {held.revision}")
        self._claims[str(claim.alias)] = claim
        self._claims.move_to_end(str(claim.alias))
        while len(self._claims) > self.max_entries:
            self._claims.popitem(last=False)
        return claim

    def get(self, alias: str) -> AliasClaim | None:
        return self._claims.get(str(alias).lower())

    def resolve(self, alias: str) -> DarkAddress | None:
        claim = self.get(alias)
        return None if claim is None else claim.target

    def __len__(self) -> int:
        return len(self._claims)
