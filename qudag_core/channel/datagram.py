"""Datagram mode of the secure channel: explicit counters and a replay window.

Each packet is ``counter:u64be || ChaCha20-Poly1305(nonce(counter), data, aad=counter)``
(WireGuard's transport data message, whitepaper §5.4.6, without the receiver index).
Packets may be lost, duplicated or reordered, so the counter travels in the packet and
``ReplayWindow`` (RFC 6479) accepts each counter at most once, in any order within the
window.

The decision a reader would ask about: datagram keys are not the handshake keys but
``derive_key("qudag 2026 channel datagram key", key)`` of them.  The stream channel
uses the handshake keys with its own counters; deriving separate keys means a
connection may run both modes at once without ever using a (key, nonce) pair twice.
There is no in-band rekey here (a lost KEY_UPDATE could not be recovered); a
datagram channel is good for ``nonce_limit`` packets and then needs a new handshake.

Unlike the stream API, ``open_datagram`` raises: a bad packet is simply dropped by the
caller and the channel carries on, as a datagram transport must.
"""
from __future__ import annotations

from qudag_core.channel.config import ChannelConfig
from qudag_core.channel.errors import (
    FrameAuthenticationFailed,
    FrameTooLarge,
    MalformedFrame,
    MessageTooLarge,
    NonceLimitReached,
    PeerNonceLimitExceeded,
)
from qudag_core.channel.frames import DATAGRAM_HEADER_SIZE, TAG_SIZE, FrameCipher
from qudag_core.channel.replay import ReplayWindow
from qudag_core.crypto import derive_key
from qudag_core.errors import DecryptError, InvalidKey

__all__ = ["DatagramChannel", "DATAGRAM_KEY_CONTEXT"]

DATAGRAM_KEY_CONTEXT = "qudag 2026 channel datagram key"


class DatagramChannel:
    """Seal and open independent packets under the handshake's per-direction keys."""

    __slots__ = ("_tx", "_rx", "_tx_counter", "_window", "_max_payload", "_nonce_limit", "_session_id")

    def __init__(
        self, *, tx_key: bytes, rx_key: bytes, session_id: bytes, config: ChannelConfig | None = None
    ) -> None:
        for name, key in (("tx_key", tx_key), ("rx_key", rx_key), ("session_id", session_id)):
            if len(key) != 32:
                raise InvalidKey(f"{name} must be 32 bytes, got {len(key)}")
        if config is None:
            config = ChannelConfig()
        self._tx = FrameCipher(derive_key(DATAGRAM_KEY_CONTEXT, bytes(tx_key)))
        self._rx = FrameCipher(derive_key(DATAGRAM_KEY_CONTEXT, bytes(rx_key)))
        self._tx_counter = 0
        self._window = ReplayWindow(config.replay_window)
        self._max_payload = config.max_frame_size
        self._nonce_limit = config.nonce_limit
        self._session_id = bytes(session_id)

    def __repr__(self) -> str:
        return f"<DatagramChannel session={self._session_id[:4].hex()}... sent={self._tx_counter}>"

    @property
    def session_id(self) -> bytes:
        return self._session_id

    @property
    def tx_counter(self) -> int:
        return self._tx_counter

    @property
    def window(self) -> ReplayWindow:
        return self._window

    def seal_datagram(self, data: bytes) -> bytes:
        """One packet carrying ``data``; raises ``NonceLimitReached`` when keys are spent."""
        if len(data) > self._max_payload:
            raise MessageTooLarge(f"datagram of {len(data)} bytes exceeds max_frame_size")
        counter = self._tx_counter
        if counter >= self._nonce_limit:
            raise NonceLimitReached("datagram nonce_limit reached: a new handshake is needed")
        packet = self._tx.seal_datagram(counter, data)
        self._tx_counter = counter + 1
        return packet

    def open_datagram(self, packet: bytes) -> bytes:
        """The data of an authentic, not yet seen packet.

        Raises ``MalformedFrame``, ``FrameTooLarge``, ``PeerNonceLimitExceeded``,
        ``ReplayedPacket``, ``PacketTooOld`` or ``FrameAuthenticationFailed`` (all
        ``RemoteProtocolError``); the channel is unchanged by a rejected packet."""
        n = len(packet)
        if n < DATAGRAM_HEADER_SIZE + TAG_SIZE:
            raise MalformedFrame("datagram shorter than counter and tag")
        if n > DATAGRAM_HEADER_SIZE + self._max_payload + TAG_SIZE:
            raise FrameTooLarge("datagram exceeds max_frame_size")
        with memoryview(packet) as mv:
            counter = int.from_bytes(mv[:DATAGRAM_HEADER_SIZE], "big")
            if counter >= self._nonce_limit:
                raise PeerNonceLimitExceeded("datagram counter beyond nonce_limit")
            self._window.check(counter)
            try:
                data = self._rx.open_datagram(mv)
            except DecryptError:
                raise FrameAuthenticationFailed("datagram failed authentication") from None
        self._window.update(counter)
        return data
