"""STUN codec: RFC 5769 / RFC 8489 Appendix B golden messages, malformed-input cases,
and Hypothesis properties (round trips; any bytes give a message or StunError)."""
from __future__ import annotations

import ipaddress
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import _stun_vectors as V
from qudag_core.errors import RemoteProtocolError
from qudag_core.nat import stun as S
from qudag_core.nat.stun import Attr, StunError

ST_KEY = S.short_term_key(V.SHORT_TERM_PASSWORD)
LT_KEY_MD5 = S.long_term_key(V.LT_USERNAME, V.LT_REALM, V.LT_PASSWORD)
LT_KEY_SHA256 = S.long_term_key(V.LT_USERNAME, V.LT_REALM, V.LT_PASSWORD, S.PASSWORD_ALGORITHM_SHA256)

# (name, bytes, sha1 key, sha256 key, fingerprint?, pad byte)
GOLDEN = [
    ("RFC 5769 §2.1 request", V.RFC5769_REQUEST, ST_KEY, None, True, 0x20),
    ("RFC 5769 §2.2 IPv4 response", V.RFC5769_IPV4_RESPONSE, ST_KEY, None, True, 0x20),
    ("RFC 5769 §2.3 IPv6 response", V.RFC5769_IPV6_RESPONSE, ST_KEY, None, True, 0x20),
    ("RFC 5769 §2.4 long-term request", V.RFC5769_LONG_TERM_REQUEST, LT_KEY_MD5, None, False, 0),
    ("RFC 8489 App. B.1 SHA-256 request", V.RFC8489_B1_REQUEST, None, LT_KEY_SHA256, False, 0),
]
GOLDEN_IDS = [g[0] for g in GOLDEN]


@pytest.mark.parametrize("name,raw,key1,key256,fp,pad", GOLDEN, ids=GOLDEN_IDS)
def test_golden_parse_verify_reencode(name, raw, key1, key256, fp, pad, vector_count):
    msg = S.parse_message(raw)
    assert msg.method == S.METHOD_BINDING
    if key1 is not None:
        assert msg.verify_integrity(key1)
        assert not msg.verify_integrity(key1[:-1] + bytes([key1[-1] ^ 1]))
    if key256 is not None:
        assert msg.verify_integrity_sha256(key256)
        assert not msg.verify_integrity_sha256(LT_KEY_MD5)
    assert msg.verify(key1 if key1 is not None else key256)
    assert (msg.get(Attr.FINGERPRINT) is not None) == fp
    plain = [(t, v) for t, v in msg.attributes
             if t not in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)]
    again = S.encode_message(msg.method, msg.msg_class, msg.transaction_id, plain,
                             integrity_key=key1, integrity_sha256_key=key256,
                             fingerprint=fp, pad_byte=pad)
    assert again == raw
    vector_count("RFC 5769 / RFC 8489 App. B STUN messages", 1)


def test_rfc5769_request_fields():
    msg = S.parse_message(V.RFC5769_REQUEST)
    assert msg.msg_class == S.CLASS_REQUEST and msg.transaction_id == V.TXID
    assert msg.text(Attr.SOFTWARE) == "STUN test client"
    assert msg.text(Attr.USERNAME) == "evtj:h6vY"  # the 0x20 padding is not part of it
    assert msg.get(0x0024) == bytes.fromhex("6e0001ff")  # PRIORITY (RFC 8445)
    assert msg.get(0x8029) == bytes.fromhex("932ff9b151263b36")  # ICE-CONTROLLED
    # PRIORITY (0x0024) is comprehension-required and not a STUN attribute: a plain STUN
    # server would answer this request with 420 listing it (§6.3.1.1).
    assert S.unknown_comprehension_required(msg) == [0x0024]


