"""Consume-once handshake steps and the key schedule (docs/handshake.md §2-§3).

The stream objects in ``connection.py`` drive these; tests and other transports may
call them directly (arti ``handshake.rs`` style)::

    st_i, init = initiator_start(rng, identity_i, cert_i, cert_r)
    st_r, resp = responder_process(rng, identity_r, cert_r, init_core, now=now, cert_cache=cache)
    keys_i, finish = initiator_finish(st_i, resp)
    keys_r = responder_finish(st_r, finish)

Each state object may be consumed once; a second use raises ``HandshakeUsageError``.

The decision a reader asks about: peers authenticate by *decapsulating* (KEMTLS /
Rosenpass style), not by signing each handshake.  The responder proves possession of
its certified static X-Wing key by decapsulating ``ct1`` (it needs ``ss1`` to produce
its confirmation tag); the initiator proves its certified static key by decapsulating
``ct3``.  ML-DSA is only used, once per certificate, to bind those KEM keys to the
identities; with the certificate cache that makes a handshake about 5 KEM operations
instead of two ~1 ms signatures.

Second decision: every ciphertext is a standard X-Wing ciphertext (decapsulated with
``XWingPrivateKey.decapsulate``), but each side *encapsulates* with one X25519 ephemeral
shared by its encapsulations: the initiator's ephemeral X-Wing key's X25519 half is the
``ct_X`` of ``ct1``, and the responder's two ciphertexts share one ``ct_X``.  The X25519
shares then follow Noise's ``es``/``ee``/``se`` pattern, the ML-KEM halves stay
independent and fresh, and a handshake costs 8 X25519 operations instead of 10
(docs/handshake.md §3.2 argues security).  ``mlkem_encapsulate`` is injectable so that
known-answer tests can replay recorded ML-KEM encapsulations (the library offers no
derandomised ML-KEM); every other random input comes from ``rng``.
"""
from __future__ import annotations

import hmac
import struct

from qudag_core.crypto.aead import ChaCha20Poly1305Key
from blake3 import blake3 as _blake3

from qudag_core.crypto.hashing import derive_key
from qudag_core.crypto.mlkem import CT_SIZE as MLKEM_CT_SIZE
from qudag_core.crypto.x25519 import X25519PrivateKey
from qudag_core.crypto.xwing import PK_SIZE as XWING_PK_SIZE
from qudag_core.crypto.xwing import XWingPrivateKey, XWingPublicKey
from qudag_core.errors import CryptoError, DecryptError
from qudag_core.handshake.errors import (
    AuthenticationFailed,
    HandshakeUsageError,
    MalformedMessage,
    UnsupportedVersion,
)
from qudag_core.handshake.wire import (
    CERT_PLAINTEXT_SIZE,
    CONFIRM_SIZE,
    RESPONSE_BODY_SIZE,
    X25519_SIZE,
    encode_versions,
    split_init,
)
from qudag_core.identity import CertificateCache, NodeCertificate

__all__ = [
    "PROTOCOL_LABEL",
    "SUPPORTED_VERSIONS",
    "TypedTranscript",
    "SessionKeys",
    "InitiatorState",
    "ResponderState",
    "initiator_start",
    "responder_process",
    "initiator_finish",
    "responder_finish",
]

PROTOCOL_LABEL = b"qudag 2026 handshake"
#: Versions this implementation speaks; the highest version both sides offer wins.
SUPPORTED_VERSIONS = (1,)
_ZERO_NONCE = bytes(12)
_XWING_X_OFFSET = XWING_PK_SIZE - X25519_SIZE
_CTX_CERT_KEY = "qudag 2026 handshake initiator-certificate key"
_CTX_CHAIN = "qudag 2026 handshake chaining key"
_CTX_CONFIRM_R = "qudag 2026 handshake responder confirmation"
_CTX_CONFIRM_I = "qudag 2026 handshake initiator confirmation"
# One 96-byte output: initiator-to-responder key || responder-to-initiator key || session id.
_CTX_SESSION = "qudag 2026 handshake session keys and id"


class SessionKeys:
    """What a finished handshake yields; the stream objects wrap it in
    ``HandshakeComplete``."""

    __slots__ = ("tx_key", "rx_key", "session_id", "version", "peer_certificate")

    def __init__(self, tx_key, rx_key, session_id, version, peer_certificate) -> None:
        self.tx_key: bytes = tx_key
        self.rx_key: bytes = rx_key
        self.session_id: bytes = session_id
        self.version: int = version
        self.peer_certificate: NodeCertificate = peer_certificate

    def __repr__(self) -> str:
        return f"SessionKeys(session_id={self.session_id.hex()}, version={self.version})"


