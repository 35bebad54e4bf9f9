"""Circuit-extension handshake: hybrid post-quantum, one-way authenticated (docs/onion.md §3.1).

An ntor-shaped handshake over X-Wing (draft-connolly-cfrg-xwing-kem) instead of X25519:

    client1:  e <- X-Wing keygen;  (ss1, ct1) = Encaps(B)      B = relay's certified key
              msg = ID (20) | E (1216) | ct1 (1120)
    server:   ss1 = Decaps(b, ct1);  (ss2, ct2) = Encaps(E)
              th  = Transcript(ID, B, E, ct1, ct2)
              seed | mac_key = derive_key("... hop keys", ss1 | ss2 | th)
              reply = ct2 (1120) | auth (32),  auth = keyed_hash(mac_key, th | "relay")
    client2:  ss2 = Decaps(e, ct2); recompute; check auth in constant time.

ss1 authenticates the relay (only the holder of ``b`` learns it); ss2 comes from a fresh
ephemeral and gives forward secrecy.  The decision a reader asks about: the client's
ephemeral is a full X-Wing key (1216 bytes) so that the forward-secret part is also
post-quantum; hence CREATE is 3 cells (fragments.py).  ``hop_secret`` (32 bytes) feeds
``relaycrypto.derive_layer_keys`` for each direction.

Consume-once steps with injected ``rng``; ``client1_with_ephemeral`` takes a fixed
ephemeral seed so that everything but ML-KEM's internal randomness is reproducible.
"""
from __future__ import annotations

import hmac

from qudag_core.crypto import Transcript, XWingPrivateKey, XWingPublicKey, derive_key, keyed_hash
from qudag_core.errors import CryptoError, LocalProtocolError
from qudag_core.onion.cells import CellError, DestroyReason

__all__ = [
    "NODE_ID_SIZE",
    "CREATE_SIZE",
    "CREATED_SIZE",
    "HandshakeError",
    "ClientHandshake",
    "client1",
    "client1_with_ephemeral",
    "server",
    "client2",
]

NODE_ID_SIZE = 20
PK_SIZE = 1216
CT_SIZE = 1120
MAC_SIZE = 32
CREATE_SIZE = NODE_ID_SIZE + PK_SIZE + CT_SIZE  # 2356
CREATED_SIZE = CT_SIZE + MAC_SIZE  # 1152
_LABEL = b"qudag 2026 onion xwing-ntor v1"


class HandshakeError(CellError):
    """The peer's handshake message is malformed or does not authenticate."""

    error_code = DestroyReason.HANDSHAKE_FAILED


class ClientHandshake:
    """State between ``client1`` and ``client2``; consumed once."""

    __slots__ = ("node_id", "relay_pk", "_eph", "_ct1", "_ss1", "_used")

    def __init__(self, node_id: bytes, relay_pk: bytes, eph: XWingPrivateKey, ct1: bytes, ss1: bytes) -> None:
        self.node_id = node_id
        self.relay_pk = relay_pk
        self._eph = eph
        self._ct1 = ct1
        self._ss1 = ss1
        self._used = False

    def __repr__(self) -> str:
        return f"ClientHandshake(node_id={self.node_id.hex()})"


def _derive(node_id: bytes, relay_pk: bytes, eph_pk: bytes, ct1: bytes, ct2: bytes, ss1: bytes, ss2: bytes):
    t = Transcript(_LABEL)
    t.append(b"node_id", node_id)
    t.append(b"relay_pk", relay_pk)
    t.append(b"client_eph", eph_pk)
    t.append(b"ct1", ct1)
    t.append(b"ct2", ct2)
    th = t.digest()
    okm = derive_key("qudag 2026 onion handshake hop keys", ss1 + ss2 + th, 64)
    seed, mac_key = okm[:32], okm[32:]
    auth = keyed_hash(mac_key, th + b"relay")
    return seed, auth


def client1_with_ephemeral(rng, node_id: bytes, relay_pk: bytes, eph_seed: bytes) -> tuple[ClientHandshake, bytes]:
    if len(node_id) != NODE_ID_SIZE:
        raise LocalProtocolError("node id must be 20 bytes")
    pk = XWingPublicKey(relay_pk)  # raises InvalidKey on a bad certificate key
    eph = XWingPrivateKey(eph_seed)
    ss1, ct1 = pk.encapsulate(rng)
    msg = bytes(node_id) + eph.public_key.raw + ct1
    return ClientHandshake(bytes(node_id), pk.raw, eph, ct1, ss1), msg


def client1(rng, node_id: bytes, relay_pk: bytes) -> tuple[ClientHandshake, bytes]:
    """First client step: the CREATE/EXTEND handshake message for relay ``node_id``."""
    return client1_with_ephemeral(rng, node_id, relay_pk, rng(32))


def server(rng, node_id: bytes, static_key: XWingPrivateKey, msg: bytes) -> tuple[bytes, bytes]:
    """Relay step: ``(hop_secret, reply)`` or ``HandshakeError``."""
    if len(msg) != CREATE_SIZE:
        raise HandshakeError(f"handshake message must be {CREATE_SIZE} bytes")
    msg = bytes(msg)
    if not hmac.compare_digest(msg[:NODE_ID_SIZE], node_id):
        raise HandshakeError("handshake addressed to another node")
    eph_raw = msg[NODE_ID_SIZE : NODE_ID_SIZE + PK_SIZE]
    ct1 = msg[NODE_ID_SIZE + PK_SIZE :]
    try:
        ss1 = static_key.decapsulate(ct1)
        ss2, ct2 = XWingPublicKey(eph_raw).encapsulate(rng)
    except CryptoError as e:
        raise HandshakeError(f"bad handshake key material: {e}") from None
    seed, auth = _derive(node_id, static_key.public_key.raw, eph_raw, ct1, ct2, ss1, ss2)
    return seed, ct2 + auth


def client2(state: ClientHandshake, reply: bytes) -> bytes:
    """Last client step: the hop secret, or ``HandshakeError`` if the relay did not prove
    knowledge of its static key."""
    if state._used:
        raise LocalProtocolError("client handshake state already consumed")
    state._used = True
    if len(reply) != CREATED_SIZE:
        raise HandshakeError(f"handshake reply must be {CREATED_SIZE} bytes")
    reply = bytes(reply)
    ct2, auth = reply[:CT_SIZE], reply[CT_SIZE:]
    try:
        ss2 = state._eph.decapsulate(ct2)
    except CryptoError as e:
        raise HandshakeError(f"bad handshake reply: {e}") from None
    seed, expect = _derive(state.node_id, state.relay_pk, state._eph.public_key.raw, state._ct1, ct2, state._ss1, ss2)
    state._eph = None
    state._ss1 = b""
    if not hmac.compare_digest(auth, expect):
        raise HandshakeError("relay failed key confirmation")
    return seed
