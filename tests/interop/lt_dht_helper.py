"""Drive a libtorrent 2.0 DHT session for qudag's interop tests and benchmarks.

Runs under Debian's /usr/bin/python3 (python3-libtorrent), never under the dev venv.
Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
Bytes travel hex-encoded.  Every wait is bounded by the command's ``timeout``.

    {"cmd": "add_node", "host": h, "port": p}
    {"cmd": "put_immutable", "value": hex(bencoded)}           -> {"target", "num_success"}
    {"cmd": "get_immutable", "target": hex}                     -> {"value": hex(bencoded) | null}
    {"cmd": "put_mutable", "secret": hex64, "public": hex32, "value": hex(raw string), "salt": hex}
    {"cmd": "get_mutable", "public": hex32, "salt": hex}        -> {"value", "seq", "signature"}
    {"cmd": "get_peers", "info_hash": hex}                      -> {"peers": [[h, p], ...]}
    {"cmd": "announce", "info_hash": hex, "port": p}
    {"cmd": "live_nodes"}                                       -> {"nodes": [[id, h, p], ...]}
    {"cmd": "methods"}  -> counts of KRPC query methods sent/received (from dht_pkt_alert)
    {"cmd": "quit"}
"""
import json
import sys
import time

import libtorrent as lt


def bdecode_safe(buf):
    try:
        return lt.bdecode(buf)
    except Exception:
        return None


def same_key(get, want):
    """Some 2.0.8 alert getters raise Boost.Python.ArgumentError; one request is
    outstanding per command, so a key we cannot read counts as a match."""
    try:
        return bytes(get()) == want
    except Exception:
        return True


def unwrap(item):
    """2.0.8's bindings hand an item over as {"key": .., "value": <item>, ...}: unwrap it."""
    if isinstance(item, dict) and "key" in item and "value" in item:
        return item["value"]
    return item