class InitiatorState:
    """Initiator secrets between INIT and RESPONSE.  Consume once."""

    __slots__ = ("_used", "ephemeral", "static", "ss1", "transcript", "versions", "peer_certificate", "init_core")

    def __repr__(self) -> str:
        return "InitiatorState(<secret>)"


class ResponderState:
    """Responder secrets between RESPONSE and FINISH.  Consume once."""

    __slots__ = ("_used", "ck", "expected_confirm", "h4", "version", "peer_certificate")

    def __repr__(self) -> str:
        return "ResponderState(<secret>)"


def _session_keys(ck: bytes, h4: bytes):
    okm = derive_key(_CTX_SESSION, ck + h4, 96)
    return okm[:32], okm[32:64], okm[64:]


_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


def _label(label: bytes) -> bytes:
    return _U16.pack(len(label)) + label


# Transcript item labels, pre-encoded (u16 length || label).
_L_PROTOCOL = _label(b"protocol")
_L_VERSIONS = _label(b"versions")
_L_R_IDENTITY = _label(b"responder identity")
_L_R_STATIC = _label(b"responder static")
_L_I_EPHEMERAL = _label(b"initiator ephemeral")
_L_CT1 = _label(b"ct responder static")
_L_I_CERT = _label(b"initiator certificate")
_L_I_IDENTITY = _label(b"initiator identity")
_L_VERSION = _label(b"version")
_L_CT2 = _label(b"ct initiator ephemeral")
_L_CT3 = _label(b"ct initiator static")
_L_CONFIRM_R = _label(b"responder confirmation")
_L_CONFIRM_I = _label(b"initiator confirmation")


class TypedTranscript:
    """The handshake transcript: byte-for-byte the encoding of
    ``qudag_core.crypto.Transcript`` (u16 label length, label, u32 value length, value,
    starting with the item ``("protocol", PROTOCOL_LABEL)``), but absorbing a whole
    message's items in one BLAKE3 update.  ``tests/core/handshake`` checks that both
    produce the same digests."""

    __slots__ = ("_h",)

    def __init__(self, protocol_label: bytes = PROTOCOL_LABEL) -> None:
        self._h = _blake3()
        self.absorb(_L_PROTOCOL, protocol_label)

    def absorb(self, *items) -> None:
        """``items`` alternates pre-encoded labels and values."""
        parts = []
        for i in range(0, len(items), 2):
            value = items[i + 1]
            parts.append(items[i])
            parts.append(_U32.pack(len(value)))
            parts.append(value)
        self._h.update(b"".join(parts))

    def digest(self) -> bytes:
        return self._h.digest(32)


_T0 = TypedTranscript()


# Transcript states after the items every handshake with one responder shares
# (protocol, versions, responder identity and static key): public values only, so a
# small process-wide cache is safe; it saves hashing 1.3 kB per handshake and side.
_PREFIXES: dict = {}
_PREFIX_CACHE_SIZE = 256


def _transcript_start(versions_field: bytes, responder: NodeCertificate, epk: bytes, ct1: bytes) -> TypedTranscript:
    versions_field = bytes(versions_field)
    key = (versions_field, responder.identity_digest, responder.xwing_public_key)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        p = TypedTranscript.__new__(TypedTranscript)
        p._h = _T0._h.copy()
        p.absorb(_L_VERSIONS, key[0], _L_R_IDENTITY, key[1], _L_R_STATIC, key[2])
        if len(_PREFIXES) >= _PREFIX_CACHE_SIZE:
            _PREFIXES.clear()
        _PREFIXES[key] = prefix = p._h
    t = TypedTranscript.__new__(TypedTranscript)
    t._h = prefix.copy()
    t.absorb(_L_I_EPHEMERAL, epk, _L_CT1, ct1)
    return t


def initiator_start(
    rng,
    identity,
    certificate: NodeCertificate,
    peer_certificate: NodeCertificate,
    *,
    versions=SUPPORTED_VERSIONS,
    ephemeral_key: XWingPrivateKey | None = None,
    mlkem_encapsulate=None,
):
    """Build INIT.  Returns ``(InitiatorState, init_body)``; ``init_body`` ends with an
    empty cookie field.  ``peer_certificate`` must already be verified by the caller.
    ``ephemeral_key``/``mlkem_encapsulate`` exist for known-answer tests."""
    st = _initiator_start(rng, identity, certificate, peer_certificate, versions,
                          ephemeral_key, mlkem_encapsulate)
    return st, st.init_core + b"\x00"


