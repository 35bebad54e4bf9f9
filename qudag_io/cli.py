"""The ``qudag`` command line (docs/cli.md).

Subcommands: ``keygen``, ``node run``, ``send``, ``listen``, ``dht get|put|find-node|ping``,
``address new|publish|list``, ``resolve``, ``status`` and ``testnet``.

The decision a reader would ask about: **``qudag dht`` starts a short-lived DHT node**
that bootstraps from ``--bootstrap`` nodes (a running node's UDP address), instead of
driving a running node through a control API.  The metrics HTTP server only speaks
GET/HEAD and is deliberately read-only; a write API would need authentication (a bearer
token file beside the keystore) and its own review.  A short-lived node needs no
secrets and no new attack surface, and exercises the same network a remote user would.

``qudag address publish`` does not need a control API either: the command line and the
running node share the address table of the node's SQLite database (the node notices
edits through ``PRAGMA data_version`` and publishes; see docs/cli.md "Dark addresses").

Errors are one line on stderr saying what to do (exit 1; 2 for usage errors);
``--debug`` shows the traceback instead.  Secrets (passphrases, seeds) are never logged
or printed.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any, Optional, Sequence

from qudag_core.identity import Identity, NodeCertificate, NodeId
from qudag_core.keystore import KeystoreError, ScryptParams, WrongPassphrase
from qudag_io._loop import run
from qudag_io.config import ConfigError, NodeSettings, dump_toml, load_config, parse_hostport
from qudag_io.keystore import read_keystore, write_keystore
from qudag_io.loopback import TESTNET_MAX_NODES, can_bind, testnet_client_host, testnet_host

__all__ = ["CliError", "main"]

log = logging.getLogger("qudag.cli")

READY_FILE = "node.json"
CERT_FILE = "node.cert"
DB_FILE = "node.db"
ONION_CERT_FILE = "onion.cert"


class CliError(Exception):
    """A user-facing failure: one line, saying what to do."""


# --------------------------------------------------------------------------- helpers
def _passphrase(args: argparse.Namespace, *, confirm: bool = False, path: str = "") -> bytes:
    """From ``--passphrase-file``, then ``QUDAG_PASSPHRASE``, then a prompt."""
    pf = getattr(args, "passphrase_file", None)
    if pf:
        try:
            with open(pf, "rb") as f:
                line = f.readline().rstrip(b"\r\n")
        except OSError as exc:
            raise CliError(f"cannot read passphrase file {pf}: {exc.strerror}") from None
        if not line:
            raise CliError(f"passphrase file {pf} is empty")
        return line
    env = os.environ.get("QUDAG_PASSPHRASE")
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise CliError("no passphrase: use --passphrase-file FILE or set QUDAG_PASSPHRASE (stdin is not a terminal)")
    p1 = getpass.getpass(f"passphrase for {path}: ")
    if confirm and getpass.getpass("repeat passphrase: ") != p1:
        raise CliError("the passphrases differ; run the command again")
    if not p1:
        raise CliError("empty passphrase refused")
    return p1.encode()


def _load_identity(path: str, args: argparse.Namespace) -> Identity:
    if not path:
        raise CliError("no keystore given: pass --keystore PATH (create one with: qudag keygen --keystore PATH)")
    if not os.path.exists(path):
        raise CliError(f"keystore {path} does not exist; create it with: qudag keygen --keystore {path}")
    pw = _passphrase(args, path=path)
    try:
        return Identity.from_secrets(read_keystore(path, pw))
    except WrongPassphrase:
        raise CliError(f"wrong passphrase for keystore {path}") from None
    except KeystoreError as exc:
        raise CliError(str(exc)) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _write_private(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- keygen
def cmd_keygen(args: argparse.Namespace) -> int:
    path = args.keystore
    if os.path.exists(path) and not args.force:
        raise CliError(f"{path} already exists; pass --force to replace it (the old identity is lost)")
    pw = _passphrase(args, confirm=True, path=path)
    ident = Identity.generate(os.urandom)
    params = ScryptParams(1 << args.scrypt_log2n, 8, 1)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, mode=0o700, exist_ok=True)
    write_keystore(path, ident.secrets(), pw, kdf_params=params, overwrite=args.force)
    print(f"node id {ident.node_id.hex()}")
    print(f"keystore written to {path} (mode 0600)")
    return 0


# --------------------------------------------------------------------------- node run
def _settings_from_args(args: argparse.Namespace) -> NodeSettings:
    ov: dict[tuple[str, str], Any] = {
        ("node", "keystore"): args.keystore,
        ("node", "passphrase_file"): args.passphrase_file,
        ("node", "data_dir"): args.data_dir,
        ("node", "log_level"): args.log_level,
        ("link", "listen"): args.listen_tcp,
        ("dht", "listen"): args.listen_udp,
        ("dht", "bootstrap"): args.bootstrap,
        ("onion", "relay"): args.relay,
        ("onion", "listen"): args.onion_listen,
        ("onion", "directory"): args.onion_directory,
        ("dark", "directory"): args.dark_directory,
        ("dark", "circuit_hops"): args.dark_circuit_hops,
        ("http", "listen"): args.metrics,
        ("http", "enabled"): False if args.no_http else None,
    }
    return load_config(args.config, ov)


async def _run_node(settings: NodeSettings, identity: Identity) -> int:
    from qudag_io.node import Node

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_message(peer: Optional[NodeId], data: bytes) -> None:
        log.info("message %s: %d bytes", f"from {peer}" if peer is not None else "over a circuit", len(data))

    from qudag_io.persist import NodeDatabase, PersistError

    data_dir = settings.resolved_data_dir()
    db_path = os.path.join(data_dir, DB_FILE)
    try:
        db = NodeDatabase.open(db_path)
    except PersistError as exc:
        raise CliError(str(exc)) from None
    holder: dict[str, Any] = {}

    def save_state(_snapshot: dict) -> str:
        db.save(holder["node"].dht.core, loop.time())
        return f"{db_path} (routing table, reputation; records and dark descriptors are written through)"

    try:
        node = await Node.start(identity, settings, on_message=on_message, save_hooks=[save_state],
                                database=db)
    except BaseException:
        db.close()
        raise
    holder["node"] = node
    saved_id = db.saved_node_id()
    if saved_id is not None and saved_id != node.dht.node_id:
        await node.stop(save=False)
        db.close()
        raise CliError(f"{db_path} belongs to another node identity: use that identity's keystore or another --data-dir")
    n_nodes, n_peers, n_records = db.attach(node.dht.core, loop.time())
    log.info("restored from %s: %d routing entries, %d reputation scores, %d records",
             db_path, n_nodes, n_peers, n_records)
    if n_nodes and not settings.bootstrap:
        # Rejoin from the saved table alone: a lookup of our own id refreshes it.
        try:
            await asyncio.wait_for(node.dht.find_node(node.dht.node_id), 15)
        except Exception as exc:  # a failed rejoin is reported; the node keeps serving
            log.warning("rejoin from the saved routing table failed: %s", exc)

    async def autosave() -> None:
        while True:
            await asyncio.sleep(60)
            try:
                db.save(node.dht.core, loop.time())
            except PersistError as exc:
                log.error("periodic save failed: %s", exc)

    saver = loop.create_task(autosave())
    from qudag_io.dark import AddressKeeper

    keeper = AddressKeeper(db, identity, node.dark, node.certificate)

    async def keep_addresses() -> None:
        n = await keeper.start()  # after the ready line: publishing may wait on storage nodes
        if n:
            log.info("republished %d dark address%s from %s", n, "" if n == 1 else "es", db_path)
        await keeper.run()

    keeper_task: Optional[asyncio.Task] = None
    _write_private(os.path.join(data_dir, CERT_FILE), node.certificate.to_bytes())  # type: ignore[union-attr]
    if node.onion is not None:
        _write_private(os.path.join(data_dir, ONION_CERT_FILE), node.onion.certificate.to_bytes())  # type: ignore[union-attr]
    ready = {"event": "ready", "node_id": identity.node_id.hex(), "pid": os.getpid(), **node.addresses()}
    _write_private(os.path.join(data_dir, READY_FILE), json.dumps(ready).encode())
    print(json.dumps(ready), flush=True)
    log.info("node %s up: link %s, dht %s, http %s", identity.node_id, ready.get("link"), ready.get("dht"),
             ready.get("http"))
    keeper_task = loop.create_task(keep_addresses())
    await stop.wait()
    log.info("shutting down: closing %d links", len(node.peers))
    saver.cancel()
    keeper_task.cancel()
    await asyncio.gather(keeper_task, return_exceptions=True)
    try:
        results = await node.stop()
    finally:
        db.close()
    if results:
        for r in results:
            log.info("state saved: %s", r)
    else:
        log.info("state not saved: no persistence layer configured (node.save_hooks is empty)")
    try:
        os.unlink(os.path.join(data_dir, READY_FILE))
    except FileNotFoundError:
        pass
    log.info("shutdown complete")
    return 0


def cmd_node_run(args: argparse.Namespace) -> int:
    try:
        settings = _settings_from_args(args)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    _setup_logging("debug" if args.debug else settings.log_level)
    identity = _load_identity(settings.keystore, argparse.Namespace(passphrase_file=settings.passphrase_file))
    return run(_run_node(settings, identity))


# --------------------------------------------------------------------------- send/listen
def _peer_args(args: argparse.Namespace) -> tuple[str, int, Optional[bytes], Optional[NodeCertificate]]:
    cert = None
    if args.peer_cert:
        try:
            with open(args.peer_cert, "rb") as f:
                cert = NodeCertificate.from_bytes(f.read())
        except OSError as exc:
            raise CliError(f"cannot read certificate {args.peer_cert}: {exc.strerror}") from None
        except Exception as exc:
            raise CliError(f"{args.peer_cert} is not a valid node certificate: {exc}") from None
    if args.to:
        host, port = parse_hostport(args.to, what="--to")
    elif cert is not None and cert.addresses:
        host, port = cert.addresses[0]
    else:
        raise CliError("say where to send: --to HOST:PORT (and --peer-id HEX) or --peer-cert FILE")
    peer_id = None
    if args.peer_id:
        try:
            peer_id = bytes(NodeId.from_hex(args.peer_id))
        except ValueError:
            raise CliError(f"--peer-id {args.peer_id!r} is not a node id in hex") from None
    if peer_id is None and cert is None:
        raise CliError("refusing to send to an unauthenticated peer: pass --peer-id HEX or --peer-cert FILE")
    return host, port, peer_id, cert


async def _send(identity: Identity, host: str, port: int, peer_id: Optional[bytes],
                cert: Optional[NodeCertificate], messages: list[bytes], timeout: float) -> int:
    from qudag_io.link import connect
    from qudag_io.node import send_message

    conn = await connect(host, port, identity=identity, expected_peer_id=peer_id, peer_certificate=cert,
                         timeout=timeout)
    async with conn:
        for m in messages:
            await send_message(conn, m, timeout=timeout)
            print(f"delivered {len(m)} bytes to {conn.peer_node_id.hex()} (acknowledged, digest verified)")
    return 0


def path_rule_for(addresses: Sequence[str]) -> Optional[int]:
    """The ``per_subnet`` for circuits over relays at ``addresses``: 1 (the production
    rule, one relay per /16) unless they are all loopback and some share a /16 -- a local
    network with nodes on 127.0.0.1, where the rule cannot hold; None turns it off there.
    Relays on loopback in distinct /16s (``qudag testnet``, ``qudag_io.loopback``) keep it
    on, and a directory with any non-loopback relay always does."""
    import ipaddress

    from qudag_core.onion.path import subnet_of

    if not all(ipaddress.ip_address(a).is_loopback for a in addresses):
        return 1
    subnets = [subnet_of(a) for a in addresses]
    return 1 if len(set(subnets)) == len(subnets) else None


async def _send_circuit(peer_id: bytes, directory_path: str, hops: int, messages: list[bytes], timeout: float) -> int:
    from qudag_io.node import FileDirectory, send_over_stream
    from qudag_io.onion import OnionClient, OnionNode

    directory = FileDirectory(directory_path)
    if directory.get(peer_id) is None:
        raise CliError(f"{peer_id.hex()} is not a relay in {directory_path}; only nodes run with --relay can be reached with --hops")
    if len(directory) < hops:
        raise CliError(f"{directory_path} lists {len(directory)} relays; --hops {hops} needs at least {hops}")
    per_subnet = path_rule_for([r.address for r in directory.relay_infos()])
    client = await OnionNode.start(Identity.generate(os.urandom), directory, relay=False)
    try:
        circ = await OnionClient(client, per_subnet=per_subnet).build_circuit(
            hops=hops, exit=peer_id, timeout=timeout)
        print(f"{hops}-hop circuit built; " + ("one relay per /16" if per_subnet
                                                else "/16 path rule off (loopback relays share a /16)"), flush=True)
        stream = await circ.open_stream(circ.exit_node_id, "msg", timeout=timeout)
        for m in messages:
            await send_over_stream(stream, m, timeout=timeout)
            print(f"delivered {len(m)} bytes to {peer_id.hex()} over a {hops}-hop circuit "
                  f"(acknowledged, digest verified)")
        await stream.close()
        await circ.close()
    finally:
        await client.close()
    return 0


async def _send_dark(args: argparse.Namespace, messages: list[bytes]) -> int:
    ep = await _resolve_name(args.to, args)
    host, port = ep.certificate.addresses[0]
    print(f"{args.to} resolved to node {ep.certificate.node_id.hex()} at {_hp(host, port)}", flush=True)
    if args.hops:
        return await _send_circuit(bytes(ep.certificate.node_id), args.directory, args.hops, messages, args.timeout)
    identity = _load_identity(args.keystore, args) if args.keystore else Identity.generate(os.urandom)
    return await _send(identity, host, port, bytes(ep.certificate.node_id), ep.certificate, messages, args.timeout)


def cmd_send(args: argparse.Namespace) -> int:
    _setup_logging("debug" if args.debug else "warning")
    if args.message == ["-"]:
        messages = [sys.stdin.buffer.read()]
    else:
        messages = [m.encode() for m in args.message]
    dark = bool(args.to and args.to.lower().endswith(".dark"))
    if dark:
        _parse_dark(args.to)  # a bad name fails before anything starts
        if args.peer_id or args.peer_cert:
            raise CliError("--to NAME.dark resolves the peer itself: drop --peer-id/--peer-cert")
    if args.hops:
        if not 1 <= args.hops <= 8:
            raise CliError("--hops must be between 1 and 8")
        if not args.directory:
            raise CliError("--hops needs --directory FILE (the relay directory: onion certificates)")
    if dark:
        return run(_send_dark(args, messages))
    if args.hops:
        if not args.peer_id:
            raise CliError("--hops needs --peer-id HEX (the exit node) or --to NAME.dark")
        peer = _hex(args.peer_id, 20, "--peer-id")
        return run(_send_circuit(peer, args.directory, args.hops, messages, args.timeout))
    host, port, peer_id, cert = _peer_args(args)
    identity = _load_identity(args.keystore, args) if args.keystore else Identity.generate(os.urandom)
    return run(_send(identity, host, port, peer_id, cert, messages, args.timeout))


async def _listen(identity: Identity, host: str, port: int, count: int) -> int:
    from qudag_io.link import listen
    from qudag_io.node import MSG_ACK, MSG_DATA
    from qudag_core.crypto import blake3_hash

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    got = 0

    async def handler(conn: Any) -> None:
        nonlocal got
        async for msg in conn:
            if msg[:1] != MSG_DATA:
                continue
            data = msg[1:]
            await conn.send(MSG_ACK + blake3_hash(data, 32))
            text = data.decode("utf-8", "backslashreplace")
            print(f"from {conn.peer_node_id.hex()}: {text}", flush=True)
            got += 1
            if count and got >= count:
                stop.set()

    async with await listen(host, port, identity=identity, handler=handler) as lst:
        h, p = lst.addresses[0]
        print(json.dumps({"event": "listening", "node_id": identity.node_id.hex(), "link": [h, p]}), flush=True)
        await stop.wait()
    # Leaving the block closes every link after the acknowledgements already queued.
    return 0


def cmd_listen(args: argparse.Namespace) -> int:
    _setup_logging("debug" if args.debug else "warning")
    identity = _load_identity(args.keystore, args)
    host, port = parse_hostport(args.listen, what="--listen")
    return run(_listen(identity, host, port, args.count))


# --------------------------------------------------------------------------- dht
async def start_read_only_dht(bind: str, bootstrap: list) -> Any:
    """A short-lived DHT node that asks but never answers: a BEP 43 read-only node
    (``NodeConfig(read_only=True)``).  Its queries carry ``ro`` = 1, so the nodes it asks
    answer without adding it to their routing tables or pinging it: it leaves no dead
    contact behind that later lookups would wait out (a query timeout, 2-3 s, per lookup
    that meets it).  Incoming queries are dropped by the core.  Bootstrap is not awaited."""
    from qudag_core.krpc.node import NodeConfig
    from qudag_io.dht import DhtNode

    return await DhtNode.start(bind, 0, bootstrap=bootstrap, config=NodeConfig(read_only=True),
                               wait_bootstrap=False)


async def _dht(args: argparse.Namespace) -> int:
    from qudag_core.krpc import bencode

    boot = [parse_hostport(b, what="--bootstrap") for b in args.bootstrap]
    if not boot and args.dht_cmd != "ping":
        raise CliError("pass --bootstrap HOST:PORT (a running node's DHT/UDP address, see: qudag status)")
    dht = await start_read_only_dht(args.bind, boot)
    try:
        if boot:
            try:
                await asyncio.wait_for(asyncio.shield(dht._bootstrapped), args.timeout)
            except asyncio.TimeoutError:
                raise CliError(f"no DHT node answered within {args.timeout:g}s; check --bootstrap") from None
        if args.dht_cmd == "put":
            value = bencode.encode(args.value.encode())
            target = await asyncio.wait_for(dht.put(value), args.timeout)
            print(target.hex())
        elif args.dht_cmd == "get":
            target = _hex(args.target, 20, "target")
            res = await asyncio.wait_for(dht.get(target), args.timeout)
            if res.value is None:
                raise CliError(f"no value stored under {args.target}")
            v = bencode.decode(res.value)
            print(v.decode("utf-8", "backslashreplace") if isinstance(v, bytes) else repr(v))
        elif args.dht_cmd == "find-node":
            res = await asyncio.wait_for(dht.find_node(_hex(args.target, 20, "target")), args.timeout)
            for nid, addr in res.nodes:
                print(f"{bytes(nid).hex()} {addr[0]}:{addr[1]}")
        elif args.dht_cmd == "ping":
            addr = parse_hostport(args.address, what="address")
            res = await asyncio.wait_for(dht.ping(addr), args.timeout)
            print(f"pong from {bytes(res.node_id).hex()} in {res.rtt * 1000:.1f} ms")
    finally:
        await dht.close()
    return 0


def _hex(text: str, n: int, what: str) -> bytes:
    try:
        b = bytes.fromhex(text)
    except ValueError:
        b = b""
    if len(b) != n:
        raise CliError(f"{what} must be {n} bytes in hex ({2 * n} hex digits)")
    return b


def cmd_dht(args: argparse.Namespace) -> int:
    _setup_logging("debug" if args.debug else "warning")
    return run(_dht(args))


# --------------------------------------------------------------------------- dark addresses
def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_dark(name: str) -> Any:
    from qudag_core.dark import (AddressChecksumError, AddressSyntaxError, AddressVersionError, DarkAddress,
                                 parse_name)

    try:
        address = parse_name(name)
    except AddressChecksumError:
        raise CliError(f"{name}: the checksum does not match (a typo?); check the 56 characters "
                       "before .dark") from None
    except AddressVersionError:
        raise CliError(f"{name}: an address version this qudag does not know; upgrade qudag") from None
    except AddressSyntaxError:
        raise CliError(f"{name!r} is not a dark address: expected 56 base32 characters (a-z, 2-7) "
                       "followed by .dark") from None
    if not isinstance(address, DarkAddress):
        raise CliError(f"{name} is an alias; the command line resolves only full addresses "
                       "(56 characters before .dark)")
    return address


def _resolve_failure(name: str, exc: BaseException) -> str:
    from qudag_core.dark import (InvalidDescriptorSignature, NotFound, ResolveExpired, Rollback, Unpublished,
                                 WrongIndex)

    if isinstance(exc, Unpublished):
        return f"{name} was unpublished by its owner"
    if isinstance(exc, NotFound):
        return (f"{name} not found: no storage node holds a descriptor for it; check the name, or have "
                "its owner publish it (qudag address publish)")
    if isinstance(exc, InvalidDescriptorSignature):
        return (f"{name}: every descriptor found failed its signature check (forged or damaged); "
                "try again later or through other --bootstrap nodes")
    if isinstance(exc, ResolveExpired):
        return f"{name}: only expired descriptors were found; its owner must republish it"
    if isinstance(exc, (Rollback, WrongIndex)):
        return (f"{name}: storage nodes served a stale or misplaced descriptor ({type(exc).__name__}); "
                "try again later or through other --bootstrap nodes")
    return f"{name}: cannot resolve: {exc}"


async def short_lived_dht(bootstrap: list, bind: str, timeout: float) -> Any:
    """A DHT node for one lookup: it joins through the first bootstrap node that answers a
    ping, without waiting for its own bootstrap lookup (that lookup only fills its table;
    the dark lookup that follows finds the nodes it needs by itself)."""
    from qudag_io.dht import DhtError, DhtNode

    dht = await start_read_only_dht(bind, bootstrap)
    try:
        for addr in bootstrap:
            try:
                await asyncio.wait_for(dht.ping(addr), timeout)
                return dht
            except (DhtError, asyncio.TimeoutError):
                continue
    except BaseException:
        await dht.close()
        raise
    await dht.close()
    raise CliError(f"no --bootstrap node answered within {timeout:g}s; check the address (see: qudag status)")


async def _resolve_name(name: str, args: argparse.Namespace) -> Any:
    """Resolve through a short-lived DHT node (as ``qudag dht`` does): ``DarkEndpoint``.
    With ``args.resolve_hops`` (``qudag resolve --hops N``) every descriptor query goes
    through an N-hop onion circuit ending at the storage node, from a short-lived
    client-only onion node on ``--directory``'s relays (``DarkClient(onion=...)``): no
    storage node sees this address, and a storage node that is no relay is not asked."""
    from qudag_core.dark import ResolveError, Resolver
    from qudag_io.dark import CertificateDirectory, DarkClient, DarkError

    address = _parse_dark(name)
    boot = [parse_hostport(b, what="--bootstrap") for b in args.bootstrap]
    if not boot:
        raise CliError("pass --bootstrap HOST:PORT (a running node's DHT/UDP address, see: qudag status)")
    path = args.dark_directory
    if not path:
        raise CliError("pass --dark-directory FILE (the [dark] directory file the nodes were started with)")
    if not os.path.exists(path):
        raise CliError(f"dark directory {path} does not exist; pass the file the nodes were started with")
    directory = CertificateDirectory(path)
    if not len(directory):
        raise CliError(f"dark directory {path} lists no valid node certificate; are the nodes running "
                       "with --dark-directory?")
    hops = getattr(args, "resolve_hops", 0) or 0
    relays = None
    if hops:
        from qudag_io.node import FileDirectory

        rpath = getattr(args, "directory", None)
        if hops < 2:
            raise CliError("--hops must be at least 2 (on one hop the storage node would see this address)")
        if not rpath or not os.path.exists(rpath):
            raise CliError("--hops needs --directory FILE (the relay directory file the nodes were started with)")
        relays = FileDirectory(rpath)
        if len(relays) < hops:
            raise CliError(f"{rpath} lists {len(relays)} relays; --hops {hops} needs at least {hops}")
    dht = await short_lived_dht(boot, args.bind, min(5.0, args.timeout))
    onion_node = None
    try:
        onion = None
        if relays is not None:
            from qudag_io.onion import OnionClient, OnionNode

            per_subnet = path_rule_for([r.address for r in relays.relay_infos()])
            onion_node = await OnionNode.start(Identity.generate(os.urandom), relays, relay=False, host=args.bind)
            onion = OnionClient(onion_node, per_subnet=per_subnet)
        client = DarkClient(dht, Identity.generate(os.urandom), directory, local_hosts=[args.bind],
                            onion=onion, hops=hops or 3,
                            resolver=Resolver(os.urandom, fetch_timeout=args.timeout, dummies=args.dummies,
                                              via_circuit=onion is not None))
    except BaseException:
        if onion_node is not None:
            await onion_node.close()
        await dht.close()
        raise
    try:
        try:
            ep = await asyncio.wait_for(client.resolve(address), args.timeout)
        except ResolveError as exc:
            raise CliError(_resolve_failure(name, exc)) from None
        except DarkError as exc:
            raise CliError(f"{name}: {exc}; check that --dark-directory lists running nodes") from None
        except asyncio.TimeoutError:
            raise CliError(f"{name}: no answer within {args.timeout:g}s; check --bootstrap and "
                           "--dark-directory, or raise --timeout") from None
    finally:
        await client.close()
        if onion_node is not None:
            await onion_node.close()
        await dht.close()
    if ep.certificate is None or not ep.certificate.addresses:
        raise CliError(f"{name} publishes only introduction relays; connecting through them is not "
                       "implemented")
    return ep


def cmd_resolve(args: argparse.Namespace) -> int:
    _setup_logging("debug" if args.debug else "warning")
    _parse_dark(args.name)
    ep = run(_resolve_name(args.name, args))
    cert = ep.certificate
    host, port = cert.addresses[0]
    if args.json:
        print(json.dumps({"name": str(ep.address), "node_id": cert.node_id.hex(),
                          "link": [list(a) for a in cert.addresses], "revision": ep.revision,
                          "expires_at": ep.expires_at, "long_term": ep.is_long_term}))
    else:
        via = f"; fetched through {args.resolve_hops}-hop onion circuits" if args.resolve_hops else ""
        print(f"{ep.address} -> node {cert.node_id.hex()} at {_hp(host, port)} "
              f"(descriptor revision {ep.revision}, valid until {_utc(ep.expires_at)}{via})")
    return 0


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


def _address_book(data_dir: str, *, create: bool) -> Any:
    from qudag_io.persist import AddressBook, PersistError

    path = os.path.join(data_dir, DB_FILE)
    try:
        return AddressBook.open(path, create=create)
    except PersistError as exc:
        raise CliError(str(exc)) from None


def new_address(book: Any, identity: Identity) -> str:
    """Add the node's next derived dark address to ``book``; returns its name."""
    from qudag_io.dark import KIND_DERIVED, AddressState, derived_service
    from qudag_io.persist import PersistError, PublishedAddress

    used = []
    for row in book.addresses():
        if row.kind == KIND_DERIVED:
            try:
                used.append(AddressState.from_blob(row.blob).index)
            except Exception:
                pass
    index = max(used, default=-1) + 1
    name = str(derived_service(identity, index).address)
    now = time.time()
    st = AddressState(index=index)
    try:
        book.save_address(PublishedAddress(address=name, kind=KIND_DERIVED, created=now, last_published=None,
                                           revision=0, blob=st.to_blob()))
    except PersistError as exc:
        raise CliError(str(exc)) from None
    return name


