"""The node runtime in-process (``qudag_io.node.Node``) and its configuration
(``qudag_io.config``): metrics wired where events happen, status, shutdown, save hooks."""
from __future__ import annotations

import asyncio
import os
import urllib.request

import pytest
from hypothesis import given, settings, strategies as st

from qudag_core.identity import Identity
from qudag_io._loop import new_event_loop
from qudag_io.config import ConfigError, NodeSettings, REFERENCE, dump_toml, load_config, parse_hostport, reference_markdown
from qudag_io.link import ConnectionClosed
from qudag_io.node import Node, classify_handshake_failure, send_message
from qudag_io.metrics import HandshakeFailure


@pytest.fixture(params=["uvloop", "asyncio"])
def run(request, monkeypatch):
    monkeypatch.setenv("QUDAG_LOOP", request.param)

    def _run(coro):
        loop = new_event_loop()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, 60))
        finally:
            loop.close()

    return _run


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in the exposition")


def _series(text: str) -> int:
    return sum(1 for ln in text.splitlines() if ln and not ln.startswith("#"))


async def _get(url: str) -> bytes:
    return await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())


def test_two_nodes_links_dht_metrics_status_and_save_hook(run):
    async def main():
        received = []
        a = await Node.start(Identity.generate(os.urandom), NodeSettings())
        b = await Node.start(Identity.generate(os.urandom), NodeSettings(bootstrap=[a.dht.address]),
                             on_message=lambda peer, data: received.append((peer, data)))
        saved = []
        b.save_hooks.append(lambda snap: saved.append(snap) or "test store")
        try:
            host, port = b.listener.addresses[0]
            conn = await a.dial(host, port, peer_id=b.identity.node_id)
            async with conn:
                await send_message(conn, b"ping over the link")
            assert received == [(a.identity.node_id, b"ping over the link")]
            # A dial expecting the wrong identity fails and is counted by reason.
            with pytest.raises(ConnectionClosed):
                await a.dial(host, port, peer_id=a.identity.node_id)
            target = await b.dht_put(b"5:hello")
            assert await a.dht_get(target) == b"5:hello"
            st = b.status()
            assert st["node_id"] == b.identity.node_id.hex() and st["routing_table_size"] >= 1
            text = (await _get(f"http://{b.http.host}:{b.http.port}/metrics")).decode()
            assert _metric(text, "qudag_handshakes_ok_total") == 1.0
            assert _metric(text, 'qudag_dht_operations_total{op="put",outcome="ok"}') == 1.0
            assert _metric(text, 'qudag_dht_operations_total{op="find_node",outcome="ok"}') == 1.0  # bootstrap
            assert _metric(text, 'qudag_bytes_sent_total{transport="udp"}') > 0
            # wire bytes: the handshakes and the framed message (tests/io/test_metrics_node.py is exact)
            assert _metric(text, 'qudag_bytes_received_total{transport="tcp"}') > len(b"ping over the link") + 1000
            a_text = a.metrics.render().decode()
            assert _metric(a_text, 'qudag_handshakes_failed_total{reason="auth_failed"}') == 1.0
            assert _metric(a_text, 'qudag_dht_operations_total{op="get",outcome="ok"}') == 1.0
            import json
            status = json.loads(await _get(f"http://{b.http.host}:{b.http.port}/status"))
            assert status["node_id"] == b.identity.node_id.hex()
        finally:
            results = await b.stop()
            await a.stop()
        assert results == ["test store"]
        assert saved and saved[0]["node_id"] == b.identity.node_id.hex()
        assert any(addr == tuple(a.dht.address) for _, addr in saved[0]["dht_contacts"]) or saved[0]["dht_contacts"]
        assert "seed" not in repr(saved[0])

    run(main())


def test_shutdown_tells_peers_with_close(run):
    async def main():
        a = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False))
        b = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False))
        try:
            conn = await a.dial(*b.listener.addresses[0], peer_id=b.identity.node_id)
            await send_message(conn, b"x")
            await b.stop()
            with pytest.raises(ConnectionClosed) as ei:
                await asyncio.wait_for(conn.recv(), 5)
            assert ei.value.by_peer and "shutting down" in ei.value.reason
            assert b.status()["peers"] == []
        finally:
            await a.stop()

    run(main())


