"""Passphrase-encrypted keystore: named secrets sealed with scrypt + ChaCha20-Poly1305.

Pure (no I/O): ``seal_keystore`` returns bytes, ``open_keystore`` takes bytes;
``qudag_io.keystore`` writes them to disk.  Primitives: scrypt (RFC 7914) from
``cryptography``, BLAKE3 ``derive_key`` (BLAKE3 §2.6) for key separation and the
integrity checksum, ChaCha20-Poly1305 (RFC 8439) for the payload.

Format, version 1 (all integers big-endian)::

    offset size
       0    8   magic            b"QUDAGKS\\0"
       8    1   format version   1
       9    1   KDF id           1 = scrypt
      10    1   log2(n)          scrypt cost, 1..20
      11    1   r                scrypt block size, 1..16
      12    1   p                scrypt parallelism, 1..4
      13   16   salt
      29   12   AEAD nonce
      41   16   passphrase check  derive_key("qudag 2026 keystore passphrase-check", K)[:16]
      57    n   ChaCha20-Poly1305 ciphertext of the secrets, AAD = bytes 0..56
     -32   32   checksum          BLAKE3(bytes 0..end-32)

``K = scrypt(P, salt, n, r, p, 32)`` with ``P = derive_key("qudag 2026 keystore
passphrase", passphrase)``: scrypt's PBKDF2-HMAC step zero-pads short passphrases and
hashes long ones, so plain scrypt treats ``"pw"`` and ``"pw\\0"`` (or a long passphrase
and its SHA-256) as the same passphrase; the prehash removes those collisions.  The AEAD
key is ``derive_key("qudag 2026 keystore aead-key", K)``.  Plaintext: u16 count, then per
secret u8 name length, UTF-8 name, u32 value length, value; names unique, nothing
trailing.

The decision a reader will ask about: how a wrong passphrase is told apart from a
damaged file.  Two checks, in this order:

1. The unkeyed BLAKE3 checksum over the whole file.  Any accidental change -- a
   truncation, a flipped bit anywhere (header, salt, KDF parameters, check value,
   ciphertext) -- fails it and gives ``KeystoreCorrupt`` without running the KDF.  It
   is not a MAC: whoever edits the file on purpose can recompute it.
2. The passphrase check value, derived from the KDF output.  A mismatch gives
   ``WrongPassphrase``.  A deliberate edit of the salt, the KDF parameters or the check
   value (with the checksum recomputed) is indistinguishable from a wrong passphrase
   and is reported as one.  If the check value matches but the AEAD fails, the
   ciphertext, nonce or header was edited: ``KeystoreCorrupt``.

KDF parameters are capped on load before anything is allocated (n <= 2**20,
r <= 16, p <= 4, and scrypt memory 128*r*n <= 256 MiB), so a hostile file cannot
make us allocate gigabytes; ``seal_keystore`` enforces the same caps so that we
never write a file we would refuse to read.  Error messages carry lengths and
parameter values only, never secret material.
"""
from __future__ import annotations

import hmac
import struct

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from qudag_core.crypto.aead import ChaCha20Poly1305Key
from qudag_core.crypto.hashing import blake3_hash, derive_key
from qudag_core.errors import DecryptError, QudagError

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "KDF_SCRYPT",
    "ScryptParams",
    "DEFAULT_KDF_PARAMS",
    "KeystoreError",
    "WrongPassphrase",
    "KeystoreCorrupt",
    "KeystoreUsageError",
    "seal_keystore",
    "open_keystore",
]

MAGIC = b"QUDAGKS\x00"
FORMAT_VERSION = 1
KDF_SCRYPT = 1

SALT_SIZE = 16
NONCE_SIZE = 12
CHECK_SIZE = 16
CHECKSUM_SIZE = 32
TAG_SIZE = 16
HEADER_SIZE = len(MAGIC) + 5 + SALT_SIZE + NONCE_SIZE + CHECK_SIZE  # 57
MIN_SIZE = HEADER_SIZE + TAG_SIZE + 2 + CHECKSUM_SIZE  # empty keystore: u16 count only

MAX_LOG2_N = 20
MAX_R = 16
MAX_P = 4
MAX_SCRYPT_MEMORY = 256 * 1024 * 1024
MAX_NAME = 255
MAX_SECRETS = 1024
MAX_VALUE = 1 << 20

_CTX_PASSPHRASE = "qudag 2026 keystore passphrase"
_CTX_AEAD_KEY = "qudag 2026 keystore aead-key"
_CTX_CHECK = "qudag 2026 keystore passphrase-check"


class KeystoreError(QudagError):
    """Base of the keystore's declared errors."""


class WrongPassphrase(KeystoreError):
    """The passphrase does not open this keystore (or its salt/KDF parameters were
    deliberately edited, which cannot be told apart)."""


