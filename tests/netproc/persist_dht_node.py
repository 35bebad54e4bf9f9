"""A DHT node backed by a node database, in its own process, for the crash test in
tests/io/test_persist_network.py.

``python persist_dht_node.py <db path> <host> [NORMAL|FULL]``: opens the database
(with that ``synchronous`` setting), starts a
``DhtNode`` on ``<host>``, port 0, with the saved node id and no bootstrap list, loads
the database (``NodeDatabase.attach``: records are then written through), prints
``READY <port> <records loaded>`` and serves until stdin closes (or it is killed).
The per-IP record quota and rate limit are raised: the test writes 1,000 records from
one loopback address, and what it checks is durability, not quotas.
"""
from __future__ import annotations

import asyncio
import os
import sys

from qudag_core.krpc.node import NodeConfig
from qudag_core.krpc.store import StoreConfig
from qudag_io.dht import DhtNode
from qudag_io.persist import NodeDatabase


async def main(path: str, host: str, sync: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    db = NodeDatabase.open(path, synchronous=sync)
    cfg = NodeConfig(store=StoreConfig(per_ip_records=100_000), rate=1e6, burst=1e6)
    dht = await DhtNode.start(host, 0, node_id=db.saved_node_id() or os.urandom(20), bootstrap=(),
                              config=cfg, wait_bootstrap=False)
    try:
        _, _, records = db.attach(dht.core, loop.time())
        db.save(dht.core, loop.time())
        print("READY", dht.address[1], records, flush=True)
        while await reader.readline():
            pass
    finally:
        await dht.close()
        db.close()


if __name__ == "__main__":
    if os.environ.get("QUDAG_UVLOOP") == "1":
        import uvloop

        uvloop.run(main(*sys.argv[1:3], (sys.argv[3:] or ["NORMAL"])[0]))
    else:
        asyncio.run(main(*sys.argv[1:3], (sys.argv[3:] or ["NORMAL"])[0]))