def request_publish(book: Any, name: str) -> float:
    """Mark ``name`` to be published (now, by the running node); returns the request stamp."""
    import dataclasses

    from qudag_io.dark import AddressState, DarkError
    from qudag_io.persist import PersistError

    stamp = time.time()

    def change(row: Any) -> Any:
        st = AddressState.from_blob(row.blob)
        return dataclasses.replace(row, blob=dataclasses.replace(
            st, publish=True, requested=max(stamp, st.done + 1e-6)).to_blob())

    try:
        row = book.update_address(name, change)
    except (PersistError, DarkError) as exc:
        raise CliError(f"{name}: {exc}") from None
    if row is None:
        raise CliError(f"{name} is not one of this node's addresses (see: qudag address list --data-dir "
                       f"{os.path.dirname(book.path) or '.'})")
    return AddressState.from_blob(row.blob).requested


def publish_outcome(book: Any, name: str, stamp: float) -> Optional[tuple]:
    """``(row, AddressState)`` once the node acted on the publish request ``stamp``, else None."""
    from qudag_io.dark import AddressState

    row = book.get_address(name)
    if row is None:
        raise CliError(f"{name} was deleted while waiting for it to be published")
    st = AddressState.from_blob(row.blob)
    return (row, st) if st.done >= stamp else None


