"""A relay node in its own process, for tests/io/test_onion_processes.py.

Protocol on stdio (one line each): prints ``CERT <hex certificate>``; reads the relay
directory as ``<hex certificate>`` lines up to a line ``END``; prints ``READY``; runs until
stdin closes, then closes the node and exits.  Hosts the ``digest`` service: framed
messages (u32 length + bytes) until a zero-length frame, answered with u32 count + SHA-256.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import time

from qudag_core.identity import Identity, NodeCertificate
from qudag_io.onion import DirectoryEntry, OnionNode, RelayDirectory


async def digest(stream):
    h = hashlib.sha256()
    n = 0
    while True:
        size = int.from_bytes(await stream.readexactly(4), "big")
        if size == 0:
            break
        h.update(await stream.readexactly(size))
        n += 1
    await stream.send(n.to_bytes(4, "big") + h.digest())


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    directory = RelayDirectory()
    node = await OnionNode.start(Identity.generate(os.urandom), directory)
    node.register_service("digest", digest)
    try:
        print("CERT", node.certificate.to_bytes().hex(), flush=True)
        while True:
            line = (await asyncio.wait_for(reader.readline(), 30)).decode().strip()
            if line == "END" or not line:
                break
            cert = NodeCertificate.from_bytes(bytes.fromhex(line))
            cert.verify(time.time())
            directory.add(DirectoryEntry(cert))
        print("READY", flush=True)
        while await reader.readline():
            pass
    finally:
        await node.close()


if __name__ == "__main__":
    if os.environ.get("QUDAG_UVLOOP") == "1":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())