class KeystoreCorrupt(KeystoreError):
    """The keystore is truncated, damaged, of an unknown format or version, or was
    tampered with."""


class KeystoreUsageError(KeystoreError, ValueError):
    """``seal_keystore`` was called with unusable arguments."""


class ScryptParams:
    """scrypt cost parameters (RFC 7914 §2): ``n`` a power of two, ``r``, ``p``."""

    __slots__ = ("n", "r", "p")

    def __init__(self, n: int = 2**15, r: int = 8, p: int = 1) -> None:
        self.n = n
        self.r = r
        self.p = p

    @property
    def log2_n(self) -> int:
        return self.n.bit_length() - 1

    def _problem(self) -> str | None:
        """Why these parameters are refused, or None when they are within the caps."""
        n, r, p = self.n, self.r, self.p
        if not (isinstance(n, int) and isinstance(r, int) and isinstance(p, int)):
            return "scrypt parameters must be integers"
        if n < 2 or n & (n - 1):
            return f"scrypt n must be a power of two >= 2, got {n}"
        if n > 1 << MAX_LOG2_N:
            return f"scrypt n = 2**{self.log2_n} exceeds the cap 2**{MAX_LOG2_N}"
        if not 1 <= r <= MAX_R:
            return f"scrypt r = {r} outside 1..{MAX_R}"
        if not 1 <= p <= MAX_P:
            return f"scrypt p = {p} outside 1..{MAX_P}"
        if 128 * r * n > MAX_SCRYPT_MEMORY:
            return f"scrypt memory 128*r*n = {128 * r * n} bytes exceeds the cap {MAX_SCRYPT_MEMORY}"
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScryptParams) and (self.n, self.r, self.p) == (other.n, other.r, other.p)

    def __hash__(self) -> int:
        return hash((self.n, self.r, self.p))

    def __repr__(self) -> str:
        return f"ScryptParams(n=2**{self.log2_n}, r={self.r}, p={self.p})"


DEFAULT_KDF_PARAMS = ScryptParams(2**15, 8, 1)


def _derive(passphrase: bytes, salt: bytes, params: ScryptParams) -> tuple[bytes, bytes]:
    """Return ``(aead_key, check_value)`` for this passphrase, salt and parameters."""
    prehashed = derive_key(_CTX_PASSPHRASE, passphrase)
    k = Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(prehashed)
    return derive_key(_CTX_AEAD_KEY, k), derive_key(_CTX_CHECK, k, CHECK_SIZE)


def _passphrase_bytes(passphrase) -> bytes:
    if isinstance(passphrase, str):
        raise KeystoreUsageError("passphrase must be bytes (encode the text, e.g. UTF-8)")
    return bytes(passphrase)


def _encode_secrets(secrets: dict[str, bytes]) -> bytes:
    if len(secrets) > MAX_SECRETS:
        raise KeystoreUsageError(f"at most {MAX_SECRETS} secrets, got {len(secrets)}")
    out = [struct.pack(">H", len(secrets))]
    for name in sorted(secrets):
        if not isinstance(name, str):
            raise KeystoreUsageError("secret names must be str")
        raw_name = name.encode("utf-8")
        if not 1 <= len(raw_name) <= MAX_NAME:
            raise KeystoreUsageError(f"secret name must be 1..{MAX_NAME} UTF-8 bytes, got {len(raw_name)}")
        value = secrets[name]
        if isinstance(value, str):
            raise KeystoreUsageError(f"secret {name!r} must be bytes, not str")
        value = bytes(value)
        if len(value) > MAX_VALUE:
            raise KeystoreUsageError(f"secret {name!r} is {len(value)} bytes, the cap is {MAX_VALUE}")
        out.append(struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">I", len(value)) + value)
    return b"".join(out)


def _decode_secrets(plaintext: bytes) -> dict[str, bytes]:
    """Strict inverse of ``_encode_secrets``; any deviation is ``KeystoreCorrupt``."""
    if len(plaintext) < 2:
        raise KeystoreCorrupt("keystore payload is truncated")
    (count,) = struct.unpack_from(">H", plaintext, 0)
    if count > MAX_SECRETS:
        raise KeystoreCorrupt(f"keystore payload claims {count} secrets, the cap is {MAX_SECRETS}")
    pos = 2
    out: dict[str, bytes] = {}
    for _ in range(count):
        if pos + 1 > len(plaintext):
            raise KeystoreCorrupt("keystore payload is truncated")
        name_len = plaintext[pos]
        pos += 1
        if name_len == 0 or pos + name_len + 4 > len(plaintext):
            raise KeystoreCorrupt("keystore payload has a bad secret name length")
        try:
            name = plaintext[pos : pos + name_len].decode("utf-8")
        except UnicodeDecodeError:
            raise KeystoreCorrupt("keystore payload has a secret name that is not UTF-8") from None
        pos += name_len
        (value_len,) = struct.unpack_from(">I", plaintext, pos)
        pos += 4
        if value_len > MAX_VALUE or pos + value_len > len(plaintext):
            raise KeystoreCorrupt("keystore payload has a bad secret length")
        if name in out:
            raise KeystoreCorrupt("keystore payload names one secret twice")
        out[name] = plaintext[pos : pos + value_len]
        pos += value_len
    if pos != len(plaintext):
        raise KeystoreCorrupt(f"keystore payload has {len(plaintext) - pos} trailing bytes")
    return out