def wait_published(book: Any, name: str, stamp: float, deadline: float, alive: Any = None) -> tuple:
    """Wait (bounded by ``deadline``) until the node acted on the publish request ``stamp``."""
    while True:
        got = publish_outcome(book, name, stamp)
        if got is not None:
            return got
        if alive is not None and not alive():
            raise CliError("the node stopped before publishing; the address is published when it starts again")
        if time.monotonic() >= deadline:
            raise CliError(f"the node did not publish {name} in time; it keeps trying (see: qudag address "
                           "list), check its log")
        time.sleep(0.05)


def _running_pid(data_dir: str) -> Optional[int]:
    try:
        with open(os.path.join(data_dir, READY_FILE)) as f:
            pid = int(json.load(f)["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return pid


def cmd_address(args: argparse.Namespace) -> int:
    _setup_logging("debug" if args.debug else "warning")
    if args.address_cmd == "new":
        data_dir = args.data_dir or os.path.dirname(os.path.abspath(args.keystore)) or "."
        identity = _load_identity(args.keystore, args)
        with _address_book(data_dir, create=True) as book:
            name = new_address(book, identity)
        print(name)
        return 0
    data_dir = args.data_dir
    if args.address_cmd == "publish":
        args.name = str(_parse_dark(args.name))  # the canonical (lower-case) form is the key
        with _address_book(data_dir, create=False) as book:
            stamp = request_publish(book, args.name)
            pid = _running_pid(data_dir)
            if pid is None:
                print(f"{args.name} will be published when the node starts (qudag node run, data dir {data_dir})")
                return 0

            def alive() -> bool:
                return _running_pid(data_dir) == pid

            row, st = wait_published(book, args.name, stamp, time.monotonic() + args.timeout, alive)
        if st.result.startswith("failed"):
            raise CliError(f"publishing {args.name} {st.result}")
        print(f"published {args.name} (revision {row.revision}): {st.result}")
        return 0
    # list
    from qudag_io.dark import AddressState, DarkError

    with _address_book(data_dir, create=False) as book:
        rows = book.addresses()
    out = []
    for row in rows:
        try:
            st = AddressState.from_blob(row.blob)
        except DarkError:
            st = None
        out.append({"address": row.address, "kind": row.kind, "created": row.created,
                    "last_published": row.last_published, "revision": row.revision,
                    "publish": bool(st and st.publish), "pending": bool(st and st.requested > st.done),
                    "result": st.result if st else "unreadable state"})
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    if not out:
        print(f"no dark addresses in {data_dir} (create one: qudag address new --keystore KEY)")
    for a in out:
        if a["last_published"] is not None:
            state = f"published {_utc(a['last_published'])}, revision {a['revision']}"
        else:
            state = "not published"
        if a["pending"]:
            state += "; publish pending (the node publishes it when it runs)"
        elif not a["publish"] and a["last_published"] is not None:
            state += "; not kept published"
        print(f"{a['address']}  {state}" + (f"  [{a['result']}]" if a["result"] else ""))
    return 0



# --------------------------------------------------------------------------- status
def _status_url(args: argparse.Namespace) -> str:
    if args.url:
        return args.url.rstrip("/") + ("" if args.url.rstrip("/").endswith("/status") else "/status")
    d = args.data_dir
    try:
        with open(os.path.join(d, READY_FILE)) as f:
            info = json.load(f)
    except FileNotFoundError:
        raise CliError(f"no running node found in {d} (no {READY_FILE}); pass --url http://HOST:PORT") from None
    host, port = info["http"]
    return f"http://{host}:{port}/status"


def fetch_status(url: str, timeout: float = 5.0) -> dict:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.loads(r.read())
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}; is the node running?") from None


def cmd_status(args: argparse.Namespace) -> int:
    st = fetch_status(_status_url(args), args.timeout)
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"node id        {st['node_id']}")
    print(f"uptime         {st['uptime_seconds']:.1f} s")
    for k, v in st.get("addresses", {}).items():
        print(f"{k + ' address':<15}{v}")
    print(f"routing table  {st['routing_table_size']} nodes")
    print(f"peers          {len(st['peers'])}")
    for p in st["peers"]:
        print(f"  {p['node_id'][:16]}... {p['direction']} {p['address']}")
    dk = st.get("dark")
    if dk is not None:
        print(f"dark           {dk.get('stored_descriptors', 0)} descriptors stored for others; "
              f"{'can publish' if dk.get('can_publish') else 'cannot publish (no --dark-directory)'}")
    c = st["circuits"]
    print(f"onion relay    {'yes' if c.get('relay') else 'no'}; circuits relayed {c.get('relayed_circuits', 0)}")
    return 0


