"""Resident memory of a node: idle, and holding 1,000 routing-table entries and 10,000
stored records, against bmuller's ``kademlia`` holding the same, each in its own process.

Four subprocesses, each measured from outside through ``/proc/<pid>/status`` (VmRSS) and
``/proc/<pid>/smaps_rollup`` (Pss, and USS = Private_Clean + Private_Dirty):

* ``bare``: the interpreter with the third-party modules a node imports (uvloop,
  cryptography, blake3, h11, prometheus_client) and a uvloop loop: the floor;
* ``qudag``: a ``qudag_io.node.Node`` with default settings on loopback (link listener,
  DHT socket, metrics/status HTTP server), measured idle, then after 1,000 routing-table
  inserts, then after 10,000 record-store puts;
* ``kademlia``: a ``kademlia.network.Server`` (k = 20) listening on loopback, measured at
  the same three stages with the same contacts and values.

The same child runs the stages in order (idle; ``data``: the 200 signed records are made,
ML-DSA signing being no part of storing; ``table``; ``store``) and waits on its stdin
between them, so each stage's growth is measured in one process.  Contacts and values are
generated as they are inserted, as if parsed off the network.

How the state is made realistic: contacts are real inserts (``RoutingTable.add_or_update``
/ ``RoutingTable.add_contact``) of ids built to share exactly ``i`` leading bits with the
node's own id, 20 per bucket for i = 0..49 (a k = 20 table only holds 1,000 nodes when
they are spread like that, as in a network of ~2**50 nodes), each from its own /24 (the
table's IP-diversity limit is 2 per /24 per bucket and 10 per table) in 100.64.0.0/10,
which is not loopback and reaches no real host if anything were ever sent.  Records are
real ``RecordStore`` puts as the KRPC handler makes them: 9,800 BEP 44 immutable items
(bencoded strings of 100-1,000 bytes, target = SHA-1, 50 per source address, under the
store's per-IP quota of 64) and 200 qudag signed records (ML-DSA-65 key and signature
over a 100-1,000-byte value, target = ``qd_target(key, salt)``).  ``kademlia`` stores
the same bytes under the same 20-byte keys (``ForgetfulStorage.__setitem__``; for a
signed record, key + signature + value as one value, its only way to keep them).

Per-entry and per-record figures come from the growth between stages, measured twice:
as RSS (the kernel's view, after ``malloc_trim``) and, in a second run of each child
under ``tracemalloc``, as the exact bytes the Python heap holds (RSS moves in pages and
allocator pools, which blurs a few hundred KB).  Both include the payload bytes, which
are the same in both programs (printed).  The issue sets no goal; the ratio is ours over
the peer's.

Run: ``PYTHONPATH=. /work/devvenv/bin/python -m pytest benches/bench_memory.py -q -s``
or ``PYTHONPATH=. /work/devvenv/bin/python benches/bench_memory.py`` (about 6 s).
"""
from __future__ import annotations

import json
import os
import pathlib
import random
import subprocess
import sys

N_ENTRIES = 1000
N_RECORDS = 10_000
N_SIGNED = 200
PER_SOURCE = 50
ROOT = pathlib.Path(__file__).resolve().parent.parent


# ---- child side -----------------------------------------------------------------------


def _id_in_bucket(own: bytes, i: int, rnd: random.Random) -> bytes:
    """A random id sharing exactly ``i`` leading bits with ``own``."""
    o = int.from_bytes(own, "big")
    flip = 1 << (159 - i)
    high = ((1 << 160) - 1) ^ ((flip << 1) - 1)
    return ((o & high) | ((o ^ flip) & flip) | (rnd.getrandbits(160) & (flip - 1))).to_bytes(20, "big")


