"""Limits and timers of the secure channel (docs/channel.md §Configuration).

Defaults follow WireGuard's REKEY_AFTER_TIME (120 s) for the time limit; the byte and
message limits are far below anything ChaCha20-Poly1305 needs (RFC 8439 §2.8 allows
2^64 frames per key) and exist to bound how much traffic one key protects.
"""
from __future__ import annotations

from dataclasses import dataclass

from qudag_core.channel.errors import InvalidChannelConfig

__all__ = ["ChannelConfig", "MAX_NONCE_LIMIT"]

MAX_NONCE_LIMIT = 1 << 64
_MAX_FRAME_CEILING = (1 << 31) - 256


@dataclass(frozen=True, kw_only=True, slots=True)
class ChannelConfig:
    """Per-channel limits.  Both peers should use the same values."""

    max_frame_size: int = 64 * 1024
    """Largest message (plaintext payload) per frame; longer length prefixes are refused."""
    rekey_after_bytes: int | None = 1 << 30
    """Send KEY_UPDATE once this many payload bytes went out under one key (None: never)."""
    rekey_after_messages: int | None = 1 << 20
    """Send KEY_UPDATE once this many frames went out under one key (None: never)."""
    rekey_after_seconds: float | None = 120.0
    """Send KEY_UPDATE once a transmit key is this old, via ``handle_timer`` (None: never)."""
    nonce_limit: int = MAX_NONCE_LIMIT
    """Frames allowed per key and direction (counters 0 .. nonce_limit-1).  The last
    counter is kept for KEY_UPDATE or CLOSE/ALERT, so data can always be followed by one."""
    replay_window: int = 2048
    """Datagram mode: replay bitmap size in bits (multiple of 64)."""
    keepalive_interval: float | None = None
    """Send PING when nothing was sent for this long (None: no keepalive)."""
    idle_timeout: float | None = None
    """End the channel (IDLE_TIMEOUT alert) when nothing authenticated arrived for this long."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_frame_size <= _MAX_FRAME_CEILING:
            raise InvalidChannelConfig("max_frame_size out of range")
        if not 2 <= self.nonce_limit <= MAX_NONCE_LIMIT:
            raise InvalidChannelConfig("nonce_limit must be in [2, 2**64]")
        if self.rekey_after_messages is not None and not 1 <= self.rekey_after_messages <= self.nonce_limit - 1:
            raise InvalidChannelConfig("rekey_after_messages must be in [1, nonce_limit - 1]")
        if self.rekey_after_bytes is not None and self.rekey_after_bytes < 1:
            raise InvalidChannelConfig("rekey_after_bytes must be positive")
        for name in ("rekey_after_seconds", "keepalive_interval", "idle_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise InvalidChannelConfig(f"{name} must be positive")
        if self.replay_window < 128 or self.replay_window % 64:
            raise InvalidChannelConfig("replay_window must be a multiple of 64 bits, at least 128")

    @property
    def max_body_size(self) -> int:
        """Largest value a stream length prefix may carry (type + payload + tag)."""
        return 1 + self.max_frame_size + 16