# --------------------------------------------------------------------------- testnet
class _Testnet:
    """N ``qudag node run`` processes on loopback in a temporary directory, node ``i`` on
    :func:`testnet_host` ``(i)`` (all on 127.0.0.1 where the system cannot bind those)."""

    def __init__(self, n: int, timeout: float) -> None:
        self.n = n
        self.spread = can_bind([testnet_host(0), testnet_host(n - 1), testnet_client_host(0)])
        self.hosts = [testnet_host(i) if self.spread else "127.0.0.1" for i in range(n)]
        self._clients = 0
        self.t0 = time.monotonic()
        self.deadline = self.t0 + timeout
        self.tmp = tempfile.mkdtemp(prefix="qudag-testnet-")
        self.procs: list[subprocess.Popen] = []
        self.info: list[dict] = []
        self.timings: list[tuple[str, float, str]] = []
        self.directory_path = os.path.join(self.tmp, "relays.json")
        self.dark_path = os.path.join(self.tmp, "dark.json")

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.2f}s] {msg}", flush=True)

    def left(self) -> float:
        r = self.deadline - time.monotonic()
        if r <= 0:
            raise CliError("testnet ran out of time (--timeout); its logs are kept with --keep")
        return r

    def dir(self, i: int) -> str:
        return os.path.join(self.tmp, f"node{i:02d}")

    def client_host(self) -> str:
        """A fresh address for one of the testnet's own short-lived clients."""
        self._clients += 1
        return testnet_client_host(self._clients - 1) if self.spread else "127.0.0.1"

    def table_sizes(self) -> list[int]:
        """Every node's routing-table size, read from its ``/status`` document."""
        sizes = []
        for i in range(self.n):
            h, p = self.info[i]["http"]
            sizes.append(int(fetch_status(f"http://{_hp(h, p)}/status", min(5.0, self.left()))["routing_table_size"]))
        return sizes

    def tables_note(self, sizes: list[int]) -> str:
        """``routing tables min/median/max`` over the nodes, against what they could hold."""
        import statistics

        note = (f"routing tables min/median/max {min(sizes)}/{statistics.median(sizes):g}/{max(sizes)} "
                f"of {self.n - 1} other nodes")
        if not self.spread:
            note += " (every node on 127.0.0.1: the 10-per-/24 limit caps each table at 10)"
        return note

    def keygen(self) -> None:
        pw = secrets.token_hex(16).encode()
        self.pwfile = os.path.join(self.tmp, "passphrase")
        _write_private(self.pwfile, pw + b"\n")
        for i in range(self.n):
            os.makedirs(self.dir(i), mode=0o700)
            # Throwaway keys: a cheap scrypt cost keeps N keystores quick to open.
            write_keystore(os.path.join(self.dir(i), "key"), Identity.generate(os.urandom).secrets(), pw,
                           kdf_params=ScryptParams(1 << 10, 8, 1))

    def spawn(self, i: int, bootstrap: list[tuple[str, int]]) -> None:
        d = self.dir(i)
        h = self.hosts[i]
        s = NodeSettings(keystore=os.path.join(d, "key"), passphrase_file=self.pwfile, data_dir=d,
                         link_listen=(h, 0), dht_listen=(h, 0), onion_listen=(h, 0), http_listen=(h, 0),
                         bootstrap=bootstrap, bootstrap_timeout=10.0, relay=True,
                         onion_directory=self.directory_path, dark_directory=self.dark_path)
        cfg = os.path.join(d, "node.toml")
        with open(cfg, "w") as f:
            f.write(dump_toml(s))
        with open(os.path.join(d, "node.log"), "wb") as logf:
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "qudag_io.cli", "node", "run", "--config", cfg],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf))

    def wait_ready(self, indices: range) -> None:
        pending = set(indices)
        while pending:
            for i in sorted(pending):
                path = os.path.join(self.dir(i), READY_FILE)
                if os.path.exists(path):
                    with open(path) as f:
                        self.info[i] = json.load(f)
                    pending.discard(i)
                    self._check_bound(i)
                elif self.procs[i].poll() is not None:
                    raise CliError(f"node {i} exited with code {self.procs[i].returncode}; "
                                   f"see {self.dir(i)}/node.log (use --keep)")
            if pending:
                if self.deadline - time.monotonic() <= 0:
                    raise CliError(f"{len(pending)} nodes not ready before --timeout; see their node.log (use --keep)")
                time.sleep(0.05)

    def _check_bound(self, i: int) -> None:
        """Node ``i`` listens on its own address only (link, DHT, onion relay, HTTP)."""
        info = self.info[i]
        bound = {"link": info["link"][0][0], "dht": info["dht"][0], "onion": info["onion"][0],
                 "http": info["http"][0]}
        wrong = {k: v for k, v in bound.items() if v != self.hosts[i]}
        if wrong:
            raise CliError(f"node {i:02d} should listen on {self.hosts[i]} but its {', '.join(wrong)} "
                           f"listener is on {', '.join(sorted(set(wrong.values())))}")

    def step(self, name: str, t: float, note: str = "") -> None:
        dt = time.monotonic() - t
        self.timings.append((name, dt, note))
        self.say(f"{name}: {note or 'ok'} ({dt * 1000:.0f} ms)")

    def stop(self) -> list[Optional[int]]:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + 15.0
        codes: list[Optional[int]] = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(0.1, end - time.monotonic())))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                codes.append(None)
        return codes