def contacts(own: bytes, k: int):
    """N_ENTRIES contacts, ``k`` per bucket from the farthest bucket in, one /24 each,
    generated as they are inserted (as they would arrive from the network)."""
    rnd = random.Random(1)
    for n in range(N_ENTRIES):
        host = f"100.{64 + n // 256}.{n % 256}.{rnd.randrange(1, 255)}"
        yield _id_in_bucket(own, n // k, rnd), (host, rnd.randrange(1024, 65536))


def values():
    """(kind, bencoded value, index) for every record, generated one at a time; sizes
    uniform in 100..1000 bytes."""
    rnd = random.Random(2)
    for n in range(N_RECORDS):
        size = rnd.randrange(100, 1001)
        body = rnd.randbytes(size - len(str(size)) - 1)
        yield "signed" if n % (N_RECORDS // N_SIGNED) == 0 else "immutable", b"%d:%s" % (len(body), body), n


def source_ip(n: int) -> str:
    return f"100.80.{n // PER_SOURCE}.1"  # 200 sources, one /24 each


def _stage(name: str, **facts: object) -> None:
    """Report a stage and wait for the parent to measure it.  Freed memory is handed back
    to the kernel first (``malloc_trim``), so a later stage that reuses it shows up as
    growth instead of hiding in pages that were already resident."""
    import ctypes
    import gc

    import tracemalloc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    if tracemalloc.is_tracing():
        facts["heap"] = tracemalloc.get_traced_memory()[0]
    print(json.dumps({"stage": name, **facts}), flush=True)
    if sys.stdin.readline() == "":
        sys.exit(0)


def _signed_records():
    """200 real ML-DSA-65 signed qd records (one key, a salt per record)."""
    from qudag_core.crypto import MlDsa65PrivateKey
    from qudag_core.krpc import messages as M

    key = MlDsa65PrivateKey(bytes(range(32)))
    out = {}
    for kind, v, n in values():
        if kind == "signed":
            salt = b"rec%d" % n
            rec = M.sign_qd_record(key, record_type=1, revision=1, value=v, salt=salt)
            # From the network every record arrives as its own bytes objects.
            out[n] = (M.qd_target(rec.public_key, salt), bytes(bytearray(rec.public_key)), rec.signature,
                      rec.record_type.to_bytes(2, "big") + rec.value, rec.revision)
    return out


def child_bare() -> None:
    import asyncio

    import blake3  # noqa: F401
    import cryptography.hazmat.primitives.asymmetric.x25519  # noqa: F401
    import cryptography.hazmat.primitives.ciphers.aead  # noqa: F401
    import h11  # noqa: F401
    import prometheus_client  # noqa: F401
    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    _stage("idle")
    loop.close()


def _records(signed: dict):
    """Every record as the KRPC handler would hand it to the store, each in its own fresh
    bytes objects (as parsed off the network): ``(target, value, pubkey, signature,
    revision, source_ip)``; pubkey/signature empty and revision None for immutable items."""
    from qudag_core.krpc import messages as M

    for kind, v, n in values():
        if kind == "signed":
            target, pk, sig, value, rev = signed[n]
            yield bytes(bytearray(target)), bytes(bytearray(value)), bytes(bytearray(pk)), bytes(bytearray(sig)), \
                rev, source_ip(n)
        else:
            yield M.immutable_target(v), v, b"", b"", None, source_ip(n)


def _start_trace(trace: bool) -> None:
    if trace:
        import tracemalloc

        tracemalloc.start()


def child_qudag(trace: bool) -> None:
    import asyncio
    import time

    import uvloop

    import qudag_core
    from qudag_core.identity import Identity
    from qudag_io.config import NodeSettings
    from qudag_io.node import Node

    async def main() -> None:
        node = await Node.start(Identity.generate(os.urandom), NodeSettings())
        try:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(_stage, "idle", compiled=qudag_core.COMPILED)
            table, store = node.dht.core.table, node.dht.core.store
            k = table.config.k
            signed = _signed_records()
            _start_trace(trace)
            await asyncio.to_thread(_stage, "data", k=k)
            now = time.monotonic()
            added = sum(table.add_or_update(nid, addr, now, responded=True).inserted for nid, addr in contacts(table.own_id, k))
            await asyncio.to_thread(_stage, "table", entries=len(table), added=added)
            now = time.monotonic()
            payload = 0
            for target, value, pk, sig, rev, ip in _records(signed):
                if rev is None:
                    store.put_immutable(target, value, now, source_ip=ip)
                else:
                    store.put_signed(target, value, rev, now, pubkey=pk, signature=sig, source_ip=ip)
                payload += len(target) + len(value) + len(pk) + len(sig)
            await asyncio.to_thread(_stage, "store", entries=len(table), records=len(store),
                                    evictions=store.evictions, payload=payload)
        finally:
            await node.stop(save=False)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(main())


def child_kademlia(k: int, trace: bool) -> None:
    import asyncio
    import hashlib

    import uvloop
    from kademlia.network import Server
    from kademlia.node import Node as KNode

    async def main() -> None:
        own = hashlib.sha1(b"kademlia own id").digest()
        server = Server(ksize=k, node_id=own)
        await server.listen(0, interface="127.0.0.1")
        try:
            await asyncio.sleep(0.2)
            await asyncio.to_thread(_stage, "idle")
            signed = _signed_records()
            _start_trace(trace)
            await asyncio.to_thread(_stage, "data", k=k)
            router = server.protocol.router
            for nid, (host, port) in contacts(own, k):
                router.add_contact(KNode(nid, host, port))
            entries = sum(len(b) for b in router.buckets)
            replacements = sum(len(b.replacement_nodes) for b in router.buckets)
            await asyncio.to_thread(_stage, "table", entries=entries, replacements=replacements)
            payload = 0
            for target, value, pk, sig, _, _ in _records(signed):
                # kademlia keeps one value per key: a signed record's key, signature and
                # value travel as one byte string.
                value = pk + sig + value if pk else value
                server.storage[target] = value
                payload += len(target) + len(value)
            await asyncio.to_thread(_stage, "store", entries=entries, records=len(server.storage.data),
                                    payload=payload)
        finally:
            server.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
        r.run(main())


# ---- parent side -----------------------------------------------------------------------


def read_memory(pid: int) -> dict[str, int]:
    """Bytes: rss (VmRSS), pss and uss (Private_Clean + Private_Dirty) of ``pid``."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                out["rss"] = int(line.split()[1]) * 1024
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1]) * 1024
    out["pss"] = fields["Pss"]
    out["uss"] = fields["Private_Clean"] + fields["Private_Dirty"]
    return out


def run_child(kind: str, *args: str, timeout: float = 60.0) -> dict[str, dict]:
    """Run one child; ``{stage: {facts..., rss, pss, uss}}``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, __file__, "child", kind, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, env=env)
    stages: dict[str, dict] = {}
    try:
        for _ in range(8):  # at most a few stages
            line = p.stdout.readline()
            if not line:
                break
            facts = json.loads(line)
            facts.update(read_memory(p.pid))
            stages[facts.pop("stage")] = facts
            p.stdin.write("\n")
            p.stdin.flush()
        p.stdin.close()
        rc = p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert rc == 0, f"{kind} child exited with {rc}"
    return stages


def measure() -> dict:
    """Two runs of each child: one for resident memory (no tracing), one under
    ``tracemalloc`` for the exact bytes the Python heap holds per entry and record (page
    granularity and allocator pools make RSS deltas of a few hundred KB noisy)."""
    bare = run_child("bare")
    ours = run_child("qudag")
    k = str(ours["data"]["k"])  # the peer gets the same bucket size as our table
    peer = run_child("kademlia", k)
    ours_t = run_child("qudag", "trace")
    peer_t = run_child("kademlia", k, "trace")
    res = {"bare": bare, "qudag": ours, "kademlia": peer, "qudag_trace": ours_t, "kademlia_trace": peer_t}
    for name in ("qudag", "kademlia"):
        st, tr = res[name], res[f"{name}_trace"]
        res[f"{name}_entry_rss"] = (st["table"]["rss"] - st["data"]["rss"]) / N_ENTRIES
        res[f"{name}_record_rss"] = (st["store"]["rss"] - st["table"]["rss"]) / N_RECORDS
        res[f"{name}_entry_heap"] = (tr["table"]["heap"] - tr["data"]["heap"]) / N_ENTRIES
        res[f"{name}_record_heap"] = (tr["store"]["heap"] - tr["table"]["heap"]) / N_RECORDS
        res[f"{name}_payload_per_record"] = st["store"]["payload"] / N_RECORDS
    for m in ("rss", "heap"):
        res[f"entry_ratio_{m}"] = res[f"qudag_entry_{m}"] / max(1.0, res[f"kademlia_entry_{m}"])
        res[f"record_ratio_{m}"] = res[f"qudag_record_{m}"] / max(1.0, res[f"kademlia_record_{m}"])
    return res


def report(res: dict) -> str:
    mib = 1 / 2**20
    b, q, k = res["bare"]["idle"], res["qudag"], res["kademlia"]

    def mem(st: dict) -> str:
        return f"RSS {st['rss'] * mib:.1f} MiB, USS {st['uss'] * mib:.1f} MiB, PSS {st['pss'] * mib:.1f} MiB"

    lines = [
        f"compiled={q['idle'].get('compiled')}, k={q['data']['k']}",
        f"bare interpreter + deps:  {mem(b)}",
        f"idle qudag node:          {mem(q['idle'])} (+{(q['idle']['rss'] - b['rss']) * mib:.1f} MiB RSS over bare)",
        f"idle kademlia server:     {mem(k['idle'])}",
        f"qudag, 1,000 entries + 10,000 records: {mem(q['store'])}",
        f"per routing entry, heap (RSS): qudag {res['qudag_entry_heap']:.0f} ({res['qudag_entry_rss']:.0f}) B, "
        f"kademlia {res['kademlia_entry_heap']:.0f} ({res['kademlia_entry_rss']:.0f}) B "
        f"-> ratio {res['entry_ratio_heap']:.2f} ({res['entry_ratio_rss']:.2f})",
        f"per record, heap (RSS): qudag {res['qudag_record_heap']:.0f} ({res['qudag_record_rss']:.0f}) B, "
        f"kademlia {res['kademlia_record_heap']:.0f} ({res['kademlia_record_rss']:.0f}) B "
        f"-> ratio {res['record_ratio_heap']:.2f} ({res['record_ratio_rss']:.2f}); "
        f"payload {res['qudag_payload_per_record']:.0f} B per record in both",
    ]
    return "\n".join(lines)


def check(res: dict) -> None:
    for run in ("qudag", "qudag_trace"):
        q = res[run]
        assert q["table"]["entries"] == q["table"]["added"] == N_ENTRIES
        assert q["store"]["records"] == N_RECORDS and q["store"]["evictions"] == 0
        assert q["store"]["entries"] == N_ENTRIES
    for run in ("kademlia", "kademlia_trace"):
        k = res[run]
        assert k["table"]["entries"] == N_ENTRIES and k["table"]["replacements"] == 0
        assert k["store"]["records"] == N_RECORDS
    assert res["qudag"]["store"]["payload"] == res["kademlia"]["store"]["payload"]
    # Both really hold the bytes: a record costs at least its payload on the heap.
    for name in ("qudag", "kademlia"):
        assert res[f"{name}_record_heap"] >= res[f"{name}_payload_per_record"], name
        assert res[f"{name}_entry_heap"] > 20, name  # at least the id
    assert res["bare"]["idle"]["rss"] < res["qudag"]["idle"]["rss"]


def test_memory_vs_kademlia(benchmark):
    res = benchmark.pedantic(measure, rounds=1, iterations=1)
    print("\n" + report(res))
    benchmark.extra_info.update({k: v for k, v in res.items() if isinstance(v, float)})
    benchmark.extra_info.update(idle_node_rss=res["qudag"]["idle"]["rss"], bare_rss=res["bare"]["idle"]["rss"],
                                loaded_node_rss=res["qudag"]["store"]["rss"])
    check(res)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "child":
        trace = sys.argv[-1] == "trace"
        if sys.argv[2] == "kademlia":
            child_kademlia(int(sys.argv[3]), trace)
        elif sys.argv[2] == "qudag":
            child_qudag(trace)
        else:
            child_bare()
    else:
        r = measure()
        print(report(r))
        check(r)