def test_rfc5769_responses_addresses():
    v4 = S.parse_message(V.RFC5769_IPV4_RESPONSE)
    v6 = S.parse_message(V.RFC5769_IPV6_RESPONSE)
    assert v4.msg_class == S.CLASS_SUCCESS
    assert v4.text(Attr.SOFTWARE) == "test vector"
    assert v4.mapped_address() == ("192.0.2.1", 32853)
    assert v6.mapped_address() == ("2001:db8:1234:5678:11:2233:4455:6677", 32853)
    assert S.encode_xor_address("192.0.2.1", 32853, V.TXID) == v4.get(Attr.XOR_MAPPED_ADDRESS)
    assert S.encode_xor_address("2001:db8:1234:5678:11:2233:4455:6677", 32853, V.TXID) == v6.get(Attr.XOR_MAPPED_ADDRESS)


def test_rfc5769_long_term_fields():
    msg = S.parse_message(V.RFC5769_LONG_TERM_REQUEST)
    assert msg.text(Attr.USERNAME) == V.LT_USERNAME
    assert msg.text(Attr.NONCE) == V.LT_NONCE
    assert msg.text(Attr.REALM) == V.LT_REALM
    assert not msg.has(Attr.FINGERPRINT)
    assert not msg.verify(ST_KEY)


def test_rfc8489_b1_fields():
    msg = S.parse_message(V.RFC8489_B1_REQUEST)
    assert msg.get(Attr.USERHASH) == S.userhash(V.LT_USERNAME, V.LT_REALM)
    assert msg.text(Attr.NONCE) == V.RFC8489_B1_NONCE
    assert msg.text(Attr.REALM) == V.LT_REALM
    assert S.decode_password_algorithms(msg.get(Attr.PASSWORD_ALGORITHM)) == [(S.PASSWORD_ALGORITHM_SHA256, b"")]
    assert msg.has_integrity_sha256 and not msg.has_integrity
    assert not msg.verify_integrity(LT_KEY_SHA256)  # no SHA-1 MAC there at all


def test_every_byte_flip_is_caught():
    """Flipping any bit of a fingerprinted vector breaks FINGERPRINT (StunError), or the
    header checks; flips in the long-term vector (no FINGERPRINT) break the MAC."""
    for raw in (V.RFC5769_REQUEST, V.RFC5769_IPV4_RESPONSE, V.RFC5769_IPV6_RESPONSE):
        for i in range(len(raw)):
            bad = bytearray(raw)
            bad[i] ^= 0x01
            try:
                msg = S.parse_message(bytes(bad))
            except StunError:
                continue
            # Only a flip of FINGERPRINT's own type code survives: it turns into an
            # unknown attribute after MESSAGE-INTEGRITY, which §14.5 says to ignore.
            assert i in (len(raw) - 8, len(raw) - 7)
            assert not msg.has(Attr.FINGERPRINT) and len(msg.ignored) == 1
    raw = V.RFC5769_LONG_TERM_REQUEST
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x40
        try:
            msg = S.parse_message(bytes(bad))
        except StunError:
            continue
        assert not msg.verify(LT_KEY_MD5), i


def test_padding_value_is_ignored():
    raw = bytearray(V.RFC5769_LONG_TERM_REQUEST)
    # USERNAME is 18 bytes: its two padding bytes sit at 20+4+18.
    raw[42] = raw[43] = 0xAB
    msg = S.parse_message(bytes(raw))
    assert msg.text(Attr.USERNAME) == V.LT_USERNAME


# ---- malformed input: each of the bugs STUN parsers have shipped with -------------------

def _hdr(length, mtype=0x0001, cookie=S.MAGIC_COOKIE, tid=b"\x01" * 12):
    return struct.pack("!HHI12s", mtype, length, cookie, tid)


def _attr(t, v, pad=b"\0"):
    return struct.pack("!HH", t, len(v)) + v + pad * ((4 - len(v) % 4) % 4)


def _msg(*attrs, mtype=0x0101):
    body = b"".join(attrs)
    return _hdr(len(body), mtype) + body