async def _testnet_dark(net: _Testnet) -> str:
    """Node 00 publishes a new dark address (asked through its database, as ``qudag
    address publish`` does); a short-lived DHT node in this process, joined through the
    last node, resolves it by name; then a message goes to the name over a link.
    Returns the name (resolved again through circuits once the relay directory exists)."""
    from qudag_core.dark import Resolver
    from qudag_io.dark import CertificateDirectory, DarkClient, connect_dark
    from qudag_io.node import send_message

    with open(net.pwfile, "rb") as f:
        pw = f.readline().rstrip(b"\r\n")
    owner = Identity.from_secrets(read_keystore(os.path.join(net.dir(0), "key"), pw))
    t = time.monotonic()
    with _address_book(net.dir(0), create=False) as book:
        name = new_address(book, owner)
        stamp = request_publish(book, name)
        for _ in range(100_000):  # bounded by net.left() too
            got = publish_outcome(book, name, stamp)
            if got is not None:
                break
            net.left()
            await asyncio.sleep(0.05)
        _row, st = got  # type: ignore[misc]
    if st.result.startswith("failed"):
        raise CliError(f"dark publish {st.result}")
    net.step("dark publish", t, f"node 00: {name[:16]}....dark, {st.result}")
    t = time.monotonic()
    h, p = net.info[net.n - 1]["dht"]
    me = net.client_host()
    dht = await short_lived_dht([(h, p)], me, min(5.0, net.left()))
    client = DarkClient(dht, Identity.generate(os.urandom), CertificateDirectory(net.dark_path), local_hosts=[me],
                        resolver=Resolver(os.urandom, fetch_timeout=min(15.0, net.left())))
    try:
        ep = await asyncio.wait_for(client.resolve(name), net.left())
        if ep.certificate is None or ep.certificate.node_id.hex() != net.info[0]["node_id"]:
            raise CliError("the dark address did not resolve to node 00")
        if not ep.certificate.addresses or ep.certificate.addresses[0][0] != net.hosts[0]:
            raise CliError(f"the dark address resolved to {ep.certificate.addresses}, not node 00's {net.hosts[0]}")
        net.step("dark resolve", t, f"by name via node {net.n - 1:02d}: node 00 at "
                                    f"{_hp(*ep.certificate.addresses[0])}")
        t = time.monotonic()
        conn = await asyncio.wait_for(connect_dark(name, client), net.left())
        async with conn:
            await send_message(conn, b"hello by dark name", timeout=net.left())
        net.step("dark message", t, "acknowledged by node 00 (resolver cache hit, link to the name)")
    finally:
        await client.close()
        await dht.close()
    return name


