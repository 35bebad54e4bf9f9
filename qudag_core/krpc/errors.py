"""Declared errors of the KRPC layer: the bencode codec and the message parser.

* ``BencodeError``: the peer's bytes are not strict, canonical bencode.  Carries the byte
  ``offset`` where decoding stopped, and maps to KRPC error 203 (protocol error).  It is a
  ``KrpcError`` (itself a ``RemoteProtocolError``), so ``parse_message`` raises one family.
* ``BencodeEncodeError``: we asked the encoder for something bencode cannot express
  (a ``str``, a ``float``, a non-bytes dictionary key, nesting past the limit ...).
* ``KrpcError``: a well-formed bencode value is not an acceptable KRPC message; its
  ``error_code`` is the KRPC code a node answers with (BEP 5 "Errors": 201..204; BEP 44
  "Errors": 205..207, 301, 302), and ``transaction_id`` is the ``t`` of the offending
  message when it could be read, so the node can still address its error reply.
* ``DatagramTooLarge``: we tried to put a channel-only message (or an oversized one) into
  a UDP datagram.

The design decision: codes are plain ``int`` class attributes (open set, as BEP 5
lets extensions add codes) with names in ``KrpcErrorCode``; an unknown code received in an
error message is kept as is, never rejected.
"""
from __future__ import annotations

from qudag_core.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "KrpcErrorCode",
    "BencodeError",
    "BencodeEncodeError",
    "KrpcError",
    "DatagramTooLarge",
]


class KrpcErrorCode:
    """KRPC error codes (an open set: any ``int`` may appear on the wire)."""

    GENERIC = 201  #: BEP 5: generic error
    SERVER = 202  #: BEP 5: server error
    PROTOCOL = 203  #: BEP 5: malformed packet, invalid arguments or bad token
    METHOD_UNKNOWN = 204  #: BEP 5: method unknown
    MESSAGE_TOO_BIG = 205  #: BEP 44: ``v`` longer than 1000 bytes
    INVALID_SIGNATURE = 206  #: BEP 44: signature does not verify
    SALT_TOO_BIG = 207  #: BEP 44: ``salt`` longer than 64 bytes
    CAS_MISMATCH = 301  #: BEP 44: ``cas`` does not match the stored ``seq``
    SEQ_LESS_THAN_CURRENT = 302  #: BEP 44: ``seq`` lower than the stored one


class BencodeEncodeError(LocalProtocolError):
    """The value handed to the encoder cannot be expressed in (our strict) bencode."""


class KrpcError(RemoteProtocolError):
    """A bencode value that is not an acceptable KRPC message; ``error_code`` is the reply code."""

    error_code = KrpcErrorCode.PROTOCOL

    def __init__(self, msg: str = "", *, error_code: int | None = None,
                 transaction_id: bytes | None = None) -> None:
        super().__init__(msg, error_code=error_code)
        self.transaction_id: bytes | None = transaction_id


class BencodeError(KrpcError):
    """The input is not strict, canonical bencode.  ``offset`` is the byte where it failed."""

    error_code = KrpcErrorCode.PROTOCOL

    def __init__(self, msg: str = "", *, offset: int = 0) -> None:
        KrpcError.__init__(self, f"{msg} at offset {offset}")
        self.reason: str = msg
        self.offset: int = offset


class DatagramTooLarge(LocalProtocolError):
    """An encoded message does not fit the UDP budget (or is channel-only)."""