MALFORMED = {
    "empty": b"",
    "short header": _hdr(0)[:19],
    "length not multiple of 4": _hdr(2) + b"\0\0",
    "length larger than datagram": _hdr(8) + b"\0" * 4,
    "length smaller than datagram (trailing garbage)": _hdr(0) + b"\0" * 4,
    "bad cookie": _hdr(0, cookie=0x2112A443),
    "top bits set": _hdr(0, mtype=0xC001),
    "attribute header truncated": _hdr(4) + b"\x80\x22\x00",
    "attribute length past end": _hdr(8) + struct.pack("!HH", 0x8022, 8) + b"abcd",
    "attribute padding past end": _hdr(8) + struct.pack("!HH", 0x8022, 5) + b"abcd",
    "attribute length 0xFFFF": _hdr(4) + struct.pack("!HH", 0x0020, 0xFFFF),
    "MESSAGE-INTEGRITY too short": _msg(_attr(Attr.MESSAGE_INTEGRITY, b"\0" * 16)),
    "MESSAGE-INTEGRITY too long": _msg(_attr(Attr.MESSAGE_INTEGRITY, b"\0" * 24)),
    "MESSAGE-INTEGRITY-SHA256 too short": _msg(_attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * 12)),
    "MESSAGE-INTEGRITY-SHA256 unaligned": _msg(_attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * 18)),
    "MESSAGE-INTEGRITY-SHA256 too long": _msg(_attr(Attr.MESSAGE_INTEGRITY_SHA256, b"\0" * 36)),
    "FINGERPRINT wrong size": _msg(_attr(Attr.FINGERPRINT, b"\0" * 8)),
    "FINGERPRINT not last": _msg(_attr(Attr.FINGERPRINT, b"\0" * 4), _attr(Attr.SOFTWARE, b"x")),
    "FINGERPRINT wrong value": _msg(_attr(Attr.FINGERPRINT, b"\0" * 4)),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_messages_raise_stun_error(name):
    with pytest.raises(StunError) as info:
        S.parse_message(MALFORMED[name])
    assert isinstance(info.value, RemoteProtocolError)
    assert info.value.error_code == 400


BAD_VALUES = {
    "xor ipv4 with ipv6 length": (S.decode_xor_address, b"\x00\x01\x00\x01" + b"\0" * 16),
    "xor ipv6 with ipv4 length": (S.decode_xor_address, b"\x00\x02\x00\x01" + b"\0" * 4),
    "xor too short": (S.decode_xor_address, b"\x00\x01"),
    "xor unknown family": (S.decode_xor_address, b"\x00\x03\x00\x01" + b"\0" * 4),
    "address ipv4 truncated": (S.decode_address, b"\x00\x01\x00\x01\x7f\x00"),
    "address ipv6 truncated": (S.decode_address, b"\x00\x02\x00\x01" + b"\0" * 15),
    "error code shorter than 4": (S.decode_error_code, b"\x00\x00\x04"),
    "error code class 7": (S.decode_error_code, b"\x00\x00\x07\x00"),
    "error code number 100": (S.decode_error_code, b"\x00\x00\x04\x64"),
    "unknown attributes odd": (S.decode_unknown_attributes, b"\x00\x01\x00"),
    "u32 short": (S.decode_u32, b"\0\0\0"),
    "change request long": (S.decode_change_request, b"\0" * 8),
    "password algorithm truncated": (S.decode_password_algorithms, b"\x00\x02\x00"),
    "password algorithm params past end": (S.decode_password_algorithms, b"\x00\x02\x00\x08abcd"),
}


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_malformed_attribute_values(name):
    fn, value = BAD_VALUES[name]
    with pytest.raises(StunError):
        if fn is S.decode_xor_address:
            fn(value, b"\0" * 12)
        else:
            fn(value)


def test_text_limits_and_utf8():
    with pytest.raises(StunError):
        S.decode_text(b"a" * 513, Attr.USERNAME)
    assert S.decode_text(b"a" * 512, Attr.USERNAME) == "a" * 512
    with pytest.raises(StunError):
        S.decode_text(b"\xff\xfe", Attr.REALM)