async def _testnet_dark_circuits(net: _Testnet, name: str, onion: Any) -> None:
    """Resolve ``name`` again, every descriptor query through a 3-hop circuit ending at
    the storage node (``onion``: an ``OnionClient`` of a client-only node)."""
    from qudag_core.dark import Resolver
    from qudag_io.dark import CertificateDirectory, DarkClient

    t = time.monotonic()
    me = net.client_host()
    h, p = net.info[net.n - 1]["dht"]
    dht = await short_lived_dht([(h, p)], me, min(5.0, net.left()))
    client = DarkClient(dht, Identity.generate(os.urandom), CertificateDirectory(net.dark_path), local_hosts=[me],
                        onion=onion, hops=3,
                        resolver=Resolver(os.urandom, fetch_timeout=min(15.0, net.left()), via_circuit=True))
    try:
        ep = await asyncio.wait_for(client.resolve(name), net.left())
        if ep.certificate is None or ep.certificate.node_id.hex() != net.info[0]["node_id"]:
            raise CliError("the dark address did not resolve to node 00 through circuits")
        if client._links:
            raise CliError("a resolve through circuits opened a direct storage link")
        net.step("dark resolve through circuits", t, f"3-hop circuits ending at {len(client._circs)} storage "
                                                     f"nodes, no storage node saw this address: node 00 at "
                                                     f"{_hp(*ep.certificate.addresses[0])}")
    finally:
        await client.close()
        await dht.close()


async def _testnet_exercise(net: _Testnet) -> None:
    from qudag_core.krpc import bencode

    def udp(i: int) -> tuple[str, int]:
        h, p = net.info[i]["dht"]
        return h, p

    # DHT put through a short-lived (read-only) node joined via node 1, get via one joined
    # at the far end.
    value = bencode.encode(f"hello from the qudag testnet {secrets.token_hex(4)}".encode())
    t = time.monotonic()
    transient: list = []
    try:
        a = await start_read_only_dht(net.client_host(), [udp(1 % net.n)])
        transient.append(a)
        await asyncio.wait_for(asyncio.shield(a._bootstrapped), net.left())
        target = await asyncio.wait_for(a.put(value), net.left())
        net.step("DHT put", t, f"target {target.hex()[:16]}...")
        t = time.monotonic()
        b = await start_read_only_dht(net.client_host(), [udp(net.n - 1)])
        transient.append(b)
        await asyncio.wait_for(asyncio.shield(b._bootstrapped), net.left())
        got = (await asyncio.wait_for(b.get(target), net.left())).value
        if got != value:
            raise CliError("DHT get did not return the value put")
        net.step("DHT get", t, "value matches")
        await _testnet_links_and_circuits(net)
    finally:
        for d in transient:
            await d.close()


