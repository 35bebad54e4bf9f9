"""OpenSSL ChaCha20-Poly1305 frame kernel (csrc/aead.c) for ``qudag_core.channel``.

Wire formats (identical to the pure fallback in ``qudag_core.channel.frames``):

* stream frame: ``len:u32be || AEAD(nonce, payload || type:u8, aad=len:u32be)``
* datagram: ``counter:u64be || AEAD(nonce, payload, aad=counter:u64be)``
* nonce: ``0x00000000 || counter:u64be``
"""
from typing_extensions import Buffer

TAG_SIZE: int
STREAM_HEADER_SIZE: int
DATAGRAM_HEADER_SIZE: int

class FrameCipher:
    """Encrypt and decrypt EVP contexts for one 32-byte key, made once."""

    def __init__(self, key: Buffer) -> None: ...
    def seal_frame(self, counter: int, frame_type: int, payload: Buffer, /) -> bytes: ...
    def open_frame(self, counter: int, frame: Buffer, /) -> tuple[int, bytes]:
        """Raises ``qudag_core.errors.DecryptError`` if authentication fails and
        ``ValueError`` if ``frame``'s length disagrees with its header."""
    def seal_datagram(self, counter: int, payload: Buffer, /) -> bytes: ...
    def open_datagram(self, packet: Buffer, /) -> bytes:
        """Raises ``DecryptError`` on authentication failure, ``ValueError`` if too short."""
    def wipe(self) -> None:
        """Free both contexts (OpenSSL cleanses the key schedule); further use raises."""