def _initiator_start(rng, identity, certificate, peer_certificate, versions, ephemeral_key, mlkem_encapsulate):
    """``initiator_start`` without the cookie byte (``state.init_core`` is the INIT
    core), so the stream object can frame INIT without copying it twice."""
    versions_field = encode_versions(versions)
    eph = ephemeral_key if ephemeral_key is not None else XWingPrivateKey(rng(32))
    # ct1's X25519 share is the ephemeral key's own X25519 half (Noise "es").
    ss1, ct1_m = peer_certificate.xwing_key().encapsulate_with_x25519(eph.x25519_key, mlkem_encapsulate)
    epk = eph.public_key.raw
    t = _transcript_start(versions_field, peer_certificate, epk, ct1_m + epk[_XWING_X_OFFSET:])
    h1 = t.digest()
    cert_bytes = certificate.to_bytes()
    pt = b"".join((_U16.pack(len(cert_bytes)), cert_bytes, bytes(CERT_PLAINTEXT_SIZE - 2 - len(cert_bytes))))
    enc_cert = ChaCha20Poly1305Key(derive_key(_CTX_CERT_KEY, ss1 + h1)).seal(_ZERO_NONCE, pt, h1)
    t.absorb(_L_I_CERT, enc_cert, _L_I_IDENTITY, certificate.identity_digest)
    st = InitiatorState()
    st._used = False
    st.ephemeral = eph
    st.static = identity.kem_key
    st.ss1 = ss1
    st.transcript = t
    st.versions = tuple(versions)
    st.peer_certificate = peer_certificate
    st.init_core = b"".join((versions_field, epk, ct1_m, enc_cert))
    return st


def responder_process(
    rng,
    identity,
    certificate: NodeCertificate,
    init_body: bytes,
    *,
    now: float,
    cert_cache: CertificateCache,
    versions=SUPPORTED_VERSIONS,
    mlkem_encapsulate=None,
    kem_counter=None,
):
    """Check INIT and build RESPONSE.  Returns ``(ResponderState, response_body)``.
    Raises a declared ``HandshakeError`` or ``CertificateError``.  ``kem_counter``, if
    given, is called once per KEM operation (the cookie tests count them)."""
    core, offered, _cookie = split_init(init_body)
    return _responder_process(rng, identity, certificate, core, offered, now=now, cert_cache=cert_cache,
                              versions=versions, mlkem_encapsulate=mlkem_encapsulate, kem_counter=kem_counter)


def _responder_process(rng, identity, certificate, core, offered, *, now, cert_cache, versions,
                       mlkem_encapsulate, kem_counter):
    common = set(offered).intersection(versions)
    if not common:
        raise UnsupportedVersion(f"no common version: offered {list(offered)}, we speak {list(versions)}")
    version = max(common)
    vlen = 1 + 2 * len(offered)
    epk = core[vlen : vlen + XWING_PK_SIZE]
    # join, not +: the stream object hands in memoryview slices of the received frame.
    ct1 = b"".join((core[vlen + XWING_PK_SIZE : vlen + XWING_PK_SIZE + MLKEM_CT_SIZE], epk[_XWING_X_OFFSET:]))
    enc_cert = core[vlen + XWING_PK_SIZE + MLKEM_CT_SIZE :]
    t = _transcript_start(core[:vlen], certificate, epk, ct1)
    h1 = t.digest()
    if kem_counter is not None:
        kem_counter()
    try:
        ss1 = identity.kem_key.decapsulate(ct1)
    except CryptoError:
        raise MalformedMessage("INIT carries an unusable X-Wing ciphertext") from None
    try:
        pt = ChaCha20Poly1305Key(derive_key(_CTX_CERT_KEY, ss1 + h1)).open(_ZERO_NONCE, enc_cert, h1)
    except DecryptError:
        raise AuthenticationFailed("INIT does not decrypt: tampered, or not meant for this responder") from None
    clen = (pt[0] << 8) | pt[1]
    # Padding must be all zeros (counted in place, no copy of the tail).
    if clen > CERT_PLAINTEXT_SIZE - 2 or pt.count(0, 2 + clen) != CERT_PLAINTEXT_SIZE - 2 - clen:
        raise MalformedMessage("initiator certificate padding is malformed")
    peer = cert_cache.verify(pt[2 : 2 + clen], now)
    try:
        epk_key = XWingPublicKey(epk)
    except CryptoError:
        raise MalformedMessage("initiator ephemeral key is invalid") from None
    menc = mlkem_encapsulate
    if kem_counter is not None:
        kem_counter()
        kem_counter()
    # One X25519 ephemeral for both ciphertexts (Noise "ee" and "se").
    eph_x = X25519PrivateKey(rng(X25519_SIZE))
    try:
        ss2, ct2_m = epk_key.encapsulate_with_x25519(eph_x, menc)
    except CryptoError:
        raise MalformedMessage("initiator ephemeral X25519 share is of low order") from None
    ss3, ct3_m = peer.xwing_key().encapsulate_with_x25519(eph_x, menc)
    vfield = _U16.pack(version)
    ex = eph_x.public
    t.absorb(
        _L_I_CERT, enc_cert,
        _L_I_IDENTITY, peer.identity_digest,
        _L_VERSION, vfield,
        _L_CT2, ct2_m + ex,
        _L_CT3, ct3_m + ex,
    )
    h2 = t.digest()
    ck = derive_key(_CTX_CHAIN, ss1 + ss2 + ss3 + h2)
    confirm_r = derive_key(_CTX_CONFIRM_R, ck + h2)
    t.absorb(_L_CONFIRM_R, confirm_r)
    confirm_i = derive_key(_CTX_CONFIRM_I, ck + t.digest())
    t.absorb(_L_CONFIRM_I, confirm_i)
    st = ResponderState()
    st._used = False
    st.ck = ck
    st.expected_confirm = confirm_i
    st.h4 = t.digest()
    st.version = version
    st.peer_certificate = peer
    return st, b"".join((vfield, ex, ct2_m, ct3_m, confirm_r))


