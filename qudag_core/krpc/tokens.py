"""Write tokens for ``announce_peer`` / ``put`` (BEP 5 "get_peers": "the token ... is
bound to the IP address of the querying node, with a secret that changes every five
minutes and tokens up to ten minutes old are accepted").

``token = BLAKE3-keyed(secret, b"qudag krpc write-token" || packed IP)[:token_len]``;
the secret is drawn from the injected ``rng`` and rotated every ``rotate_every``
seconds of the caller's clock; a token checks against the current and the previous
secret, so it is accepted for between ``rotate_every`` and ``2 * rotate_every`` seconds.

Design decision a reader would ask about: rotation is driven by the ``now`` passed to
``token_for``/``check`` (no timers), and a gap longer than two periods replaces both
secrets, so old tokens can never come back after a long idle spell.  The IP is
canonicalised (IPv4-mapped IPv6 becomes IPv4) before hashing; the port is deliberately
not bound, as in BEP 5, because NATs may change it between requests.
"""
from __future__ import annotations

import hmac
import ipaddress
from typing import Callable

from qudag_core.crypto import keyed_hash

__all__ = ["TokenManager", "canonical_ip"]

_LABEL = b"qudag krpc write-token\x00"


def canonical_ip(ip: str) -> bytes | None:
    """Packed canonical form of an IP literal, or None if ``ip`` is not one."""
    if not isinstance(ip, str):
        return None
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return a.packed


class TokenManager:
    """Issues and checks IP-bound write tokens.  Secrets never appear in ``repr``."""

    __slots__ = ("_rng", "_current", "_previous", "_rotated_at", "rotate_every", "token_len")

    def __init__(self, rng: Callable[[int], bytes], now: float, *, rotate_every: float = 300.0,
                 token_len: int = 8) -> None:
        if rotate_every <= 0 or not 4 <= token_len <= 32:
            raise ValueError("rotate_every must be > 0 and token_len in 4..32")
        self._rng = rng
        self.rotate_every = rotate_every
        self.token_len = token_len
        self._current = self._fresh()
        self._previous: bytes | None = None
        self._rotated_at = now

    def __repr__(self) -> str:
        return f"TokenManager(rotate_every={self.rotate_every}, token_len={self.token_len})"

    def _fresh(self) -> bytes:
        s = self._rng(32)
        if len(s) != 32:
            raise ValueError("rng returned the wrong number of bytes")
        return s

    def _advance(self, now: float) -> None:
        elapsed = now - self._rotated_at
        if elapsed < self.rotate_every:
            return  # also covers a clock that went backwards
        periods = int(elapsed // self.rotate_every)
        if periods >= 2:
            self._previous = None
        else:
            self._previous = self._current
        self._current = self._fresh()
        self._rotated_at += periods * self.rotate_every

    def _mac(self, secret: bytes, packed: bytes) -> bytes:
        return keyed_hash(secret, _LABEL + packed, self.token_len)

    def token_for(self, ip: str, now: float) -> bytes:
        """The token to hand to a requester at ``ip`` (an IP literal)."""
        packed = canonical_ip(ip)
        if packed is None:
            raise ValueError("not an IP address")
        self._advance(now)
        return self._mac(self._current, packed)

    def check(self, ip: str, token: object, now: float) -> bool:
        """Whether ``token`` was issued to ``ip`` within the acceptance window.  Never
        raises on malformed input."""
        if not isinstance(token, bytes) or len(token) != self.token_len:
            return False
        packed = canonical_ip(ip)
        if packed is None:
            return False
        self._advance(now)
        ok = hmac.compare_digest(self._mac(self._current, packed), token)
        if self._previous is not None:
            ok |= hmac.compare_digest(self._mac(self._previous, packed), token)
        return ok