def test_attributes_after_integrity_are_ignored():
    tid = b"\x07" * 12
    base = S.encode_message(S.METHOD_BINDING, S.CLASS_SUCCESS, tid,
                            [(Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address("10.0.0.1", 5, tid))],
                            integrity_key=b"k")
    # Append an attribute after MESSAGE-INTEGRITY (and fix the header length): it must
    # be ignored, and the MAC (computed over the prefix) must still verify.
    extra = _attr(Attr.XOR_MAPPED_ADDRESS, S.encode_xor_address("6.6.6.6", 6, tid))
    raw = base[:2] + struct.pack("!H", len(base) - 20 + len(extra)) + base[4:] + extra
    msg = S.parse_message(raw)
    assert msg.verify_integrity(b"k")
    assert msg.mapped_address() == ("10.0.0.1", 5)
    assert [t for t, _ in msg.ignored] == [Attr.XOR_MAPPED_ADDRESS]
    # A second MESSAGE-INTEGRITY after the first is ignored too, not re-anchored.
    raw2 = base[:2] + struct.pack("!H", len(base) - 20 + 24) + base[4:] + _attr(Attr.MESSAGE_INTEGRITY, b"\0" * 20)
    msg2 = S.parse_message(raw2)
    assert msg2.verify_integrity(b"k")


def test_integrity_covers_length_adjustment_with_fingerprint():
    """§14.5: the MAC's length field counts up to MESSAGE-INTEGRITY, not the FINGERPRINT
    after it; moving MI one attribute later must not verify."""
    tid = b"\x09" * 12
    attrs = [(Attr.SOFTWARE, b"qudag"), (Attr.USERNAME, b"u")]
    raw = S.encode_message(S.METHOD_BINDING, S.CLASS_REQUEST, tid, attrs,
                           integrity_key=b"secret", integrity_sha256_key=b"secret", fingerprint=True)
    msg = S.parse_message(raw)
    assert msg.verify_integrity(b"secret") and msg.verify_integrity_sha256(b"secret")
    assert [t for t, _ in msg.attributes][-3:] == [Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT]
    # Recompute the SHA-1 MAC by hand over the documented span.
    off = msg._mi_offset
    import hmac as _h
    prefix = raw[:2] + struct.pack("!H", off - 20 + 24) + raw[4:off]
    assert _h.new(b"secret", prefix, "sha1").digest() == msg.get(Attr.MESSAGE_INTEGRITY)


def test_truncated_sha256_integrity_verifies():
    tid = b"\x0a" * 12
    key = b"key"
    body = _attr(Attr.SOFTWARE, b"x")
    import hmac as _h
    hdr = S._HDR.pack(S.message_type(1, 0), len(body) + 4 + 16, S.MAGIC_COOKIE, tid)
    mac = _h.new(key, hdr + body, "sha256").digest()[:16]
    raw = hdr + body + _attr(Attr.MESSAGE_INTEGRITY_SHA256, mac)
    assert S.parse_message(raw).verify_integrity_sha256(key)
    assert not S.parse_message(raw).verify_integrity_sha256(b"other")


def test_trailing_garbage_and_stream_framing():
    raw = V.RFC5769_IPV4_RESPONSE
    with pytest.raises(StunError):
        S.parse_message(raw + b"\0\0\0\0")
    # Stream framing (§6.2.2): fed byte by byte, the length is known once 20 bytes are in.
    for i in range(len(raw) + 1):
        got = S.frame_length(raw[:i])
        assert got == (None if i < 20 else len(raw))
    with pytest.raises(StunError):
        S.frame_length(b"\xff" * 20)
    assert S.is_stun(raw) and not S.is_stun(raw + b"\0\0\0\0") and not S.is_stun(b"hello")