def test_series_count_constant_with_5_and_50_peers(run):
    async def main():
        hub = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False))
        clients = [await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False))
                   for _ in range(5)]
        before = _series(hub.metrics.render().decode())
        conns = []
        try:
            host, port = hub.listener.addresses[0]

            async def dial_all(n):
                for i in range(n):
                    c = clients[i % len(clients)]
                    conn = await c.dial(host, port, peer_id=hub.identity.node_id)
                    await send_message(conn, b"m")
                    conns.append(conn)

            await dial_all(5)
            five = _series(hub.metrics.render().decode())
            await dial_all(45)
            fifty_text = hub.metrics.render().decode()
            assert len(hub.status()["peers"]) == 50
            assert _metric(fifty_text, 'qudag_connections_active{direction="inbound"}') == 50.0
            assert before == five == _series(fifty_text)
        finally:
            for conn in conns:
                conn.abort()
            await hub.stop()
            for c in clients:
                await c.stop()

    run(main())


def test_classify_handshake_failure():
    assert classify_handshake_failure(asyncio.TimeoutError()) is HandshakeFailure.TIMEOUT
    assert classify_handshake_failure(ConnectionClosed(0x06, "auth", True)) is HandshakeFailure.AUTH_FAILED
    assert classify_handshake_failure(ConnectionClosed(0x05, "v", True)) is HandshakeFailure.VERSION
    assert classify_handshake_failure(ConnectionClosed(0x99, "?", True)) is HandshakeFailure.OTHER
    # the transport ended mid-handshake (the link core's code 0, by the peer)
    assert classify_handshake_failure(ConnectionClosed(0, "transport closed by peer", True)) is HandshakeFailure.CLOSED
    assert classify_handshake_failure(ConnectionClosed(0, "closed locally", False)) is HandshakeFailure.OTHER
    assert classify_handshake_failure(ValueError()) is HandshakeFailure.OTHER


# ------------------------------------------------------------------------- config
def test_config_file_then_flags(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text('[node]\nkeystore = "/k"\nlog_level = "DEBUG"\n[link]\nlisten = "127.0.0.1:4000"\n'
                   '[dht]\nlisten = "[::1]:4001"\nbootstrap = ["10.0.0.1:6881"]\nbootstrap_timeout = 3\n'
                   '[http]\nenabled = false\n')
    s = load_config(str(cfg))
    assert s.keystore == "/k" and s.log_level == "debug" and s.link_listen == ("127.0.0.1", 4000)
    assert s.dht_listen == ("::1", 4001) and s.bootstrap == [("10.0.0.1", 6881)] and s.bootstrap_timeout == 3.0
    assert s.http_enabled is False
    s = load_config(str(cfg), {("link", "listen"): "127.0.0.1:5000", ("dht", "bootstrap"): None,
                               ("node", "keystore"): "/other"})
    assert s.link_listen == ("127.0.0.1", 5000) and s.keystore == "/other" and s.bootstrap == [("10.0.0.1", 6881)]


@pytest.mark.parametrize("text, needle", [
    ('[dht]\nbootsrap = []\n', "unknown key 'bootsrap'"),
    ('[nodes]\nkeystore = "x"\n', "unknown section [nodes]"),
    ('[link]\nlisten = 4000\n', "must be a str"),
    ('[link]\nlisten = "nohost"\n', "is not HOST:PORT"),
    ('[link]\nlisten = "h:99999"\n', "out of range"),
    ('[http]\nenabled = "yes"\n', "must be a bool"),
    ('[node]\nlog_level = "loud"\n', "log_level"),
    ('[onion]\nrelay = 1\n', "must be a bool"),
    ('[onion]\nlisten = "x"\n', "is not HOST:PORT"),
    ('[node\n', "not valid TOML"),
])
def test_config_errors(tmp_path, text, needle):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=None) as ei:
        load_config(str(cfg))
    assert needle in str(ei.value)


def test_reference_covers_every_key_and_dump_round_trips(tmp_path):
    s = NodeSettings(keystore='/a "quoted"\\path', passphrase_file="/p", data_dir="/d", log_level="warning",
                     link_listen=("::1", 1), dht_listen=("127.0.0.1", 2), bootstrap=[("::1", 3), ("1.2.3.4", 4)],
                     bootstrap_timeout=2.5, http_listen=("127.0.0.1", 5), http_enabled=False, relay=True,
                     onion_listen=("127.0.0.1", 6), onion_directory="/dir.json", dark_circuit_hops=3)
    cfg = tmp_path / "rt.toml"
    cfg.write_text(dump_toml(s))
    assert load_config(str(cfg)) == s
    md = reference_markdown()
    for section, key in REFERENCE:
        assert f"`[{section}] {key}`" in md


