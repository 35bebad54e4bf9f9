"""Type stub for the C kernel ``qudag_core._relay`` (csrc/relay.c)."""
from typing import Any

class RelayLayer:
    """One onion layer (one hop, one direction); EVP contexts created once."""

    def __init__(
        self,
        block_key: bytes,
        hash_key: bytes,
        ctr_key: bytes,
        recog_key: bytes,
        chain: bytes,
        cell_size: int,
        offset: int,
    ) -> None: ...
    def encrypt(self, buf: Any, originate: bool = ...) -> None:
        """Add this layer to every cell of the writable buffer ``buf`` in place."""
    def decrypt(self, buf: Any) -> bytes:
        """Peel this layer in place; one flag byte per cell, 1 = recognised here."""