def test_binding_response_420_and_optional_unknowns():
    tid = b"\x0b" * 12
    req = S.encode_message(S.METHOD_BINDING, S.CLASS_REQUEST, tid,
                           [(0x7F01, b"??"), (0xC001, b"ok"), (0x7F01, b"dup")])
    resp, origin = S.binding_response(req, ("192.0.2.7", 4000), ("192.0.2.1", 3478))
    msg = S.parse_message(resp)
    assert msg.msg_class == S.CLASS_ERROR and msg.error_code() == (420, "Unknown Attribute")
    assert S.decode_unknown_attributes(msg.get(Attr.UNKNOWN_ATTRIBUTES)) == [0x7F01]
    # Comprehension-optional unknowns are ignored: success.
    req = S.encode_message(S.METHOD_BINDING, S.CLASS_REQUEST, tid, [(0xC001, b"ok")], fingerprint=True)
    resp, origin = S.binding_response(req, ("192.0.2.7", 4000), ("192.0.2.1", 3478))
    msg = S.parse_message(resp)
    assert msg.msg_class == S.CLASS_SUCCESS and msg.mapped_address() == ("192.0.2.7", 4000)
    # CHANGE-REQUEST without an alternate address: 420 (RFC 5780 §6.1); with one: honoured.
    req = S.encode_message(S.METHOD_BINDING, S.CLASS_REQUEST, tid,
                           [(Attr.CHANGE_REQUEST, S.encode_change_request(True, True))])
    resp, _ = S.binding_response(req, ("192.0.2.7", 4000), ("192.0.2.1", 3478))
    assert S.parse_message(resp).error_code()[0] == 420
    resp, origin = S.binding_response(req, ("192.0.2.7", 4000), ("192.0.2.1", 3478),
                                      other_address=("192.0.2.2", 3479))
    assert origin == ("192.0.2.2", 3479)
    assert S.parse_message(resp).address(Attr.RESPONSE_ORIGIN) == origin
    # Not a Binding request: dropped silently.
    assert S.binding_response(resp, ("192.0.2.7", 4000), ("192.0.2.1", 3478)) is None
    assert S.binding_response(b"junk", ("192.0.2.7", 4000), ("192.0.2.1", 3478)) is None


def test_message_type_bits():
    # RFC 8489 §5: Binding request 0x0001, success 0x0101, error 0x0111, indication 0x0011.
    assert S.message_type(1, S.CLASS_REQUEST) == 0x0001
    assert S.message_type(1, S.CLASS_SUCCESS) == 0x0101
    assert S.message_type(1, S.CLASS_ERROR) == 0x0111
    assert S.message_type(1, S.CLASS_INDICATION) == 0x0011
    assert S.message_type(S.METHOD_ALLOCATE, S.CLASS_REQUEST) == 0x0003
    for method in range(0x1000):
        for cls in range(4):
            assert S.split_message_type(S.message_type(method, cls)) == (method, cls)


def test_long_term_key_and_opaque_string():
    assert S.long_term_key("user", "realm", "pass").hex() == "8493fbc53ba582fb4c044c456bdc40eb"
    assert S.opaque_string("a\u00a0b") == "a b"  # non-ASCII space mapped
    assert S.opaque_string("e\u0301") == "\u00e9"  # NFC
    from qudag_core.errors import LocalProtocolError
    with pytest.raises(LocalProtocolError):
        S.opaque_string("")
    with pytest.raises(LocalProtocolError):
        S.opaque_string("a\x00")


# ---- properties -------------------------------------------------------------------------

_attr_types = st.integers(0, 0xFFFF).filter(
    lambda t: t not in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT))


@settings(max_examples=300, deadline=None)
@given(method=st.integers(0, 0xFFF), cls=st.integers(0, 3), tid=st.binary(min_size=12, max_size=12),
       attrs=st.lists(st.tuples(_attr_types, st.binary(max_size=40)), max_size=8),
       k1=st.none() | st.binary(min_size=1, max_size=32), k2=st.none() | st.binary(min_size=1, max_size=32),
       fp=st.booleans(), pad=st.integers(0, 255))
