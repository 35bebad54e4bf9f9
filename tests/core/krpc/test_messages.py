"""KRPC messages: BEP 5 example packets byte for byte, BEP 44 test vectors, the qudag
``qd_get``/``qd_put`` extension, restricted parsing and Hypothesis totality properties."""
from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qudag_core.errors import LocalProtocolError, RemoteProtocolError
from qudag_core.krpc import bencode as bc
from qudag_core.krpc import messages as m
from qudag_core.krpc.errors import BencodeError, DatagramTooLarge, KrpcError, KrpcErrorCode

LONG = os.environ.get("QUDAG_LONG") == "1"
PROPS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def n_examples(n: int) -> int:
    return n * 20 if LONG else n


def roundtrip(data: bytes):
    """Parse, re-encode byte for byte; also fed with trailing garbage and as every prefix."""
    msg = m.parse_message(data)
    assert msg.encode() == data
    with pytest.raises(KrpcError):
        m.parse_message(data + b"x")
    for i in (0, 1, len(data) // 2, len(data) - 1):
        with pytest.raises(KrpcError):
            m.parse_message(data[:i])
    return msg


# ---- BEP 5 "DHT Queries" example packets --------------------------------------------

def test_bep5_ping():
    # BEP 5 "DHT Queries" / ping, example packets.
    q = roundtrip(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe")
    assert q == m.Ping(transaction_id=b"aa", node_id=b"abcdefghij0123456789")
    r = roundtrip(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re")
    assert r == m.Response(transaction_id=b"aa", node_id=b"mnopqrstuvwxyz123456")
    assert q.fits_datagram() and q.encode_datagram() == q.encode()


def test_bep5_find_node():
    # BEP 5 "DHT Queries" / find_node, example packets.
    q = roundtrip(b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe")
    assert q == m.FindNode(transaction_id=b"aa", node_id=b"abcdefghij0123456789", target=b"mnopqrstuvwxyz123456")
    # The example response's "nodes" is the 9-byte placeholder "def456...": valid bencode,
    # but not compact node info (26 bytes per node), so the restricted parser rejects it.
    example = b"d1:rd2:id20:0123456789abcdefghij5:nodes9:def456...e1:t2:aa1:y1:re"
    assert bc.encode(bc.decode(example)) == example
    with pytest.raises(KrpcError) as ei:
        m.parse_message(example)
    assert ei.value.error_code == 203 and ei.value.transaction_id == b"aa"
    # The same response with one real compact node (BEP 5 "Contact Encoding").
    node = b"def456789abcdefghijk" + bytes([192, 0, 2, 1]) + (6881).to_bytes(2, "big")
    r = roundtrip(b"d1:rd2:id20:0123456789abcdefghij5:nodes26:" + node + b"e1:t2:aa1:y1:re")
    assert r.nodes == (m.NodeInfo(node_id=b"def456789abcdefghijk", ip=bytes([192, 0, 2, 1]), port=6881),)


def test_bep5_get_peers():
    # BEP 5 "DHT Queries" / get_peers, example packets.
    q = roundtrip(b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe")
    assert q == m.GetPeers(transaction_id=b"aa", node_id=b"abcdefghij0123456789", info_hash=b"mnopqrstuvwxyz123456")
    r = roundtrip(b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re")
    assert r.token == b"aoeusnth"
    assert r.values == (m.PeerAddr(ip=b"axje", port=int.from_bytes(b".u", "big")),
                        m.PeerAddr(ip=b"idht", port=int.from_bytes(b"nm", "big")))
    assert r.values[0].host == "97.120.106.101"
    # "Response with closest nodes" uses the 9-byte placeholder again: rejected (203).
    with pytest.raises(KrpcError) as ei:
        m.parse_message(b"d1:rd2:id20:abcdefghij01234567895:nodes9:def456...5:token8:aoeusnthe1:t2:aa1:y1:re")
    assert ei.value.error_code == 203


def test_bep5_announce_peer():
    # BEP 5 "DHT Queries" / announce_peer, example packets.  (The example's dict shows
    # implied_port, its bencoded form does not; the bencoded bytes are the golden ones.)
    q = roundtrip(b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe"
                  b"1:q13:announce_peer1:t2:aa1:y1:qe")
    assert q == m.AnnouncePeer(transaction_id=b"aa", node_id=b"abcdefghij0123456789",
                               info_hash=b"mnopqrstuvwxyz123456", port=6881, token=b"aoeusnth")
    r = roundtrip(b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re")
    assert r.node_id == b"mnopqrstuvwxyz123456"
    with_implied = m.AnnouncePeer(transaction_id=b"aa", node_id=b"abcdefghij0123456789",
                                  info_hash=b"mnopqrstuvwxyz123456", port=0, token=b"aoeusnth", implied_port=1)
    assert m.parse_message(with_implied.encode()) == with_implied
    with pytest.raises(LocalProtocolError):
        m.AnnouncePeer(transaction_id=b"aa", node_id=b"abcdefghij0123456789",
                       info_hash=b"mnopqrstuvwxyz123456", port=0, token=b"aoeusnth").encode()


def test_bep5_error():
    # BEP 5 "Errors", example error packet.
    e = roundtrip(b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee")
    assert e == m.Error(transaction_id=b"aa", code=201, message=b"A Generic Error Ocurred")


def test_top_level_version_and_bep42_ip():
    # BEP 5 "KRPC Protocol" (v), BEP 42 "Bootstrapping" (ip: compact requester address).
    r = m.Response(transaction_id=b"\x00\x01", client_version=b"QD\x00\x01", node_id=b"n" * 20,
                   ip=m.PeerAddr(ip=bytes([203, 0, 113, 9]), port=51413))
    data = r.encode()
    assert data == b"d2:ip6:\xcb\x00q\t\xc8\xd51:rd2:id20:" + b"n" * 20 + b"e1:t2:\x00\x011:v4:QD\x00\x011:y1:re"
    assert roundtrip(data) == r
    r6 = m.Response(transaction_id=b"t", node_id=b"n" * 20, ip=m.PeerAddr(ip=bytes(15) + b"\x01", port=1),
                    nodes6=(m.NodeInfo(node_id=b"x" * 20, ip=bytes(15) + b"\x01", port=6881),))
    assert roundtrip(r6.encode()) == r6


def test_unknown_method_and_unknown_keys():
    data = b"d1:ad5:extrai1e2:id20:abcdefghij0123456789e1:q9:vote_kick1:t2:aa1:y1:q3:zzzi7ee"
    q = m.parse_message(data)
    assert isinstance(q, m.UnknownQuery) and q.method == b"vote_kick" and q.node_id == b"abcdefghij0123456789"
    reply = m.Error(transaction_id=q.transaction_id, code=KrpcErrorCode.METHOD_UNKNOWN, message=b"Method Unknown")
    assert reply.encode() == b"d1:eli204e14:Method Unknowne1:t2:aa1:y1:ee"
    # Unknown keys are ignored (BEP 5) and not re-emitted.
    p = m.parse_message(b"d1:ad2:id20:abcdefghij01234567894:wantl2:n4ee1:q4:ping1:t2:aa1:y1:q2:zzlee")
    assert p.encode() == b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"


# ---- BEP 43 "Read-Only State" -------------------------------------------------------

def test_bep43_read_only_flag():
    # BEP 43 "Read-Only State": the read-only node puts 'ro' = 1 in the top-level dictionary
    # of each query, "This will appear in the request as '2:roi1e'".  The BEP has no full
    # example packet; this is BEP 5's ping example with that key in its sorted place.
    data = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping2:roi1e1:t2:aa1:y1:qe"
    q = roundtrip(data)
    assert q == m.Ping(transaction_id=b"aa", node_id=b"abcdefghij0123456789", read_only=True)
    assert b"2:roi1e" in q.encode()
    # without the flag the BEP 5 packet is unchanged
    assert m.Ping(transaction_id=b"aa", node_id=b"abcdefghij0123456789").encode() == data.replace(b"2:roi1e", b"")
    # the slot-by-slot lookup queries and the keyword-built ones carry it alike
    for q in (m.FindNode(transaction_id=b"f", node_id=b"i" * 20, target=b"t" * 20, read_only=True),
              m.GetPeers(transaction_id=b"g", node_id=b"i" * 20, info_hash=b"h" * 20, read_only=True),
              m.Get(transaction_id=b"g", node_id=b"i" * 20, target=b"t" * 20, read_only=True),
              m.Put(transaction_id=b"p", node_id=b"i" * 20, token=b"x", value=b"1:v", read_only=True),
              m.AnnouncePeer(transaction_id=b"a", node_id=b"i" * 20, info_hash=b"h" * 20, port=1,
                             token=b"x", read_only=True),
              m.UnknownQuery(transaction_id=b"u", method=b"frob", node_id=b"i" * 20, read_only=True)):
        parsed = roundtrip(q.encode())
        assert parsed == q and parsed.read_only is True
        assert parsed.encode() == q.encode() and b"2:roi1e" in parsed.encode()


@pytest.mark.parametrize("ro", [b"i0e", b"i2e", b"i-1e", b"1:1", b"le", b"de"])
def test_bep43_other_ro_values_are_ignored(ro):
    # Only 'ro' set to 1 is the flag (BEP 43: "inspect incoming queries for the 'ro' flag
    # set to 1"); anything else is an unknown value, ignored like unknown keys (BEP 5)
    # and not re-emitted, never a 203.
    data = b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping2:ro" + ro + b"1:t2:aa1:y1:qe"
    q = m.parse_message(data)
    assert q == m.Ping(transaction_id=b"aa", node_id=b"abcdefghij0123456789") and q.read_only is False
    assert q.encode() == b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe"


def test_bep43_ro_on_responses_and_errors_is_ignored():
    # BEP 43 defines 'ro' for queries only; on other messages it is an unknown key.
    r = m.parse_message(b"d1:rd2:id20:mnopqrstuvwxyz123456e2:roi1e1:t2:aa1:y1:re")
    assert r == m.Response(transaction_id=b"aa", node_id=b"mnopqrstuvwxyz123456")
    e = m.parse_message(b"d1:eli201e1:xe2:roi1e1:t2:aa1:y1:ee")
    assert e == m.Error(transaction_id=b"aa", code=201, message=b"x")


BAD = [
    (b"le", 203, None),
    (b"d1:y1:qe", 203, None),                                   # no t
    (b"d1:ti1e1:y1:qe", 203, None),                             # t not a string
    (b"d1:t0:1:y1:qe", 203, None),                              # empty t
    (b"d1:t2:aa1:y1:xe", 203, b"aa"),                           # bad y
    (b"d1:t2:aa1:y1:qe", 203, b"aa"),                           # query without q
    (b"d1:q4:ping1:t2:aa1:y1:qe", 203, b"aa"),                  # query without a
    (b"d1:ad2:id19:abcdefghij012345678e1:q4:ping1:t2:aa1:y1:qe", 203, b"aa"),   # short id
    (b"d1:ade1:q4:ping1:t2:aa1:y1:qe", 203, b"aa"),             # no id
    (b"d1:ad2:id20:abcdefghij01234567896:target3:abce1:q9:find_node1:t2:aa1:y1:qe", 203, b"aa"),
    (b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti0e5:token1:xe"
     b"1:q13:announce_peer1:t2:aa1:y1:qe", 203, b"aa"),          # port 0 without implied_port
    (b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti65536e5:token1:xe"
     b"1:q13:announce_peer1:t2:aa1:y1:qe", 203, b"aa"),
    (b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti1e5:token0:e"
     b"1:q13:announce_peer1:t2:aa1:y1:qe", 203, b"aa"),          # empty token
    (b"d1:eli201ee1:t2:aa1:y1:ee", 203, b"aa"),                 # e with one element
    (b"d1:el3:abc3:defe1:t2:aa1:y1:ee", 203, b"aa"),
    (b"d1:rd2:id20:abcdefghij01234567896:valuesl5:abcdeee1:t2:aa1:y1:re", 203, b"aa"),
    (b"d2:ipi1e1:rd2:id20:abcdefghij0123456789e1:t2:aa1:v3:abc1:y1:re", 203, b"aa"),
    (b"d2:ip6:\x01\x02\x03\x04\x00\x001:rd2:id20:abcdefghij0123456789e1:t2:aa1:y1:re", 203, b"aa"),  # ip port 0
]


@pytest.mark.parametrize("data,code,tid", BAD)
def test_restricted_parsing(data, code, tid):
    with pytest.raises(KrpcError) as ei:
        m.parse_message(data)
    assert ei.value.error_code == code
    assert ei.value.transaction_id == tid
    assert isinstance(ei.value, RemoteProtocolError)


def test_bencode_errors_are_krpc_errors():
    with pytest.raises(KrpcError) as ei:
        m.parse_message(b"d1:t2:aa1:y1:qe1:ai1ee")
    assert isinstance(ei.value, BencodeError) and ei.value.error_code == 203
    with pytest.raises(BencodeError):
        m.parse_message(b"d1:t2:aa" + b"x" * 2000 + b"e", max_size=1500)


# ---- BEP 44 ----------------------------------------------------------------------

BEP44_PK = bytes.fromhex("77ff84905a91936367c01360803104f92432fcd904a43511876df5cdf3e7e548")
BEP44_VALUE = b"12:Hello World!"
BEP44_VECTORS = [
    # BEP 44 "Test vectors", test 1 (mutable) and test 2 (mutable with salt).
    (b"", b"3:seqi1e1:v12:Hello World!", "4a533d47ec9c7d95b1ad75f576cffc641853b750",
     "305ac8aeb6c9c151fa120f120ea2cfb923564e11552d06a5d856091e5e853cff"
     "1260d3f39e4999684aa92eb73ffd136e6f4f3ecbfda0ce53a1608ecd7ae21f01"),
    (b"foobar", b"4:salt6:foobar3:seqi1e1:v12:Hello World!", "411eba73b6f087ca51a3795d9c8c938d365e32c1",
     "6834284b6b24c3204eb2fea824d82f88883a3d95e8b4a21b8c0ded553d17d17d"
     "df9a8a7104b1258f30bed3787e6cb896fca78c58f8e03b5f18f14951a87d9a08"),
]


@pytest.mark.parametrize("salt,buffer,target,sig", BEP44_VECTORS)
def test_bep44_mutable_vectors(salt, buffer, target, sig, vector_count):
    sig = bytes.fromhex(sig)
    assert m.mutable_signing_buffer(BEP44_VALUE, 1, salt) == buffer
    assert m.mutable_target(BEP44_PK, salt).hex() == target
    m.verify_mutable(BEP44_PK, sig, BEP44_VALUE, 1, salt)
    with pytest.raises(KrpcError) as ei:
        m.verify_mutable(BEP44_PK, sig, BEP44_VALUE, 2, salt)
    assert ei.value.error_code == KrpcErrorCode.INVALID_SIGNATURE
    # The same item inside a put message: parse, check target and signature, re-encode.
    put = m.Put(transaction_id=b"aa", node_id=b"i" * 20, token=b"tok", value=BEP44_VALUE, key=BEP44_PK,
                signature=sig, seq=1, salt=salt or None)
    parsed = roundtrip(put.encode())
    assert parsed == put and parsed.target().hex() == target
    parsed.verify()
    assert parsed.fits_datagram()
    vector_count("BEP 44 test vectors", 1)


def test_bep44_immutable_vector(vector_count):
    # BEP 44 "Test vectors", test 3 (immutable).
    assert m.immutable_target(BEP44_VALUE).hex() == "e5f96f6f38320f0f33959cb4d3d656452117aadb"
    put = m.Put(transaction_id=b"aa", node_id=b"i" * 20, token=b"tok", value=BEP44_VALUE)
    data = put.encode()
    assert data == b"d1:ad2:id20:" + b"i" * 20 + b"5:token3:tok1:v12:Hello World!e1:q3:put1:t2:aa1:y1:qe"
    assert roundtrip(data).target().hex() == "e5f96f6f38320f0f33959cb4d3d656452117aadb"
    vector_count("BEP 44 test vectors", 1)


def test_bep44_get_response_item_checks(vector_count):
    # BEP 44 "Signature Verification": the requester checks key -> target and signature.
    salt, _, target, sig = BEP44_VECTORS[1]
    target, sig = bytes.fromhex(target), bytes.fromhex(sig)
    r = m.Response(transaction_id=b"aa", node_id=b"n" * 20, token=b"tk", value=BEP44_VALUE, key=BEP44_PK, seq=1,
                   signature=sig)
    roundtrip(r.encode()).verify_item(target, salt)
    with pytest.raises(KrpcError) as ei:
        r.verify_item(target, b"")  # wrong salt: key no longer hashes to the target
    assert ei.value.error_code == 203
    with pytest.raises(KrpcError) as ei:
        m.Response(transaction_id=b"aa", node_id=b"n" * 20, value=BEP44_VALUE, key=BEP44_PK, seq=2,
                   signature=sig).verify_item(target, salt)
    assert ei.value.error_code == 206
    imm = m.Response(transaction_id=b"aa", node_id=b"n" * 20, value=BEP44_VALUE)
    imm.verify_item(bytes.fromhex("e5f96f6f38320f0f33959cb4d3d656452117aadb"))
    with pytest.raises(KrpcError):
        imm.verify_item(target)
    with pytest.raises(KrpcError):
        m.Response(transaction_id=b"aa", node_id=b"n" * 20).verify_item(target)
    vector_count("BEP 44 test vectors", 1)


def test_bep44_sign_roundtrip_and_limits(rng):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    sk = Ed25519PrivateKey.from_private_bytes(rng(32))
    pk = sk.public_key().public_bytes_raw()
    value = bc.encode([b"a", {b"b": 3}])
    sig = m.sign_mutable(sk, value, 7, b"s")
    m.verify_mutable(pk, sig, value, 7, b"s")
    with pytest.raises(KrpcError):
        m.verify_mutable(pk, sig, value, 7, b"t")
    # v over 1000 bytes: 205; salt over 64: 207 (BEP 44 "Errors").
    big = bc.encode(b"x" * 997)
    assert len(big) == 1001
    bad_v = b"d1:ad2:id20:" + b"i" * 20 + b"5:token3:tok1:v" + big + b"e1:q3:put1:t2:aa1:y1:qe"
    with pytest.raises(KrpcError) as ei:
        m.parse_message(bad_v)
    assert ei.value.error_code == 205
    bad_salt = m.Put(transaction_id=b"aa", node_id=b"i" * 20, token=b"t", value=b"i1e", key=pk, signature=sig,
                     seq=1, salt=b"s" * 65)
    with pytest.raises(LocalProtocolError):
        bad_salt.encode()
    raw = bc.encode({b"a": {b"id": b"i" * 20, b"k": pk, b"salt": b"s" * 65, b"seq": 1, b"sig": sig,
                           b"token": b"t", b"v": 1}, b"q": b"put", b"t": b"aa", b"y": b"q"})
    with pytest.raises(KrpcError) as ei:
        m.parse_message(raw)
    assert ei.value.error_code == 207
    # Responses to get carry the item; cas and seq round-trip.
    r = m.Response(transaction_id=b"aa", node_id=b"n" * 20, token=b"tk", value=value, key=pk, seq=7, signature=sig,
                   nodes=())
    assert roundtrip(r.encode()) == r
    g = m.Get(transaction_id=b"aa", node_id=b"n" * 20, target=m.mutable_target(pk, b"s"), seq=6)
    assert roundtrip(g.encode()) == g
    cas = m.Put(transaction_id=b"aa", node_id=b"i" * 20, token=b"t", value=value, key=pk, signature=sig, seq=7,
                salt=b"s", cas=6)
    assert roundtrip(cas.encode()) == cas


# ---- qudag extension ----------------------------------------------------------------

@pytest.fixture(scope="module")
def mldsa_key():
    from qudag_core.crypto import MlDsa65PrivateKey

    return MlDsa65PrivateKey(hashlib.sha256(b"qd record test key").digest())


def test_qd_put_get_roundtrip_and_verify(mldsa_key):
    rec = m.sign_qd_record(mldsa_key, record_type=m.RecordType.DARK_DESCRIPTOR, revision=3, value=b"descriptor",
                           salt=b"svc")
    assert len(rec.public_key) == 1952 and len(rec.signature) == 3309
    target = rec.target(b"svc")
    assert target == m.qd_target(mldsa_key.public_key.raw, b"svc") and len(target) == 20
    put = m.QdPut(transaction_id=b"q1", node_id=b"n" * 20, token=b"tok", record=rec, salt=b"svc")
    parsed = roundtrip(put.encode())
    assert parsed == put and parsed.target() == target
    parsed.verify()
    # The record is bound to its salt, type and revision.
    for bad in (dict(salt=b"other"),):
        with pytest.raises(KrpcError) as ei:
            rec.verify(**bad)
        assert ei.value.error_code == KrpcErrorCode.INVALID_SIGNATURE
    forged = m.QdRecord(record_type=rec.record_type, revision=4, public_key=rec.public_key,
                        signature=rec.signature, value=rec.value)
    with pytest.raises(KrpcError):
        forged.verify(b"svc")
    # Channel-only: never into a datagram.
    assert not put.fits_datagram()
    with pytest.raises(DatagramTooLarge):
        put.encode_datagram()
    get = m.QdGet(transaction_id=b"q2", node_id=b"n" * 20, target=target, record_type=2, revision=2)
    assert roundtrip(get.encode()) == get
    assert not get.fits_datagram()
    with pytest.raises(DatagramTooLarge):
        get.encode_datagram()
    resp = m.Response(transaction_id=b"q2", node_id=b"r" * 20, token=b"tk", record=rec)
    assert roundtrip(resp.encode()) == resp
    resp.verify_record(target, b"svc")
    with pytest.raises(KrpcError):
        resp.verify_record(target, b"")
    with pytest.raises(KrpcError):
        m.Response(transaction_id=b"q2", node_id=b"r" * 20).verify_record(target)
    with pytest.raises(DatagramTooLarge):
        resp.encode_datagram()


def test_qd_signing_buffer_is_canonical_bencode():
    buf = m.qd_signing_buffer(1, 5, b"val", b"salt")
    assert buf == b"d3:revi5e2:rti1e4:salt4:salt1:v3:vale"
    assert m.qd_target(b"k" * 1952) != m.qd_target(b"k" * 1952, b"s")


def test_datagram_budget():
    nodes = tuple(m.NodeInfo(node_id=bytes([i]) * 20, ip=bytes([1, 2, 3, i]), port=1000 + i) for i in range(1, 60))
    big = m.Response(transaction_id=b"aa", node_id=b"n" * 20, nodes=nodes)
    assert len(big.encode()) > 1400
    assert not big.fits_datagram()
    with pytest.raises(DatagramTooLarge):
        big.encode_datagram()
    small = m.Response(transaction_id=b"aa", node_id=b"n" * 20, nodes=nodes[:8])
    assert small.fits_datagram() and len(small.encode_datagram()) < 1400


def test_error_for_exception():
    exc = KrpcError("bad token", error_code=203, transaction_id=b"zz")
    e = m.Error.for_exception(exc, transaction_id=b"zz")
    assert m.parse_message(e.encode()) == e and e.code == 203


@pytest.mark.parametrize("bad", [
    m.Ping(transaction_id=b"aa", node_id=b"short"),
    m.Ping(transaction_id=b"", node_id=b"i" * 20),
    m.Ping(transaction_id="aa", node_id=b"i" * 20),
    m.FindNode(transaction_id=b"aa", node_id=b"i" * 20, target=None),
    m.Put(transaction_id=b"aa", node_id=b"i" * 20, token=b"t", value=b"not bencode"),
    m.Response(transaction_id=b"aa", node_id=b"i" * 20, nodes=(m.NodeInfo(node_id=b"x", ip=b"1234", port=1),)),
    m.Response(transaction_id=b"aa", node_id=b"i" * 20, values=("nope",)),
    m.Error(transaction_id=b"aa", code=-1),
])
def test_encode_refuses_invalid_messages(bad):
    with pytest.raises(LocalProtocolError):
        bad.encode()


# ---- Hypothesis ---------------------------------------------------------------------

ids = st.binary(min_size=20, max_size=20)
tids = st.binary(min_size=1, max_size=4)
ports = st.integers(1, 65535)
ip4 = st.binary(min_size=4, max_size=4)
ip6 = st.binary(min_size=16, max_size=16)
versions = st.none() | st.binary(max_size=4)
addrs = st.none() | st.builds(m.PeerAddr, ip=ip4 | ip6, port=ports)
small_values = st.recursive(st.integers(-5, 10**6) | st.binary(max_size=12),
                            lambda c: st.lists(c, max_size=3) | st.dictionaries(st.binary(max_size=4), c, max_size=3),
                            max_leaves=6).map(bc.encode)
common = dict(transaction_id=tids, client_version=versions, ip=addrs, node_id=ids, read_only=st.booleans())

typed_messages = st.one_of(
    st.builds(m.Ping, **common),
    st.builds(m.FindNode, target=ids, **common),
    st.builds(m.GetPeers, info_hash=ids, **common),
    st.builds(m.AnnouncePeer, info_hash=ids, port=ports, token=st.binary(min_size=1, max_size=20),
              implied_port=st.none() | st.integers(0, 1), **common),
    st.builds(m.Get, target=ids, seq=st.none() | st.integers(0, 2**63 - 1), **common),
    st.builds(m.Put, token=st.binary(min_size=1, max_size=8), value=small_values, **common),
    st.builds(m.QdGet, target=ids, record_type=st.integers(0, 65535), revision=st.none() | st.integers(0, 9), **common),
    st.builds(m.Response, transaction_id=tids, client_version=versions, ip=addrs, node_id=ids,
              nodes=st.none() | st.lists(st.builds(m.NodeInfo, node_id=ids, ip=ip4, port=ports), max_size=8).map(tuple),
              nodes6=st.none() | st.lists(st.builds(m.NodeInfo, node_id=ids, ip=ip6, port=ports), max_size=4).map(tuple),
              values=st.none() | st.lists(st.builds(m.PeerAddr, ip=ip4 | ip6, port=ports), max_size=4).map(tuple),
              token=st.none() | st.binary(min_size=1, max_size=8), value=st.none() | small_values),
    st.builds(m.Error, transaction_id=tids, client_version=versions, code=st.integers(0, 999),
              message=st.binary(max_size=30)),
)


@settings(max_examples=n_examples(2000), **PROPS)
@given(typed_messages)
def test_typed_roundtrip(msg):
    data = msg.encode()
    assert m.parse_message(data) == msg
    assert m.parse_message(data).encode() == data


KEYS = [b"t", b"y", b"q", b"a", b"r", b"e", b"v", b"ip", b"id", b"target", b"info_hash", b"port", b"token",
        b"implied_port", b"nodes", b"nodes6", b"values", b"seq", b"sig", b"k", b"salt", b"cas", b"rt", b"rev",
        b"rec", b"ro", b"x"]
LEAVES = [b"q", b"r", b"e", b"ping", b"find_node", b"get_peers", b"announce_peer", b"get", b"put", b"qd_get",
          b"qd_put", b"aa", b"", b"i" * 20, b"n" * 19, b"n" * 26, b"n" * 38, b"\x01\x02\x03\x04\x00\x00",
          b"\x01\x02\x03\x04\x1a\xe1", b"x" * 64, b"x" * 65, b"k" * 32, b"s" * 64, b"12:Hello World!",
          0, 1, -1, 6881, 65535, 65536, 201, 204, 2**63 - 1, 2**63]


def krpc_shaped(blob: bytes) -> dict:
    """Expand a byte string into a KRPC-shaped dictionary: each byte picks a key, a leaf
    or a nested container from the KRPC vocabulary.  Generating bytes (cheap, shrinks well)
    instead of trees lets Hypothesis run many more cases per second."""
    it = iter(blob)

    def value(depth: int):
        b = next(it, 0)
        if b < 200 or depth > 2:
            return LEAVES[b % len(LEAVES)]
        if b < 230:
            return container(depth + 1)
        return [value(depth + 1) for _ in range(next(it, 0) % 4)]

    def container(depth: int) -> dict:
        d = {}
        for _ in range(next(it, 0) % 7):
            d[KEYS[next(it, 0) % len(KEYS)]] = value(depth)
        return d

    top = {b"t": b"aa", b"y": LEAVES[next(it, 0) % 3]}
    top.update(container(0))
    top.update({KEYS[k % len(KEYS)]: value(0) for k in it})
    return top


def _assert_parse_total(data: bytes) -> None:
    try:
        msg = m.parse_message(data)
    except KrpcError as exc:
        assert isinstance(exc.error_code, int)
        # the node's receive path refuses exactly the same inputs, the same way
        with pytest.raises(KrpcError) as again_exc:
            m.parse_datagram(data)
        assert (type(again_exc.value), str(again_exc.value), again_exc.value.error_code,
                again_exc.value.transaction_id) == (type(exc), str(exc), exc.error_code, exc.transaction_id)
    else:
        again = msg.encode()  # whatever we accept we can re-emit, and it parses the same
        assert m.parse_message(again) == msg
        _assert_datagram_parse_agrees(data, msg)


def _assert_datagram_parse_agrees(data: bytes, msg) -> None:
    """``parse_datagram`` gives the same message, with a response's node lists as the
    compact bytes that ``parse_message`` split into ``NodeInfo``."""
    import dataclasses

    lazy, raw4, raw6 = m.parse_datagram(data)
    if not isinstance(msg, m.Response):
        assert (lazy, raw4, raw6) == (msg, None, None)
        return
    assert lazy == dataclasses.replace(msg, nodes=None, nodes6=None)
    assert raw4 == (None if msg.nodes is None else b"".join(n.compact() for n in msg.nodes))
    assert raw6 == (None if msg.nodes6 is None else b"".join(n.compact() for n in msg.nodes6))


@settings(max_examples=n_examples(25000), **PROPS)
@given(st.binary(max_size=24))
def test_krpc_shaped_input_parses_or_krpc_error(blob):
    _assert_parse_total(bc.encode(krpc_shaped(blob)))


GOLDEN = [
    b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
    b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
    b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe"
    b"1:q13:announce_peer1:t2:aa1:y1:qe",
    b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
    b"d1:rd2:id20:0123456789abcdefghij5:nodes26:" + bytes(range(1, 27)) + b"e1:t2:aa1:y1:re",
    b"d1:ad2:id20:" + b"i" * 20 + b"5:token3:tok1:v12:Hello World!e1:q3:put1:t2:aa1:y1:qe",
    b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node2:roi1e1:t2:aa1:y1:qe",
]


def mutate(data: bytes, ops: bytes) -> bytes:
    """Apply byte edits encoded 3 bytes each: (kind, position, byte)."""
    b = bytearray(data)
    for i in range(0, len(ops) - 2, 3):
        kind, pos, byte = ops[i] % 3, ops[i + 1] * 7, ops[i + 2]
        pos %= len(b) + 1
        if kind == 0 and pos < len(b):
            b[pos] = byte
        elif kind == 1:
            b.insert(pos, byte)
        elif pos < len(b):
            del b[pos]
    return bytes(b)


@settings(max_examples=n_examples(15000), **PROPS)
@given(st.sampled_from(GOLDEN), st.binary(min_size=3, max_size=9))
def test_mutated_messages_parse_or_krpc_error(seed, ops):
    _assert_parse_total(mutate(seed, ops))


@settings(max_examples=n_examples(5000), **PROPS)
@given(st.binary(max_size=100))
def test_arbitrary_bytes_parse_or_krpc_error(data):
    _assert_parse_total(data)


def test_parsed_response_and_nodes_are_ordinary_objects():
    """Replies are built slot by slot (and their compact nodes tuple by tuple) on the hot
    path: they must be indistinguishable from ones built through the constructors."""
    import dataclasses

    nodes = tuple(m.NodeInfo(node_id=bytes([i]) * 20, ip=bytes([10, 0, 0, i]), port=6000 + i) for i in range(1, 9))
    built = m.Response(transaction_id=b"tt", client_version=b"QD\x00\x01", node_id=b"n" * 20, nodes=nodes,
                       token=b"tok", ip=m.PeerAddr(ip=bytes([127, 0, 0, 1]), port=9))
    parsed = m.parse_message(built.encode())
    assert type(parsed) is m.Response and parsed == built and hash(parsed) == hash(built)
    assert repr(parsed) == repr(built)
    for a, b in zip(parsed.nodes, nodes):
        assert type(a) is m.NodeInfo and a == b and hash(a) == hash(b)
        assert (a.node_id, a.ip, a.port) == tuple(b) and a.compact() == b.compact()
    assert dataclasses.replace(parsed, token=b"x").token == b"x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.token = b"y"  # type: ignore[misc]


@pytest.mark.parametrize("query", [
    m.Ping(transaction_id=b"p", node_id=b"i" * 20),
    m.FindNode(transaction_id=b"f", client_version=b"UT\x01\x02", node_id=b"i" * 20, target=b"t" * 20),
    m.GetPeers(transaction_id=b"g", node_id=b"i" * 20, info_hash=b"h" * 20,
               ip=m.PeerAddr(ip=bytes(16), port=1)),
    m.Ping(transaction_id=b"p", node_id=b"i" * 20, read_only=True),
    m.FindNode(transaction_id=b"f", node_id=b"i" * 20, target=b"t" * 20, read_only=True),
    m.GetPeers(transaction_id=b"g", node_id=b"i" * 20, info_hash=b"h" * 20, read_only=True),
])
def test_parsed_lookup_queries_are_ordinary_objects(query):
    import dataclasses

    parsed = m.parse_message(query.encode())
    assert type(parsed) is type(query) and parsed == query and hash(parsed) == hash(query)
    assert repr(parsed) == repr(query) and parsed.encode() == query.encode()
    assert dataclasses.replace(parsed, transaction_id=b"z").transaction_id == b"z"