def seal_keystore(
    secrets: dict[str, bytes],
    passphrase: bytes,
    rng,
    *,
    kdf_params: ScryptParams = DEFAULT_KDF_PARAMS,
) -> bytes:
    """Encrypt ``secrets`` (name -> bytes) under ``passphrase``; ``rng(n) -> bytes``
    supplies the salt and nonce.  Returns the keystore file contents."""
    if not isinstance(kdf_params, ScryptParams):
        raise KeystoreUsageError("kdf_params must be a ScryptParams")
    problem = kdf_params._problem()
    if problem is not None:
        raise KeystoreUsageError(problem)
    passphrase = _passphrase_bytes(passphrase)
    plaintext = _encode_secrets(secrets)
    salt = bytes(rng(SALT_SIZE))
    nonce = bytes(rng(NONCE_SIZE))
    if len(salt) != SALT_SIZE or len(nonce) != NONCE_SIZE:
        raise KeystoreUsageError("rng returned the wrong number of bytes")
    aead_key, check = _derive(passphrase, salt, kdf_params)
    header = (
        MAGIC
        + struct.pack(">BBBBB", FORMAT_VERSION, KDF_SCRYPT, kdf_params.log2_n, kdf_params.r, kdf_params.p)
        + salt
        + nonce
        + check
    )
    body = header + ChaCha20Poly1305Key(aead_key).seal(nonce, plaintext, header)
    return body + blake3_hash(body, CHECKSUM_SIZE)


def open_keystore(blob: bytes, passphrase: bytes) -> dict[str, bytes]:
    """Decrypt a keystore.  Raises ``KeystoreCorrupt`` or ``WrongPassphrase`` (see the
    module docstring for which one when), ``KeystoreUsageError`` for a str passphrase."""
    passphrase = _passphrase_bytes(passphrase)
    blob = bytes(blob)
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise KeystoreCorrupt("not a qudag keystore (bad magic)")
    if len(blob) < len(MAGIC) + 1:
        raise KeystoreCorrupt("keystore is truncated")
    version = blob[len(MAGIC)]
    if version != FORMAT_VERSION:
        raise KeystoreCorrupt(f"unsupported keystore format version {version} (this build reads {FORMAT_VERSION})")
    if len(blob) < MIN_SIZE:
        raise KeystoreCorrupt(f"keystore is truncated ({len(blob)} bytes, at least {MIN_SIZE} needed)")
    body, checksum = blob[:-CHECKSUM_SIZE], blob[-CHECKSUM_SIZE:]
    if not hmac.compare_digest(blake3_hash(body, CHECKSUM_SIZE), checksum):
        raise KeystoreCorrupt("keystore checksum mismatch: the file is damaged or truncated")
    kdf_id, log2_n, r, p = struct.unpack_from(">BBBB", body, len(MAGIC) + 1)
    if kdf_id != KDF_SCRYPT:
        raise KeystoreCorrupt(f"unknown keystore KDF id {kdf_id}")
    if not 1 <= log2_n <= MAX_LOG2_N:
        raise KeystoreCorrupt(f"keystore scrypt log2(n) = {log2_n} outside 1..{MAX_LOG2_N}")
    params = ScryptParams(1 << log2_n, r, p)
    problem = params._problem()
    if problem is not None:
        raise KeystoreCorrupt(f"keystore KDF parameters refused: {problem}")
    off = len(MAGIC) + 5
    salt = body[off : off + SALT_SIZE]
    nonce = body[off + SALT_SIZE : off + SALT_SIZE + NONCE_SIZE]
    check = body[off + SALT_SIZE + NONCE_SIZE : HEADER_SIZE]
    aead_key, expected = _derive(passphrase, salt, params)
    if not hmac.compare_digest(check, expected):
        raise WrongPassphrase("wrong passphrase for this keystore")
    try:
        plaintext = ChaCha20Poly1305Key(aead_key).open(nonce, body[HEADER_SIZE:], body[:HEADER_SIZE])
    except DecryptError:
        raise KeystoreCorrupt("keystore failed authentication: it was tampered with") from None
    return _decode_secrets(plaintext)