def test_encode_parse_round_trip(method, cls, tid, attrs, k1, k2, fp, pad):
    raw = S.encode_message(method, cls, tid, attrs, integrity_key=k1, integrity_sha256_key=k2,
                           fingerprint=fp, pad_byte=pad)
    msg = S.parse_message(raw)
    assert (msg.method, msg.msg_class, msg.transaction_id) == (method, cls, tid)
    plain = [(t, v) for t, v in msg.attributes
             if t not in (Attr.MESSAGE_INTEGRITY, Attr.MESSAGE_INTEGRITY_SHA256, Attr.FINGERPRINT)]
    assert plain == attrs and msg.ignored == []
    if k1 is not None:
        assert msg.verify_integrity(k1)
    if k2 is not None:
        assert msg.verify_integrity_sha256(k2)
    assert S.frame_length(raw) == len(raw) and S.is_stun(raw)


_ipv4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_ipv6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))


@settings(max_examples=200, deadline=None)
@given(host=_ipv4 | _ipv6, port=st.integers(0, 65535), tid=st.binary(min_size=12, max_size=12))
def test_address_round_trips(host, port, tid):
    assert S.decode_xor_address(S.encode_xor_address(host, port, tid), tid) == (host, port)
    assert S.decode_address(S.encode_address(host, port)) == (host, port)


@settings(max_examples=100, deadline=None)
@given(code=st.integers(300, 699), reason=st.text(max_size=40))
def test_error_code_round_trip(code, reason):
    assert S.decode_error_code(S.encode_error_code(code, reason)) == (code, reason)


def _exercise(msg):
    """Every typed view on every attribute: only StunError may come out."""
    for t, v in msg.attributes + msg.ignored:
        for fn in (S.decode_address, S.decode_error_code, S.decode_unknown_attributes,
                   S.decode_change_request, S.decode_u32, S.decode_password_algorithms):
            try:
                fn(v)
            except StunError:
                pass
        try:
            S.decode_xor_address(v, msg.transaction_id)
        except StunError:
            pass
        try:
            S.decode_text(v, t)
        except StunError:
            pass
    msg.verify(b"k")
    msg.verify_integrity(b"k")
    msg.verify_integrity_sha256(b"k")
    S.unknown_comprehension_required(msg)


def _fuzz_one(data):
    try:
        msg = S.parse_message(data)
    except StunError:
        return
    _exercise(msg)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_give_message_or_stun_error(data):
    _fuzz_one(data)


@st.composite
def _plausible(draw):
    """Valid header (cookie, aligned length matching) around arbitrary attribute bytes, so
    the fuzzer gets past the header checks into the attribute walk."""
    chunks = draw(st.lists(st.tuples(st.sampled_from([
        0x0001, 0x0009, 0x000A, 0x0020, 0x0008, 0x001C, 0x8028, 0x0003, 0x802C, 0x001D, 0x8002,
        0x0006, 0x0014]) | st.integers(0, 0xFFFF), st.integers(0, 80), st.binary(max_size=64)), max_size=6))
    body = b""
    for t, declared, value in chunks:
        body += struct.pack("!HH", t, declared) + value
    body += b"\0" * ((4 - len(body) % 4) % 4)
    mtype = draw(st.integers(0, 0x3FFF))
    raw = struct.pack("!HHI12s", mtype, len(body), S.MAGIC_COOKIE, draw(st.binary(min_size=12, max_size=12))) + body
    if draw(st.booleans()):  # sometimes append a correct FINGERPRINT so parsing gets to the end
        hdr = raw[:2] + struct.pack("!H", len(body) + 8) + raw[4:]
        crc = (zlib.crc32(hdr) ^ S.FINGERPRINT_XOR) & 0xFFFFFFFF
        raw = hdr + struct.pack("!HHI", Attr.FINGERPRINT, 4, crc)
    return raw


@settings(max_examples=500, deadline=None)
@given(_plausible())
def test_plausible_messages_give_message_or_stun_error(data):
    _fuzz_one(data)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([g[1] for g in GOLDEN]), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), max_size=4),
       st.integers(0, 200))
def test_mutated_vectors_give_message_or_stun_error(raw, flips, cut):
    data = bytearray(raw)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    _fuzz_one(bytes(data[:max(cut, 0)] if cut < len(data) else data))