def test_dark_circuit_hops_is_checked(tmp_path):
    """[dark] circuit_hops: 0 (direct) or 2..8, and only with a relay to build circuits."""
    cfg = tmp_path / "c.toml"
    for hops, relay, ok in [(0, False, True), (3, True, True), (1, True, False), (9, True, False),
                            (-1, True, False), (3, False, False)]:
        cfg.write_text(f"[onion]\nrelay = {'true' if relay else 'false'}\n[dark]\ncircuit_hops = {hops}\n")
        if ok:
            assert load_config(str(cfg)).dark_circuit_hops == hops
        else:
            with pytest.raises(ConfigError, match="circuit_hops"):
                load_config(str(cfg))
    assert load_config(None, {("onion", "relay"): True, ("dark", "circuit_hops"): 2}).dark_circuit_hops == 2


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_parse_hostport_declared_errors_only(text):
    try:
        host, port = parse_hostport(text)
    except ConfigError:
        return
    assert 0 <= port <= 65535 and host


def test_inbound_handshake_failure_counted_by_reason(run):
    async def main():
        n = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False))
        try:
            h, p = n.listener.addresses[0]
            r, w = await asyncio.open_connection(h, p)
            w.write(b"\xff" * 300)  # not a handshake message
            await w.drain()
            assert await asyncio.wait_for(r.read(), 5) != b""  # an alert, then the close
            w.close()
            for _ in range(50):  # bounded: the listener's task records it right after the close
                text = n.metrics.render().decode()
                if _metric(text, 'qudag_handshakes_failed_total{reason="bad_message"}') == 1.0:
                    break
                await asyncio.sleep(0.02)
            assert _metric(text, 'qudag_handshakes_failed_total{reason="bad_message"}') == 1.0
            assert _metric(text, "qudag_handshakes_ok_total") == 0.0
            assert n.status()["peers"] == []
        finally:
            await n.stop()

    run(main())


def test_relay_nodes_carry_a_three_hop_circuit(run, tmp_path):
    from qudag_io.node import FileDirectory, write_directory
    from qudag_io.onion import OnionClient, OnionNode

    async def main():
        path = str(tmp_path / "relays.json")
        got = []
        relays = [await Node.start(Identity.generate(os.urandom),
                                   NodeSettings(http_enabled=False, relay=True, onion_directory=path),
                                   on_message=lambda peer, data: got.append((peer, data)))
                  for _ in range(3)]
        client = None
        try:
            # Written after the relays started: they re-read the file when a hop is missing.
            write_directory(path, [r.onion.certificate for r in relays])
            client = await OnionNode.start(Identity.generate(os.urandom), FileDirectory(path), relay=False)
            circ = await OnionClient(client, per_subnet=None).build_circuit(hops=3)
            assert sorted(circ.node_ids) == sorted(bytes(r.identity.node_id) for r in relays)
            stream = await circ.open_stream(circ.exit_node_id, "echo")
            await stream.send(b"through three relays")
            assert await stream.readexactly(20) == b"through three relays"
            middle = next(r for r in relays if bytes(r.identity.node_id) == circ.node_ids[1])
            st = middle.status()["circuits"]
            assert st["relay"] is True and st["relayed_circuits"] == 1
            assert "onion" in middle.addresses()
            await stream.close()
            # Application messages to the exit's "msg" service, acknowledged by digest.
            from qudag_io.node import send_over_stream
            s2 = await circ.open_stream(circ.exit_node_id, "msg")
            await send_over_stream(s2, b"anonymous hello")
            await send_over_stream(s2, b"")
            await s2.close()
            assert got == [(None, b"anonymous hello"), (None, b"")]
            await circ.close()
        finally:
            if client is not None:
                await client.close()
            for r in relays:
                await r.stop()

    run(main())


def test_file_directory_skips_bad_entries(tmp_path):
    from qudag_io.node import FileDirectory
    import json

    ident = Identity.generate(os.urandom)
    good = ident.issue_certificate([("127.0.0.1", 1)], now=__import__("time").time())
    path = tmp_path / "d.json"
    path.write_text(json.dumps(["zz", "00" * 10, good.to_bytes().hex()]))
    d = FileDirectory(str(path))
    assert len(d) == 1 and d.get(bytes(ident.node_id)) is not None
    path.write_text("not json")
    assert len(FileDirectory(str(path))) == 0
    assert len(FileDirectory(str(tmp_path / "missing.json"))) == 0