async def _testnet_links_and_circuits(net: _Testnet) -> None:
    from qudag_io.link import connect, source_address
    from qudag_io.node import send_message

    # A message over a direct authenticated link to the last node, from a client address.
    t = time.monotonic()
    last = net.info[net.n - 1]
    host, port = last["link"][0]
    conn = await asyncio.wait_for(connect(host, port, identity=Identity.generate(os.urandom),
                                          expected_peer_id=bytes.fromhex(last["node_id"]),
                                          local_addr=source_address(host, [net.client_host()])), net.left())
    async with conn:
        await send_message(conn, b"hello over a post-quantum link", timeout=net.left())
    net.step("link message", t, f"acknowledged by node {net.n - 1:02d}")

    name = await _testnet_dark(net)

    # A 3-hop circuit through the relays and a stream to the exit's "echo" service.  The
    # directory file lists every node's relay certificate; each relay re-reads it when it
    # needs a next hop it does not know.
    from qudag_io.node import FileDirectory, write_directory
    from qudag_io.onion import OnionClient, OnionNode

    if net.n < 3:
        net.say("3-hop circuit: skipped (needs at least 3 nodes)")
        return
    certs = []
    for i in range(net.n):
        with open(os.path.join(net.dir(i), ONION_CERT_FILE), "rb") as f:
            certs.append(NodeCertificate.from_bytes(f.read()))
    write_directory(net.directory_path, certs)
    # With every relay in its own /16 the production path rule (one relay per /16) holds;
    # only relays sharing 127.0.0.1 (or more than 254 nodes) need it switched off.
    per_subnet = path_rule_for([c.addresses[0][0] for c in certs])
    t = time.monotonic()
    client = await OnionNode.start(Identity.generate(os.urandom), FileDirectory(net.directory_path),
                                   host=net.client_host(), relay=False)
    try:
        circ = await OnionClient(client, per_subnet=per_subnet).build_circuit(hops=3, timeout=min(30.0, net.left()))
        hops = [certs.index(next(c for c in certs if bytes(c.node_id) == n)) for n in circ.node_ids]
        net.step("3-hop circuit", t, "through nodes " + " -> ".join(f"{h:02d}" for h in hops)
                 + ("; one relay per /16" if per_subnet else "; /16 rule off (relays share a /16)"))
        t = time.monotonic()
        payload = secrets.token_bytes(64 * 1024)
        stream = await circ.open_stream(circ.exit_node_id, "echo", timeout=min(30.0, net.left()))
        await stream.send(payload)
        back = await asyncio.wait_for(stream.readexactly(len(payload)), net.left())
        await stream.close()
        await circ.close()
        if back != payload:
            raise CliError("the echo through the circuit did not match")
        net.step("circuit stream", t, f"{len(payload) // 1024} KiB echoed by node {hops[-1]:02d}")
        await _testnet_dark_circuits(net, name, OnionClient(client, per_subnet=per_subnet))
    finally:
        await client.close()


def run_testnet(*, nodes: int, timeout: float, keep: bool, debug: bool) -> int:
    if not 2 <= nodes <= TESTNET_MAX_NODES:
        raise CliError(f"--nodes must be between 2 and {TESTNET_MAX_NODES}")
    net = _Testnet(nodes, timeout)
    old_term = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM: same clean stop as ^C
    ok = False
    try:
        net.say(f"testnet of {nodes} nodes, one process each, in {net.tmp}")
        if net.spread:
            net.say(f"each node on its own loopback /24: {net.hosts[0]} .. {net.hosts[-1]}")
        else:
            net.say("this system binds only 127.0.0.1 on loopback: every node shares one /24, so the DHT's "
                    "diversity limits (10 per /24 per table) keep routing tables small")
        t = time.monotonic()
        net.keygen()
        net.step("identities", t, f"{nodes} keystores")
        net.info = [{} for _ in range(nodes)]
        t = time.monotonic()
        net.spawn(0, [])
        net.wait_ready(range(0, 1))
        seed = tuple(net.info[0]["dht"])
        net.step("seed node", t, f"node 00 up, DHT at {seed[0]}:{seed[1]}")
        t = time.monotonic()
        for i in range(1, nodes):
            net.spawn(i, [seed])
        net.wait_ready(range(1, nodes))
        net.step("bootstrap", t, f"{nodes - 1} nodes joined through node 00; {net.tables_note(net.table_sizes())}")
        run(_testnet_exercise(net))
        t = time.monotonic()
        statuses = []
        for i in range(nodes):
            h, p = net.info[i]["http"]
            statuses.append(fetch_status(f"http://{_hp(h, p)}/status", min(5.0, net.left())))
        net.step("tables", t, net.tables_note([int(st["routing_table_size"]) for st in statuses]))
        if net.spread:
            # Nodes dial from their own address: every inbound link still open (node 00's
            # pooled dark storage links, at least) comes from a node or client address.
            t = time.monotonic()
            sources = [p["address"][0] for st in statuses for p in st["peers"] if p["direction"] == "inbound"]
            known = set(net.hosts) | {testnet_client_host(k) for k in range(net._clients)}
            stray = sorted(set(sources) - known)
            if stray:
                raise CliError(f"links arrived from {', '.join(stray)}, not from a node's or client's own address")
            net.step("link sources", t, f"{len(sources)} open inbound links, each from its node's own address")
        print()
        print(f"{'step':<14}{'ms':>9}  note")
        for name, dt, note in net.timings:
            print(f"{name:<14}{dt * 1000:>9.0f}  {note}")
        print()
        print(f"{'node':<5}{'node id':<18}{'dht':<22}{'table':>6}  metrics")
        for i, st in enumerate(statuses):
            h, p = net.info[i]["dht"]
            hh, hp = net.info[i]["http"]
            print(f"{i:02d}   {st['node_id'][:16]:<18}{h + ':' + str(p):<22}{st['routing_table_size']:>6}  "
                  f"http://{hh}:{hp}/metrics")
        ok = True
    except KeyboardInterrupt:
        net.say("interrupted; stopping the nodes")
    finally:
        # Stop and clean up before printing anything: stdout may be a closed pipe.
        codes = net.stop()
        signal.signal(signal.SIGTERM, old_term)
        kept = keep or (debug and not ok)
        if not kept:
            shutil.rmtree(net.tmp, ignore_errors=True)
        clean = sum(1 for c in codes if c == 0)
        net.say(f"stopped {len(codes)} nodes ({clean} exited cleanly"
                + (f", {len(codes) - clean} did not: see their node.log" if clean != len(codes) else "") + ")")
        if kept:
            net.say(f"kept {net.tmp}")
    if ok and all(c == 0 for c in codes):
        print("testnet: OK")
        return 0
    print("testnet: FAILED", file=sys.stderr)
    return 1


