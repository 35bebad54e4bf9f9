"""The AEAD-framed secure channel that follows the handshake (docs/channel.md).  Sans-IO.

Build one from the handshake's result::

    ch = SecureChannel(tx_key=k_tx, rx_key=k_rx, session_id=sid, now=now)
    ch.send_message(b"hello"); sock.send(ch.data_to_send())
    for event in ch.receive_data(sock.recv(65536), now=now): ...

``DatagramChannel`` is the same keys' datagram mode (explicit counter + replay window).
"""
from qudag_core.channel.config import ChannelConfig
from qudag_core.channel.datagram import DATAGRAM_KEY_CONTEXT, DatagramChannel
from qudag_core.channel.errors import (
    ChannelNotOpen,
    ErrorCode,
    FrameAuthenticationFailed,
    FrameTooLarge,
    InvalidChannelConfig,
    MalformedFrame,
    MessageTooLarge,
    NonceLimitReached,
    PacketTooOld,
    PeerNonceLimitExceeded,
    ReplayedPacket,
)
from qudag_core.channel.events import (
    Direction,
    Event,
    KeyUpdated,
    MessageReceived,
    PingReceived,
    PongReceived,
    Terminated,
    UnknownFrameReceived,
)
from qudag_core.channel.frames import KERNEL, FrameType
from qudag_core.channel.replay import ReplayWindow
from qudag_core.channel.state import ChannelState
from qudag_core.channel.stream import KEY_UPDATE_CONTEXT, SecureChannel

__all__ = [
    "KERNEL",
    "KEY_UPDATE_CONTEXT",
    "DATAGRAM_KEY_CONTEXT",
    "ChannelConfig",
    "ChannelNotOpen",
    "ChannelState",
    "DatagramChannel",
    "Direction",
    "ErrorCode",
    "Event",
    "FrameAuthenticationFailed",
    "FrameTooLarge",
    "FrameType",
    "InvalidChannelConfig",
    "KeyUpdated",
    "MalformedFrame",
    "MessageReceived",
    "MessageTooLarge",
    "NonceLimitReached",
    "PacketTooOld",
    "PeerNonceLimitExceeded",
    "PingReceived",
    "PongReceived",
    "ReplayWindow",
    "ReplayedPacket",
    "SecureChannel",
    "Terminated",
    "UnknownFrameReceived",
]