def main():
    port = int(sys.argv[1])
    host = sys.argv[2] if len(sys.argv) > 2 else "127.0.0.1"
    s = lt.session({
        "listen_interfaces": "%s:%d" % (host, port),
        "enable_dht": True, "enable_lsd": False, "enable_upnp": False, "enable_natpmp": False,
        "dht_bootstrap_nodes": "",
        "dht_restrict_routing_ips": False, "dht_restrict_search_ips": False,
        "dht_block_ratelimit": 100000, "dht_upload_rate_limit": 1000000,
        "dht_ignore_dark_internet": False,
        "alert_mask": lt.alert.category_t.dht_notification | lt.alert.category_t.dht_operation_notification
                      | lt.alert.category_t.dht_log_notification | lt.alert.category_t.error_notification,
    })
    methods = {"in": {}, "out": {}, "in_ro": {}}
    own_id = [None]  # learnt from our own outgoing queries (the bindings do not expose it)

    def pump(timeout, pred):
        end = time.time() + timeout
        while time.time() < end:
            s.wait_for_alert(int(max(1, min(100, (end - time.time()) * 1000))))
            for a in s.pop_alerts():
                if isinstance(a, lt.dht_pkt_alert):
                    d = bdecode_safe(a.pkt_buf)
                    if isinstance(d, dict) and d.get(b"y") == b"q":
                        m = d.get(b"q", b"?").decode("latin-1")
                        # the 2.0.8 bindings do not expose the packet direction; libtorrent's
                        # own queries carry its "LT.." client version, ours "QD.."
                        direction = "out" if d.get(b"v", b"").startswith(b"LT") else "in"
                        methods[direction][m] = methods[direction].get(m, 0) + 1
                        if direction == "in" and d.get(b"ro") == 1:  # BEP 43 read-only querier
                            methods["in_ro"][m] = methods["in_ro"].get(m, 0) + 1
                        args = d.get(b"a")
                        if direction == "out" and isinstance(args, dict) and len(args.get(b"id", b"")) == 20:
                            own_id[0] = args[b"id"]
                    continue
                # An alert is valid only until the next pop_alerts() (its C++ object is
                # freed then; touching it later raised Boost.Python.ArgumentError), so it is
                # judged now and the rest of the batch is dropped.
                if pred(a):
                    return a
        return None

    print(json.dumps({"ready": True, "port": s.listen_port()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        t = float(req.get("timeout", 10))
        out = {"ok": True}
        if cmd == "quit":
            print(json.dumps(out), flush=True)
            break
        elif cmd == "add_node":
            s.add_dht_node((req["host"], int(req["port"])))
        elif cmd == "put_immutable":
            value = bytes.fromhex(req["value"])
            target = s.dht_put_immutable_item(lt.bdecode(value))
            tgt = str(target)
            a = pump(t, lambda a: isinstance(a, lt.dht_put_alert) and str(a.target) == tgt)
            out.update(target=tgt, num_success=None if a is None else a.num_success)
        elif cmd == "get_immutable":
            t0 = time.perf_counter()
            s.dht_get_immutable_item(lt.sha1_hash(bytes.fromhex(req["target"])))
            a = pump(t, lambda a: isinstance(a, lt.dht_immutable_item_alert) and str(a.target) == req["target"])
            item = None if a is None else unwrap(a.item)
            elapsed = time.perf_counter() - t0
            out.update(value=None if item is None or (isinstance(item, dict) and not item) else lt.bencode(item).hex(),
                       elapsed=elapsed)
        elif cmd == "put_mutable":
            pub = bytes.fromhex(req["public"])
            s.dht_put_mutable_item(bytes.fromhex(req["secret"]), pub, bytes.fromhex(req["value"]),
                                   bytes.fromhex(req["salt"]))
            a = pump(t, lambda a: isinstance(a, lt.dht_put_alert) and same_key(lambda: a.public_key, pub))
            out.update(num_success=None if a is None else a.num_success, seq=None if a is None else a.seq)
        elif cmd == "get_mutable":
            pub = bytes.fromhex(req["public"])
            s.dht_get_mutable_item(pub, bytes.fromhex(req["salt"]))
            a = pump(t, lambda a: isinstance(a, lt.dht_mutable_item_alert) and same_key(lambda: a.key, pub)
                     and a.authoritative)
            if a is None or a.seq < 0 or not a.item:
                out.update(value=None)
            else:
                out.update(value=lt.bencode(unwrap(a.item)).hex(), seq=a.seq, signature=bytes(a.signature).hex())
        elif cmd == "get_peers":
            ih = req["info_hash"]
            s.dht_get_peers(lt.sha1_hash(bytes.fromhex(ih)))
            peers = set()
            end = time.time() + t
            while time.time() < end:
                a = pump(end - time.time(), lambda a: isinstance(a, lt.dht_get_peers_reply_alert)
                         and str(a.info_hash) == ih)
                if a is None:
                    break
                for p in a.peers():
                    peers.add((p[0], p[1]))
                if req.get("want") and tuple(req["want"]) in peers:
                    break
            out.update(peers=sorted(peers))
        elif cmd == "announce":
            # ses.dht_announce is not callable from the 2.0.8 bindings (its flags type is not
            # registered), so announce the way a BitTorrent client does: add a torrent (a
            # magnet link for the infohash); libtorrent then get_peers-looks it up and sends
            # announce_peer with its listen port.
            import tempfile

            atp = lt.parse_magnet_uri("magnet:?xt=urn:btih:" + req["info_hash"])
            atp.save_path = tempfile.mkdtemp(prefix="qudag-lt-")
            s.add_torrent(atp)
            end = time.time() + t
            while time.time() < end and methods["out"].get("announce_peer", 0) < int(req.get("min", 1)):
                pump(0.1, lambda a: False)
            out.update(announced=methods["out"].get("announce_peer", 0), port=s.listen_port())
        elif cmd == "live_nodes":
            pump(0.05, lambda a: False)
            if own_id[0] is None:
                a = None
            else:
                s.dht_live_nodes(lt.sha1_hash(own_id[0]))
                a = pump(t, lambda a: isinstance(a, lt.dht_live_nodes_alert))
            out.update(nodes=[] if a is None else [[str(n["nid"]), n["endpoint"][0], n["endpoint"][1]] if isinstance(n, dict) else repr(n) for n in a.nodes])
        elif cmd == "methods":
            pump(0.05, lambda a: False)
            out.update(methods=methods)
        else:
            out = {"ok": False, "error": "unknown command"}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
