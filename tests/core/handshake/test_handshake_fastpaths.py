"""The shortcuts the handshake takes for speed (docs/handshake.md §7) keep its meaning:
in-place padding check (§2 INIT body), cached transcript prefixes (§3.1), certificate
cache matched on the whole encoding (§1), zero-copy frame bodies (§2 framing)."""
from __future__ import annotations

import struct

import pytest

from qudag_core.crypto import Transcript
from qudag_core.crypto.aead import ChaCha20Poly1305Key
from qudag_core.crypto.hashing import derive_key
from qudag_core.crypto.xwing import XWingPrivateKey
from qudag_core.handshake import steps
from qudag_core.handshake.errors import MalformedMessage
from qudag_core.handshake.steps import PROTOCOL_LABEL, initiator_finish, responder_finish, responder_process
from qudag_core.handshake.wire import CERT_PLAINTEXT_SIZE, T_FINISH, FrameReader, encode_versions
from qudag_core.identity import CertificateBadSignature, CertificateCache

from handshake_helpers import NOW, Rng, certificate, handshake_pair, identity


def _init_with_plaintext(rng, make_pt):
    """An INIT built with the real key schedule around a chosen certificate plaintext
    (what a buggy or hostile initiator could send)."""
    cert_r = certificate("responder")
    vfield = encode_versions((1,))
    eph = XWingPrivateKey(rng(32))
    ss1, ct1_m = cert_r.xwing_key().encapsulate_with_x25519(eph.x25519_key)
    epk = eph.public_key.raw
    h1 = steps._transcript_start(vfield, cert_r, epk, ct1_m + epk[-32:]).digest()
    pt = make_pt(certificate("initiator").to_bytes())
    assert len(pt) == CERT_PLAINTEXT_SIZE
    enc = ChaCha20Poly1305Key(derive_key(steps._CTX_CERT_KEY, ss1 + h1)).seal(bytes(12), pt, h1)
    return vfield + epk + ct1_m + enc + b"\x00"


def _pad(cert: bytes, clen: int | None = None, fill: bytes = b"") -> bytes:
    head = struct.pack(">H", len(cert) if clen is None else clen) + cert
    pad = bytearray(CERT_PLAINTEXT_SIZE - len(head))
    pad[: len(fill)] = fill
    return head + bytes(pad)


def _process(init):
    return responder_process(Rng(b"r"), identity("responder"), certificate("responder"), init,
                             now=NOW, cert_cache=CertificateCache())


def test_zero_padding_accepted():
    st, resp = _process(_init_with_plaintext(Rng(b"ok"), _pad))
    assert st.peer_certificate.node_id == identity("initiator").node_id and len(resp) > 0


@pytest.mark.parametrize("where", [0, 1, 70, -1])
def test_nonzero_padding_rejected(where):
    def make(cert):
        pt = bytearray(_pad(cert))
        pt[(2 + len(cert) + where) if where >= 0 else where] = 1
        return bytes(pt)

    with pytest.raises(MalformedMessage):
        _process(_init_with_plaintext(Rng(b"pad%d" % where), make))


def test_certificate_length_beyond_plaintext_rejected():
    def make(cert):
        return struct.pack(">H", CERT_PLAINTEXT_SIZE - 1) + cert + bytes(CERT_PLAINTEXT_SIZE - 2 - len(cert))

    with pytest.raises(MalformedMessage):
        _process(_init_with_plaintext(Rng(b"len"), make))


@pytest.mark.parametrize("responder", ["responder", "other responder"])
@pytest.mark.parametrize("versions", [(1,), (3, 2, 1)])
def test_cached_transcript_prefix_equals_item_by_item(responder, versions):
    cert = certificate(responder)
    vfield = encode_versions(versions)
    epk, ct1 = bytes(range(256)) * 4 + bytes(192), b"\x07" * 1120

    def reference():
        t = Transcript(PROTOCOL_LABEL)
        for label, value in ((b"versions", vfield), (b"responder identity", cert.identity_digest),
                             (b"responder static", cert.xwing_public_key), (b"initiator ephemeral", epk),
                             (b"ct responder static", ct1)):
            t.append(label, value)
        return t.digest()

    want = reference()
    steps._PREFIXES.clear()
    assert steps._transcript_start(vfield, cert, epk, ct1).digest() == want  # cache miss
    assert steps._transcript_start(memoryview(vfield), cert, epk, ct1).digest() == want  # hit
    # the cached prefix is copied, never advanced by a handshake
    t = steps._transcript_start(vfield, cert, epk, ct1)
    t.absorb(b"\x00\x01x", b"more")
    assert steps._transcript_start(vfield, cert, epk, ct1).digest() == want


def test_transcript_prefix_cache_is_bounded():
    cert = certificate("responder")
    steps._PREFIXES.clear()
    for n in range(steps._PREFIX_CACHE_SIZE + 10):
        steps._transcript_start(encode_versions((n % 65535 + 1,)), cert, b"e", b"c")
    assert 0 < len(steps._PREFIXES) <= steps._PREFIX_CACHE_SIZE


def test_certificate_cache_hits_only_on_identical_bytes():
    raw = certificate("initiator").to_bytes()
    cache = CertificateCache()
    first = cache.verify(raw, NOW)
    assert cache.verify(memoryview(raw), NOW) is first and cache.verify(bytearray(raw), NOW) is first
    assert cache.hits == 2 and cache.signature_checks == 1
    # Same last 32 bytes (the index), one byte changed earlier: not a hit.
    forged = bytearray(raw)
    forged[100] ^= 1
    with pytest.raises(CertificateBadSignature):
        cache.verify(bytes(forged), NOW)
    assert cache.signature_checks == 2
    assert cache.verify(raw, NOW) is first


def test_frame_reader_fast_path_body_is_a_view_of_the_input():
    data = bytes((T_FINISH, 0, 32)) + b"f" * 32
    ftype, body = FrameReader().next_frame_from(data, {T_FINISH: 32})
    assert ftype == T_FINISH and isinstance(body, memoryview) and body.obj is data and body == b"f" * 32
    ftype, body = FrameReader().next_frame_from(bytearray(data), {T_FINISH: 32})
    assert type(body) is bytes and body == b"f" * 32


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview])
def test_handshake_over_any_bytes_like_input(wrap):
    init, resp = handshake_pair()
    resp.receive_data(wrap(init.data_to_send()))
    ev_i = init.receive_data(wrap(resp.data_to_send()))
    ev_r = resp.receive_data(wrap(init.data_to_send()))
    assert ev_i[0].session_id == ev_r[0].session_id and ev_i[0].tx_key == ev_r[0].rx_key


def test_steps_accept_memoryview_messages():
    rng = Rng(b"views")
    st_i, init = steps.initiator_start(rng, identity("initiator"), certificate("initiator"), certificate("responder"))
    st_r, resp = responder_process(rng, identity("responder"), certificate("responder"), memoryview(init),
                                   now=NOW, cert_cache=CertificateCache())
    keys_i, fin = initiator_finish(st_i, memoryview(resp))
    keys_r = responder_finish(st_r, memoryview(fin))
    assert keys_i.session_id == keys_r.session_id