def test_dht_rate_limit_drops_are_counted_and_restore_contacts_bootstrap(run):
    import socket

    async def main():
        a = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False))
        b = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False),
                             restore_contacts=[a.dht.address])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            assert b.status()["routing_table_size"] >= 1  # joined through the restored contact
            # Past the per-IP burst (1000, refilled at 500/s) of the DHT core's limiter, in
            # batches the socket buffer can hold.
            for _ in range(20):
                for _ in range(100):
                    sock.sendto(b"d1:ad2:id20:xxxxxxxxxxxxxxxxxxxxe1:q4:ping1:t2:aa1:y1:qe", a.dht.address)
                await asyncio.sleep(0.003)
            text = ""
            for _ in range(100):  # bounded wait for the datagrams to be processed
                await asyncio.sleep(0.02)
                text = a.metrics.render().decode()
                if _metric(text, 'qudag_ratelimit_drops_total{limiter="dht_queries"}') > 0:
                    break
            assert _metric(text, 'qudag_ratelimit_drops_total{limiter="dht_queries"}') > 0
            assert _metric(text, 'qudag_bytes_received_total{transport="udp"}') > 1000 * 40
        finally:
            sock.close()
            await b.stop()
            await a.stop()

    run(main())


def test_foreign_link_messages_are_ignored(run):
    import random

    from qudag_io.node import MSG_DATA

    async def main():
        got = []
        n = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False),
                             on_message=lambda peer, data: got.append(data))
        c = await Node.start(Identity.generate(os.urandom), NodeSettings(http_enabled=False))
        try:
            conn = await c.dial(*n.listener.addresses[0], peer_id=n.identity.node_id)
            rnd = random.Random(7)
            assert MSG_DATA == b"\x00"
            for _ in range(50):  # any prefix but MSG_DATA is not an application message
                msg = bytes([rnd.choice(range(1, 256))]) + rnd.randbytes(rnd.randrange(0, 200))
                await conn.send(msg)
            await conn.send(b"")
            await send_message(conn, bytes(60 * 1024))  # near the link's frame limit: delivered
            await send_message(conn, b"still usable")
            assert got == [bytes(60 * 1024), b"still usable"]
            await conn.close()
        finally:
            await c.stop()
            await n.stop()

    run(main())


@pytest.mark.skipif(not __import__("qudag_io.loopback", fromlist=["can_bind"]).can_bind(["127.5.0.1", "127.6.0.1"]),
                    reason="this system binds only 127.0.0.1 on loopback")
def test_node_dials_from_its_listen_addresses(run, tmp_path):
    """A node run with ``--listen 127.5.0.1:...`` is seen by its peers at 127.5.0.1 on every
    kind of link it opens: its own dial, its dark storage links (from the link listener's
    address) and its relay's links to other relays (from the onion listener's)."""
    from qudag_core.dark import Publisher
    from qudag_io.dark import derived_service
    from qudag_io.node import write_directory

    def settings(host, **kw):
        return NodeSettings(link_listen=(host, 0), dht_listen=(host, 0), onion_listen=(host, 0), http_enabled=False,
                            relay=True, onion_directory=str(tmp_path / "relays.json"),
                            dark_directory=str(tmp_path / "dark.json"), **kw)

    async def main():
        b = await Node.start(Identity.generate(os.urandom), settings("127.6.0.1"))
        a = None
        try:
            a = await Node.start(Identity.generate(os.urandom), settings("127.5.0.1", bootstrap=[b.dht.address]))
            assert a.link_hosts == ("127.5.0.1",) and a.dark.local_hosts == ("127.5.0.1",)
            assert a.onion.bound_hosts == ("127.5.0.1",)

            def inbound_at_b():
                return [p["address"][0] for p in b.status()["peers"] if p["direction"] == "inbound"]

            conn = await a.dial(*b.listener.addresses[0], peer_id=b.identity.node_id)
            async with conn:
                await send_message(conn, b"hello")
                assert conn.local_address[0] == "127.5.0.1" and inbound_at_b() == ["127.5.0.1"]
            # Dark storage: A's descriptor puts reach B over a link A opens.
            published = await a.dark.publish(Publisher(derived_service(a.identity, 0, a.certificate), os.urandom))
            assert any(nid == b.dht.node_id for _, puts in published for nid, _ in puts), published
            assert len(b.dark_server.store) >= 1  # the put arrived over that link
            assert inbound_at_b() and set(inbound_at_b()) == {"127.5.0.1"}  # the pooled dark link is open
            # Onion: A's relay opens a link to B's relay, as it would for an EXTEND.
            write_directory(str(tmp_path / "relays.json"), [a.onion.certificate, b.onion.certificate])
            out = await a.onion.link_to(b.onion.node_id)
            assert out.conn.local_address[0] == "127.5.0.1"
            for _ in range(100):
                if a.onion.node_id in b.onion._links_by_peer:
                    break
                await asyncio.sleep(0.02)
            assert b.onion._links_by_peer[a.onion.node_id].conn.remote_address[0] == "127.5.0.1"
        finally:
            if a is not None:
                await a.stop(save=False)
            await b.stop(save=False)

    run(main())