def initiator_finish(state: InitiatorState, response_body: bytes):
    """Check RESPONSE (the responder's key confirmation) and build FINISH.
    Returns ``(SessionKeys, finish_body)``."""
    if state._used:
        raise HandshakeUsageError("initiator state already consumed")
    state._used = True
    if len(response_body) != RESPONSE_BODY_SIZE:
        raise MalformedMessage(f"RESPONSE must be {RESPONSE_BODY_SIZE} bytes, got {len(response_body)}")
    version = (response_body[0] << 8) | response_body[1]
    if version not in state.versions:
        raise UnsupportedVersion(f"responder chose version {version}, which we did not offer")
    ex = response_body[2 : 2 + X25519_SIZE]
    p = 2 + X25519_SIZE
    ct2 = b"".join((response_body[p : p + MLKEM_CT_SIZE], ex))
    ct3 = b"".join((response_body[p + MLKEM_CT_SIZE : p + 2 * MLKEM_CT_SIZE], ex))
    confirm_r = response_body[p + 2 * MLKEM_CT_SIZE :]
    try:
        ss2 = state.ephemeral.decapsulate(ct2)
        ss3 = state.static.decapsulate(ct3)
    except CryptoError:
        raise AuthenticationFailed("RESPONSE carries an unusable X-Wing ciphertext") from None
    t = state.transcript
    t.absorb(_L_VERSION, response_body[:2], _L_CT2, ct2, _L_CT3, ct3)
    h2 = t.digest()
    ck = derive_key(_CTX_CHAIN, state.ss1 + ss2 + ss3 + h2)
    if not hmac.compare_digest(derive_key(_CTX_CONFIRM_R, ck + h2), confirm_r):
        raise AuthenticationFailed("responder key confirmation failed")
    t.absorb(_L_CONFIRM_R, confirm_r)
    confirm_i = derive_key(_CTX_CONFIRM_I, ck + t.digest())
    t.absorb(_L_CONFIRM_I, confirm_i)
    i2r, r2i, sid = _session_keys(ck, t.digest())
    state.ephemeral = state.static = state.ss1 = None
    return SessionKeys(i2r, r2i, sid, version, state.peer_certificate), confirm_i


def responder_finish(state: ResponderState, finish_body: bytes) -> SessionKeys:
    """Check FINISH (the initiator's key confirmation)."""
    if state._used:
        raise HandshakeUsageError("responder state already consumed")
    state._used = True
    if len(finish_body) != CONFIRM_SIZE:
        raise MalformedMessage(f"FINISH must be {CONFIRM_SIZE} bytes")
    if not hmac.compare_digest(state.expected_confirm, finish_body):
        raise AuthenticationFailed("initiator key confirmation failed")
    i2r, r2i, sid = _session_keys(state.ck, state.h4)
    state.ck = None
    return SessionKeys(r2i, i2r, sid, state.version, state.peer_certificate)