def cmd_testnet(args: argparse.Namespace) -> int:
    return run_testnet(nodes=args.nodes, timeout=args.timeout, keep=args.keep, debug=args.debug)


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qudag", description="qudag: a post-quantum peer-to-peer node.")
    ap.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = ap.add_subparsers(dest="cmd", required=True)

    def pw(p: argparse.ArgumentParser) -> None:
        p.add_argument("--passphrase-file", help="file whose first line is the passphrase (else $QUDAG_PASSPHRASE, else a prompt)")

    p = sub.add_parser("keygen", help="create an identity in an encrypted keystore")
    p.add_argument("--keystore", required=True, help="where to write it (mode 0600)")
    p.add_argument("--force", action="store_true", help="replace an existing keystore")
    p.add_argument("--scrypt-log2n", type=int, default=15, choices=range(10, 21), metavar="10..20",
                   help="scrypt cost log2(N) (default 15; lower only for throwaway test keys)")
    pw(p)
    p.set_defaults(func=cmd_keygen)

    node = sub.add_parser("node", help="run a node").add_subparsers(dest="node_cmd", required=True)
    p = node.add_parser("run", help="run a node until SIGINT/SIGTERM")
    p.add_argument("--config", help="TOML config file (flags override it)")
    p.add_argument("--keystore")
    pw(p)
    p.add_argument("--data-dir")
    p.add_argument("--listen-tcp", metavar="HOST:PORT", help="link listen address")
    p.add_argument("--listen-udp", metavar="HOST:PORT", help="DHT listen address")
    p.add_argument("--bootstrap", action="append", metavar="HOST:PORT", help="DHT node to join through (repeatable)")
    p.add_argument("--relay", action=argparse.BooleanOptionalAction, default=None, help="run an onion relay")
    p.add_argument("--onion-listen", metavar="HOST:PORT", help="onion relay listen address")
    p.add_argument("--onion-directory", metavar="FILE", help="relay directory file (JSON list of hex certificates)")
    p.add_argument("--dark-directory", metavar="FILE",
                   help="dark storage directory (JSON list of hex link certificates); the node adds its own")
    p.add_argument("--dark-circuit-hops", type=int, metavar="N",
                   help="reach dark storage nodes through N-hop onion circuits (N >= 2, needs --relay; 0: direct)")
    p.add_argument("--metrics", metavar="HOST:PORT", help="metrics/status HTTP address (default 127.0.0.1:0)")
    p.add_argument("--no-http", action="store_true", help="no metrics/status server")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_node_run)

    def dark_lookup(p: argparse.ArgumentParser) -> None:
        p.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                       help="a running node's DHT/UDP address (for NAME.dark)")
        p.add_argument("--dark-directory", metavar="FILE", help="the dark directory file the nodes use (for NAME.dark)")
        p.add_argument("--bind", default="127.0.0.1",
                       help="local address of the short-lived DHT node and of its links to storage nodes")
        p.add_argument("--dummies", type=int, default=0, choices=range(0, 9), metavar="0..8",
                       help="dummy lookups of random indices beside the real one (storage nodes cannot tell "
                            "which is real)")

    p = sub.add_parser("send", help="send messages to a node over an authenticated link")
    p.add_argument("--to", metavar="HOST:PORT|NAME.dark")
    dark_lookup(p)
    p.add_argument("--peer-id", help="the peer's node id (hex); the handshake fails unless it proves it")
    p.add_argument("--peer-cert", help="the peer's certificate file (node.cert in its data dir)")
    p.add_argument("--keystore", help="our identity (default: a fresh throwaway one)")
    pw(p)
    p.add_argument("--hops", type=int, default=0,
                   help="send over an onion circuit of N hops ending at --peer-id (or the node NAME.dark resolves to)")
    p.add_argument("--directory", help="relay directory file (JSON list of hex certificates) for --hops")
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("message", nargs="+", help="messages (one link message each); '-' reads one from stdin")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("listen", help="accept links and print the messages received")
    p.add_argument("--keystore", required=True)
    pw(p)
    p.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT")
    p.add_argument("--count", type=int, default=0, help="exit after this many messages (0: run until SIGINT)")
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("dht", help="DHT operations through a short-lived node")
    p.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT", help="a running node's UDP address")
    p.add_argument("--bind", default="127.0.0.1", help="local address of the short-lived node")
    p.add_argument("--timeout", type=float, default=10.0)
    dsub = p.add_subparsers(dest="dht_cmd", required=True)
    q = dsub.add_parser("put", help="store a string (BEP 44 immutable); prints the target")
    q.add_argument("value")
    q = dsub.add_parser("get", help="fetch the value stored under a target")
    q.add_argument("target")
    q = dsub.add_parser("find-node", help="the closest nodes to a target")
    q.add_argument("target")
    q = dsub.add_parser("ping", help="ping a DHT node")
    q.add_argument("address", metavar="HOST:PORT")
    p.set_defaults(func=cmd_dht)

    p = sub.add_parser("address", help="this node's dark addresses: new, publish, list")
    asub = p.add_subparsers(dest="address_cmd", required=True)
    q = asub.add_parser("new", help="derive the node's next dark address from its keystore; prints NAME.dark")
    q.add_argument("--keystore", required=True)
    pw(q)
    q.add_argument("--data-dir", help="the node's data dir (default: the keystore's directory)")
    q = asub.add_parser("publish", help="have the node publish NAME.dark (and keep it published)")
    q.add_argument("name", metavar="NAME.dark")
    q.add_argument("--data-dir", default=".", help="the node's data dir")
    q.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a running node to publish")
    q = asub.add_parser("list", help="the node's dark addresses and when they were published")
    q.add_argument("--data-dir", default=".", help="the node's data dir")
    q.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_address)

    p = sub.add_parser("resolve", help="look up NAME.dark; prints the node id and link address it resolves to")
    p.add_argument("name", metavar="NAME.dark")
    dark_lookup(p)
    p.add_argument("--timeout", type=float, default=15.0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--hops", dest="resolve_hops", type=int, default=0, metavar="N",
                   help="fetch the descriptors through onion circuits of N (>= 2) hops, each ending at a storage "
                        "node, so no storage node sees this address (needs --directory; storage nodes that are "
                        "not relays are not asked)")
    p.add_argument("--directory", help="relay directory file (JSON list of hex certificates) for --hops")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser("status", help="print a running node's status")
    p.add_argument("--url", help="the node's HTTP address, e.g. http://127.0.0.1:9100")
    p.add_argument("--data-dir", default=".", help="find the node through node.json in its data dir")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("testnet", help="run N nodes on loopback, one process each, and exercise them")
    p.add_argument("--nodes", type=int, default=20)
    p.add_argument("--timeout", type=float, default=120.0, help="overall bound in seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, configs)")
    p.set_defaults(func=cmd_testnet)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("qudag: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        msg = str(exc) if isinstance(exc, (CliError, ConfigError)) else _describe(exc)
        print(f"qudag: error: {msg}", file=sys.stderr)
        return 1


def _describe(exc: BaseException) -> str:
    from qudag_io.dht import DhtError
    from qudag_io.link import ConnectionClosed

    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timed out; is the peer running and reachable? (--debug for details)"
    if isinstance(exc, ConnectionClosed):
        return f"link failed: {exc.reason or 'closed'} (code {exc.error_code}); check the address and --peer-id"
    if isinstance(exc, DhtError):
        return f"DHT operation failed: {exc}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused; is the node running on that address?"
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc} (run with --debug for the traceback)"


if __name__ == "__main__":
    sys.exit(main())
