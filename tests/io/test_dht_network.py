"""A 50-node network of our own nodes on loopback, real UDP sockets, one process:
1,000 puts and 1,000 gets (all found), then lookups while 20% of the nodes are killed
mid-run (>= 99% succeed)."""
from __future__ import annotations

import asyncio
import random
import time

from qudag_core.krpc import bencode
from qudag_core.krpc.node import NodeConfig
from qudag_io.dht import DhtError, DhtNode

N = 50
OPS = 1000
CONCURRENCY = 50
CFG = NodeConfig(query_timeout=1.5)


async def start_network(n: int = N, config: NodeConfig = CFG):
    """Nodes on 127.0.<i>.1 (distinct /24s, so the default diversity limits hold)."""
    first = await DhtNode.start("127.0.1.1", 0, config=config)
    nodes = [first]
    rnd = random.Random(1)
    for start in range(2, n + 1, 10):
        batch = [DhtNode.start(f"127.0.{i}.1", 0, config=config,
                               bootstrap=[first.address, rnd.choice(nodes).address])
                 for i in range(start, min(start + 10, n + 1))]
        nodes.extend(await asyncio.gather(*batch))
    await asyncio.gather(*(nd.find_node(nd.node_id) for nd in nodes))
    return nodes


async def bounded(coros, limit: int):
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            try:
                return await c
            except DhtError as exc:
                return exc

    return await asyncio.gather(*(one(c) for c in coros))


def test_fifty_nodes_puts_gets_and_churn(run_loop):
    async def main():
        t0 = time.monotonic()
        nodes = await start_network()
        try:
            assert min(len(nd.core.table) for nd in nodes) >= 8
            rnd = random.Random(7)
            values = [bencode.encode(b"value %d" % i) for i in range(OPS)]
            targets = await bounded([rnd.choice(nodes).put(v) for v in values], CONCURRENCY)
            assert not [t for t in targets if isinstance(t, Exception)]
            got = await bounded([rnd.choice(nodes).get(t) for t in targets], CONCURRENCY)
            found = sum(1 for g, v in zip(got, values) if not isinstance(g, Exception) and g.value == v)
            assert found == OPS, f"{found}/{OPS} found"

            # churn: kill 20% of the nodes while 200 lookups run
            victims = rnd.sample(nodes[1:], N // 5)
            alive = [nd for nd in nodes if nd not in victims]
            picks = [rnd.randrange(OPS) for _ in range(200)]

            async def killer():
                await asyncio.sleep(0.05)
                for v in victims:
                    await v.close()

            kill = asyncio.ensure_future(killer())
            got = await bounded([rnd.choice(alive).get(targets[i]) for i in picks], CONCURRENCY)
            await kill
            ok = sum(1 for g, i in zip(got, picks) if not isinstance(g, Exception) and g.value == values[i])
            assert ok >= 0.99 * len(picks), f"{ok}/{len(picks)} lookups after churn"
            fn = await bounded([rnd.choice(alive).find_node(rnd.choice(alive).node_id) for _ in range(100)],
                               CONCURRENCY)
            ok = sum(1 for r in fn if not isinstance(r, Exception) and r.nodes)
            assert ok >= 99, f"{ok}/100 find_node after churn"
            print(f"\n50-node run on {run_loop.kind}: {time.monotonic() - t0:.1f}s")
        finally:
            for nd in nodes:
                await nd.close()

    run_loop(main, 120)
