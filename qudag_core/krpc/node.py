"""Sans-IO KRPC/Kademlia node: BEP 5 (ping, find_node, get_peers, announce_peer), BEP 42
(node-id checks), BEP 43 (read-only nodes, both sides), BEP 44 (get/put of immutable and
mutable items) and qudag's ``qd_get``/``qd_put`` over authenticated links.

Driving API (STYLE.md §1, datagram cores)::

    node = KrpcNode(node_id, rng=os.urandom, now=t)
    node.receive_datagram(data, (host, port), now)
    for data, addr in node.datagrams_to_send(now): sock.sendto(data, addr)
    node.get_timer() -> float | None;  node.handle_timer(now)
    op = node.find_node(target, now)   # ... later an OperationDone(op_id=op) in pop_events()
    reply = node.receive_link_message(data, peer_addr, now)  # KRPC over a qudag link

It wires the building blocks as ``docs/dht.md`` describes: ``RoutingTable``, ``Lookup``
(alpha = 3), ``TokenManager``, ``RecordStore``, ``Reputation`` and ``RateLimiter``.

The design decision a reader would ask about: **only nodes that answered one of our
queries enter the routing table.**  A node that queries us is answered, and if it is not
in the table it is pinged (bounded: ``max_new_node_pings`` in flight); only its answer,
from the address it queried from and with the id it claimed, inserts it.  Replies are
trusted only when their transaction id is one we issued, they come from the address we
sent to, they do not claim our own id and carry the id we queried (when we knew it);
anything else is dropped without blaming anyone but the node we queried.  A querier that
says it is read-only (BEP 43 ``ro`` = 1) is answered but never pinged nor inserted; with
``NodeConfig.read_only`` we are that node ourselves.

Every incoming datagram ends in one of: a reply, a KRPC error reply (203 malformed,
204 unknown method, BEP 44 store errors), or a drop.  Nothing else escapes
``receive_datagram``.  All state is bounded: pending queries (``max_pending``), peers per
infohash and infohashes, the store's own limits, the rate limiter's tracked sources.
"""
from __future__ import annotations

import heapq
import ipaddress
import socket
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from qudag_core.errors import LocalProtocolError
from qudag_core.krpc import bep42
from qudag_core.krpc import messages as M
from qudag_core.krpc.errors import KrpcError, KrpcErrorCode
from qudag_core.krpc.lookup import Lookup, Verdict
from qudag_core.krpc.node_events import (BootstrapDone, FindNodeResult, GetPeersResult, GetResult,
                                         OperationDone, PingResult, PutResult)
from qudag_core.krpc.ratelimit import RateLimiter
from qudag_core.krpc.reputation import Reputation
from qudag_core.krpc.routing import RoutingConfig, RoutingTable
from qudag_core.krpc.store import RecordKind, RecordStore, StoreConfig, StoreError, select_record
from qudag_core.krpc.tokens import TokenManager

__all__ = ["NodeConfig", "KrpcNode", "CLIENT_VERSION"]

#: Our ``v`` field (BEP 5/BEP 20 style: two letters + two version bytes).
CLIENT_VERSION = b"QD\x00\x01"

_STAT_KEYS: dict = {}  # query METHOD -> its stats key

# Names the per-datagram path uses, bound once (a module attribute lookup each time
# adds up over a dozen per datagram).
_parse_datagram = M.parse_datagram
_encode = M.bencode.encode
_BUDGET = M.DATAGRAM_BUDGET
_Response, _Error, _UnknownQuery, _Query = M.Response, M.Error, M.UnknownQuery, M.Query
_Ping, _FindNode, _GetPeers = M.Ping, M.FindNode, M.GetPeers

# operation kinds
_K_PING = 0
_K_FIND = 1
_K_PEERS = 2
_K_ANNOUNCE = 3
_K_GET = 4
_K_PUT = 5
_K_INTERNAL_PING = 6  # routing-table maintenance / new-node pings / bootstrap pings


@dataclass(frozen=True, kw_only=True, slots=True)
class NodeConfig:
    k: int = 20
    """Bucket size and the number of nodes lookups converge on / writes go to.  20 as in
    QuDAG and the Kademlia paper; BEP 5's Mainline uses 8, and ``k=8`` gives exactly its
    behaviour (other clients never see our k: replies carry at most k nodes, within the
    1,400-byte datagram budget either way)."""
    alpha: int = 3
    """Lookup concurrency."""
    query_timeout: float = 2.0
    """Seconds before an unanswered query counts as failed."""
    routing: Optional[RoutingConfig] = None
    """Routing table config (``k`` defaults to the one above)."""
    store: StoreConfig = field(default_factory=StoreConfig)
    rate: float = 500.0
    """Datagrams per second accepted per source IP (IPv6: /64)."""
    burst: float = 1000.0
    max_pending: int = 4096
    """Queries of ours in flight at most; beyond that new ones are not sent (counted failed)."""
    max_new_node_pings: int = 32
    """Pings to not-yet-known queriers in flight at most."""
    max_infohashes: int = 2000
    max_peers_per_infohash: int = 100
    peer_ttl: float = 30 * 60.0
    max_values_per_reply: int = 50
    """Peers in one get_peers reply (keeps it within the 1,400-byte budget)."""
    client_version: bytes = CLIENT_VERSION
    enforce_bep42: bool = True
    """Keep nodes whose id does not match their public IP (BEP 42) out of the table."""
    max_outgoing: int = 65536
    """Datagrams queued for sending at most (oldest dropped)."""
    repin_interval: float = 300.0
    """A querier not in the table is pinged at most once per this many seconds."""
    maintenance_interval: float = 5.0
    """How often bucket refreshes, republishing and expiry are checked.  A fixed tick
    keeps ``get_timer`` O(1) instead of scanning the store on every datagram."""
    read_only: bool = False
    """BEP 43 read-only node: every query we send carries ``ro`` = 1 (other nodes then
    answer without adding us to their tables or pinging us) and incoming queries are
    dropped unanswered (``stats["dropped_read_only"]``).  For short-lived and
    unreachable nodes: they can bootstrap, look up, get and put, but serve nothing."""


_NO_IP = object()
_IP_MEMO: dict = {}  # host string -> packed address or None: a pure function's cache


def _compact_ip(host: str) -> Optional[bytes]:
    # Every datagram needs its sender's packed address twice (the address check and the
    # BEP 42 ``ip`` field of the reply); peers repeat, so memoise (bounded).
    ip = _IP_MEMO.get(host, _NO_IP)
    if ip is _NO_IP:
        try:
            ip = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except (OSError, ValueError, TypeError):
            ip = None
        if type(host) is str:
            if len(_IP_MEMO) >= 4096:
                _IP_MEMO.clear()
            _IP_MEMO[host] = ip
    return ip


def _host(ip: bytes) -> str:
    if len(ip) == 4:
        return socket.inet_ntoa(ip)
    return str(ipaddress.IPv6Address(ip))


def _norm_addr(addr: Any) -> Optional[tuple]:
    try:
        host, port = addr[0], addr[1]
    except (TypeError, IndexError, KeyError):
        return None
    if not isinstance(host, str) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    if _compact_ip(host) is None:  # hosts are IP literals (tokens and the table need one)
        return None
    if type(addr) is tuple and len(addr) == 2 and type(port) is int:
        return addr  # already (host, port): no new tuple per datagram
    return (host, int(port))


class _Op:
    __slots__ = ("op_id", "kind", "target", "lookup", "phase", "pending", "stored", "failed",
                 "peers", "peer_set", "salt", "seq", "put", "port", "implied_port", "internal",
                 "addr", "sent_at", "on_done", "quorum", "query", "qtemplate")

    def __init__(self, op_id: int, kind: int, target: bytes = b"") -> None:
        self.op_id = op_id
        self.kind = kind
        self.target = target
        self.lookup: Optional[Lookup] = None
        self.phase = 0  # 0 lookup, 1 writes, 2 done
        self.pending = 0
        self.stored = 0
        self.failed = 0
        self.peers: list = []
        self.peer_set: set = set()
        self.salt = b""
        self.seq: Optional[int] = None
        self.put: Optional[M.Put] = None
        self.port = 0
        self.implied_port: Optional[int] = None
        self.internal = False
        self.addr: Optional[tuple] = None
        self.sent_at = 0.0
        self.on_done: Optional[Callable] = None
        self.quorum = 1
        self.query: Optional[M.Query] = None  # the lookup's query, built once
        self.qtemplate: Optional[tuple] = None  # ... encoded around its transaction id


class _Pending:
    __slots__ = ("tid", "op", "node_id", "addr", "sent_at", "deadline", "method")

    def __init__(self, tid: bytes, op: Optional[_Op], node_id: Optional[bytes], addr: tuple,
                 sent_at: float, deadline: float, method: bytes) -> None:
        self.tid = tid
        self.op = op
        self.node_id = node_id
        self.addr = addr
        self.sent_at = sent_at
        self.deadline = deadline
        self.method = method


class KrpcNode:
    """One DHT node.  ``rng(n) -> bytes`` supplies transaction ids, tokens and random
    lookup targets; ``now`` is the creation time on the caller's monotonic clock."""

    def __init__(self, node_id: bytes, *, rng: Callable[[int], bytes], now: float,
                 config: Optional[NodeConfig] = None, bootstrap: tuple = ()) -> None:
        if not isinstance(node_id, bytes) or len(node_id) != 20:
            raise ValueError("node_id must be 20 bytes")
        self.node_id = node_id
        self.config = cfg = config if config is not None else NodeConfig()
        self._rng = rng
        rcfg = cfg.routing if cfg.routing is not None else RoutingConfig(k=cfg.k)
        self.table = RoutingTable(node_id, config=rcfg, now=now)
        self.tokens = TokenManager(rng, now)
        self.store = RecordStore(cfg.store)
        self.reputation = Reputation()
        self.ratelimit = RateLimiter(cfg.rate, cfg.burst)
        self._peers: OrderedDict[bytes, OrderedDict] = OrderedDict()
        self._pending: dict[bytes, _Pending] = {}
        self._heap: list = []
        self._ops: dict[int, _Op] = {}
        self._next_op = 1
        self._out: list = []
        self._events: list = []
        self._id_ok_memo: dict = {}
        self._tid_pool = b""
        self._tid_at = 0
        self._new_pings: set = set()  # addrs of not-yet-known queriers being pinged
        self._pinged: OrderedDict = OrderedDict()  # addr -> when we last pinged it as a newcomer (bounded)
        self._bootstrap_addrs = [a for a in (_norm_addr(b) for b in bootstrap) if a is not None]
        self._bootstrap_ops: set = set()
        self._bootstrapping = False
        self._maintenance_at = now + self.config.maintenance_interval
        self._now = now  # time of the latest call into the core (bootstrap lookups start then)
        self._read_only = bool(cfg.read_only)
        self.stats = {"received": 0, "dropped": 0, "errors_sent": 0, "queries_answered": 0,
                      "sent": 0, "timeouts": 0, "dropped_read_only": 0, "read_only_queriers": 0}

    # ---- driving API ---------------------------------------------------------------
    def receive_datagram(self, data: bytes, addr: tuple, now: float) -> None:
        """Process one UDP datagram from ``addr``; replies go to ``datagrams_to_send``."""
        self.stats["received"] += 1
        self._now = now
        a = _norm_addr(addr)
        if a is None or not self.ratelimit.allow(a[0], now):
            self.stats["dropped"] += 1
            return
        reply = self._receive(bytes(data), a, now, True)
        if reply is not None:
            self._send(reply, a)

    def receive_link_message(self, data: bytes, peer: tuple, now: float) -> Optional[bytes]:
        """Handle one KRPC message that arrived over an authenticated qudag link from
        ``peer`` (its address, used for write tokens).  Same handler as UDP, but no
        1,400-byte budget and ``qd_get``/``qd_put`` allowed.  Returns the reply to send
        back over the same link, or None."""
        a = _norm_addr(peer)
        if a is None:
            return None
        self._now = now
        return self._receive(bytes(data), a, now, False)

    def datagrams_to_send(self, now: float) -> list:
        """``[(bytes, (host, port))]`` queued since the last call."""
        out, self._out = self._out, []
        self.stats["sent"] += len(out)
        return out

    def pop_events(self) -> list:
        """Events (``OperationDone``, ``BootstrapDone``) produced since the last call."""
        ev, self._events = self._events, []
        return ev

    def get_timer(self) -> Optional[float]:
        t = None
        heap = self._heap
        while heap and heap[0][1] not in self._pending:
            heapq.heappop(heap)
        t = self._maintenance_at
        if heap and heap[0][0] < t:
            t = heap[0][0]
        return t

    def handle_timer(self, now: float) -> None:
        self._now = now
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, tid = heapq.heappop(heap)
            p = self._pending.pop(tid, None)
            if p is not None:
                self.stats["timeouts"] += 1
                self._on_failure(p, now, timeout=True)
        if now >= self._maintenance_at:
            self._maintenance_at = now + self.config.maintenance_interval
            self._maintain(now)

    def _maintain(self, now: float) -> None:
        for target in self.table.due_refreshes(now, self._rng):
            op = self._new_op(_K_FIND, target)
            op.internal = True
            self._start_lookup(op, now)
        self.store.expire(now)
        for rec in self.store.due_republish(now, limit=16):
            self.store.mark_republished(rec.target, now)
            self._republish(rec, now)
        self.ratelimit.prune(now)
        if self._peers:
            self._expire_peers(now)

    # ---- application operations ----------------------------------------------------
    def bootstrap(self, now: float, addrs: tuple = ()) -> None:
        """Ping the configured bootstrap nodes (and ``addrs``); once they answered or
        timed out, look up our own id and a random id to fill the table, then emit
        ``BootstrapDone``."""
        self._now = now
        for a in list(self._bootstrap_addrs) + [x for x in (_norm_addr(b) for b in addrs) if x]:
            op = self._new_op(_K_INTERNAL_PING)
            op.internal = True
            op.addr = a
            self._bootstrap_ops.add(op.op_id)
            self._send_query(op, None, a, M.Ping(transaction_id=b"-", node_id=self.node_id), now)
        self._bootstrapping = True
        if not self._bootstrap_ops:
            self._bootstrap_lookups(now)

    def ping(self, addr: tuple, now: float) -> int:
        op = self._new_op(_K_PING)
        a = _norm_addr(addr)
        if a is None:
            self._finish(op, False, error="bad address")
            return op.op_id
        op.addr = a
        op.sent_at = now
        self._send_query(op, None, a, M.Ping(transaction_id=b"-", node_id=self.node_id), now)
        return op.op_id

    def find_node(self, target: bytes, now: float) -> int:
        op = self._new_op(_K_FIND, self._check_id(target))
        self._start_lookup(op, now)
        return op.op_id

    def get_peers(self, info_hash: bytes, now: float) -> int:
        op = self._new_op(_K_PEERS, self._check_id(info_hash))
        self._start_lookup(op, now)
        return op.op_id

    def announce(self, info_hash: bytes, port: int, now: float, *, implied_port: bool = False) -> int:
        """get_peers lookup, then announce_peer to the k closest with their tokens."""
        op = self._new_op(_K_ANNOUNCE, self._check_id(info_hash))
        if not 0 <= port < 65536 or (port == 0 and not implied_port):
            raise LocalProtocolError("bad port")
        op.port = port
        op.implied_port = 1 if implied_port else None
        self._start_lookup(op, now)
        return op.op_id

    def get(self, target: bytes, now: float, *, salt: bytes = b"", seq: Optional[int] = None,
            quorum: int = 1) -> int:
        """BEP 44 get: immutable (target = SHA-1(v)) or mutable (``salt`` needed to verify).
        ``quorum``: how many nodes must have returned the selected item; below that the
        result has ``value`` None (and ``agreement`` says how many did).  With quorum 1 an
        immutable item ends the lookup at the first node that returns it (it verifies by
        its hash); mutable items always run the whole lookup for the highest seq."""
        if quorum < 1:
            raise LocalProtocolError("quorum must be >= 1")
        op = self._new_op(_K_GET, self._check_id(target))
        op.quorum = quorum
        op.salt = bytes(salt)
        op.seq = seq
        self._start_lookup(op, now)
        return op.op_id

    def put_immutable(self, value: bytes, now: float) -> tuple:
        """Store a bencoded value; returns ``(op_id, target)``."""
        value = bytes(value)
        M.bencode.decode(value, M.BEP44_VALUE_MAX)  # must be one canonical bencoded value
        target = M.immutable_target(value)
        put = M.Put(transaction_id=b"-", node_id=self.node_id, token=b"x", value=value)
        put.encode()
        try:
            self.store.put_immutable(target, value, now, local=True)
        except StoreError:
            pass
        return self._start_put(put, target, now), target

    def put_mutable(self, value: bytes, *, key: bytes, signature: bytes, seq: int, now: float,
                    salt: bytes = b"", cas: Optional[int] = None) -> tuple:
        """Store a signed BEP 44 mutable item (see ``messages.sign_mutable``);
        returns ``(op_id, target)``."""
        put = M.Put(transaction_id=b"-", node_id=self.node_id, token=b"x", value=bytes(value),
                    key=bytes(key), signature=bytes(signature), seq=seq, salt=bytes(salt) or None, cas=cas)
        put.encode()
        put.verify()
        target = put.target()
        try:
            self.store.put_mutable(target, put.value, seq, now, pubkey=put.key, salt=bytes(salt),
                                   signature=put.signature, local=True)
        except StoreError:
            pass
        return self._start_put(put, target, now), target

    def cancel(self, op_id: int) -> None:
        """Forget an operation (its replies will be dropped); no event is emitted."""
        op = self._ops.pop(op_id, None)
        if op is not None:
            op.phase = 2

    # ---- receive path ----------------------------------------------------------------
    def _receive(self, data: bytes, addr: tuple, now: float, datagram: bool) -> Optional[bytes]:
        try:
            msg, raw4, raw6 = _parse_datagram(data)
        except KrpcError as exc:
            tid = exc.transaction_id
            if tid is None:
                self.stats["dropped"] += 1
                return None
            p = self._pending.get(tid)
            if p is not None and p.addr == addr:
                # a malformed answer to our query: the queried node failed
                del self._pending[tid]
                self._on_failure(p, now, timeout=False)
                return None
            if self._read_only:  # BEP 43: we answer nothing, malformed queries included
                self.stats["dropped"] += 1
                self.stats["dropped_read_only"] += 1
                return None
            return self._error(tid, exc.error_code, str(exc))
        if isinstance(msg, _Response):
            self._on_response(msg, addr, now, raw4, raw6)
            return None
        if isinstance(msg, _Error):
            p = self._pending.get(msg.transaction_id)
            if p is not None and p.addr == addr:
                del self._pending[msg.transaction_id]
                self._on_failure(p, now, timeout=False, remote_error=True)
            else:
                self.stats["dropped"] += 1
            return None
        if self._read_only:
            # BEP 43 "Read-Only State": a read-only node "no longer responds to 'query'
            # messages"; responses and errors were handled above.
            self.stats["dropped"] += 1
            self.stats["dropped_read_only"] += 1
            return None
        if isinstance(msg, _UnknownQuery):
            return self._error(msg.transaction_id, KrpcErrorCode.METHOD_UNKNOWN, "method unknown")
        assert isinstance(msg, _Query)
        key = _STAT_KEYS.get(msg.METHOD)
        if key is None:  # one per query class: a fixed, small set of keys
            key = _STAT_KEYS[msg.METHOD] = "q:" + msg.METHOD.decode()
        self.stats[key] = self.stats.get(key, 0) + 1
        if msg.node_id == self.node_id:
            self.stats["dropped"] += 1
            return None
        if msg.channel_only() and datagram:
            return self._error(msg.transaction_id, KrpcErrorCode.PROTOCOL, "channel-only method")
        try:
            resp = self._answer(msg, addr, now)
        except KrpcError as exc:
            return self._error(msg.transaction_id, exc.error_code, str(exc))
        except StoreError as exc:
            return self._error(msg.transaction_id, exc.error_code or KrpcErrorCode.GENERIC, str(exc))
        if msg.read_only:
            # BEP 43: answer a read-only querier "as usual" but do not add it to the
            # routing table; so no newcomer ping either (it would not answer).
            self.stats["read_only_queriers"] += 1
        else:
            self._note_querier(msg.node_id, addr, now)
        self.stats["queries_answered"] += 1
        data = _encode(resp)
        if datagram and len(data) > _BUDGET:
            # Over budget (a large BEP 44 item plus nodes): drop the node list.
            resp[b"r"].pop(b"nodes", None)
            resp[b"r"].pop(b"nodes6", None)
            data = _encode(resp)
            if len(data) > _BUDGET:
                self.stats["dropped"] += 1
                return None
        return data

    def _error(self, tid: bytes, code: Optional[int], text: str) -> Optional[bytes]:
        self.stats["errors_sent"] += 1
        try:
            return M.Error(transaction_id=tid, client_version=self.config.client_version,
                           code=int(code or KrpcErrorCode.GENERIC),
                           message=text.encode("utf-8", "replace")[:200]).encode()
        except LocalProtocolError:
            return None

    def _nodes_for(self, r: dict, target: bytes, addr: tuple) -> None:
        """Add ``nodes`` (and ``nodes6`` for IPv6 requesters, BEP 32) to reply dict ``r``."""
        nodes, nodes6 = self.table.compact_closest(target, self.config.k)
        if ":" in addr[0]:
            r[b"nodes6"] = nodes6
            if nodes:
                r[b"nodes"] = nodes
        else:
            r[b"nodes"] = nodes

    def _answer(self, q: M.Query, addr: tuple, now: float) -> dict:
        """The reply to ``q`` as a bencode-ready dict.  Built directly rather than through
        ``messages.Response`` (a frozen 14-field dataclass, then ``_to_dict``): that was
        half the cost of answering a ping.  Every field comes from checked sources: the
        table, the store, the token manager."""
        r: dict = {b"id": self.node_id}
        top = {b"t": q.transaction_id, b"v": self.config.client_version, b"y": b"r", b"r": r}
        ip = _compact_ip(addr[0])
        if ip is not None:
            top[b"ip"] = ip + addr[1].to_bytes(2, "big")  # BEP 42: how we see the requester
        if isinstance(q, _Ping):
            return top
        if isinstance(q, _FindNode):
            self._nodes_for(r, q.target, addr)
            return top
        if isinstance(q, _GetPeers):
            peers = self._peers.get(q.info_hash)
            if peers:
                r[b"values"] = [p.compact() for p in list(peers)[-self.config.max_values_per_reply:]]
            r[b"token"] = self.tokens.token_for(addr[0], now)
            self._nodes_for(r, q.info_hash, addr)
            return top
        if isinstance(q, M.AnnouncePeer):
            self._check_token(addr, q.token, now, q.transaction_id)
            port = addr[1] if q.implied_port == 1 else q.port
            if ip is None or not 0 < port < 65536:
                raise KrpcError("bad peer address", error_code=KrpcErrorCode.PROTOCOL)
            self._add_peer(q.info_hash, M.PeerAddr(ip=ip, port=port), now)
            return top
        if isinstance(q, M.Get):
            rec = self.store.get(q.target, now)
            if rec is not None and rec.kind is not RecordKind.SIGNED:
                if rec.kind is RecordKind.MUTABLE:
                    r[b"seq"] = rec.seq
                    if q.seq is None or rec.seq > q.seq:
                        r[b"v"] = M.bencode.decode(rec.value)
                        r[b"k"] = rec.pubkey
                        r[b"sig"] = rec.signature
                else:
                    r[b"v"] = M.bencode.decode(rec.value)
            r[b"token"] = self.tokens.token_for(addr[0], now)
            self._nodes_for(r, q.target, addr)
            return top
        if isinstance(q, M.Put):
            self._check_token(addr, q.token, now, q.transaction_id)
            target = q.target()
            if q.is_mutable:
                q.verify()
                self.store.put_mutable(target, q.value, q.seq, now, pubkey=q.key, salt=q.salt or b"",
                                       signature=q.signature, cas=q.cas, source_ip=addr[0])
            else:
                self.store.put_immutable(target, q.value, now, source_ip=addr[0])
            return top
        if isinstance(q, M.QdGet):
            rec = self.store.get(q.target, now)
            if rec is not None and rec.kind is RecordKind.SIGNED and len(rec.value) >= 2:
                rt = int.from_bytes(rec.value[:2], "big")
                if rt == q.record_type and (q.revision is None or rec.seq > q.revision):
                    r[b"rec"] = {b"k": rec.pubkey, b"rev": rec.seq, b"rt": rt, b"sig": rec.signature,
                                 b"v": rec.value[2:]}
            r[b"token"] = self.tokens.token_for(addr[0], now)
            self._nodes_for(r, q.target, addr)
            return top
        if isinstance(q, M.QdPut):
            self._check_token(addr, q.token, now, q.transaction_id)
            q.verify()
            rec2 = q.record
            # the record type rides in front of the value (the store keeps bytes opaquely)
            self.store.put_signed(q.target(), rec2.record_type.to_bytes(2, "big") + rec2.value, rec2.revision,
                                  now, pubkey=rec2.public_key, signature=rec2.signature, source_ip=addr[0])
            return top
        raise KrpcError("method unknown", error_code=KrpcErrorCode.METHOD_UNKNOWN)

    def _check_token(self, addr: tuple, token: bytes, now: float, tid: bytes) -> None:
        if not self.tokens.check(addr[0], token, now):
            raise KrpcError("bad token", error_code=KrpcErrorCode.PROTOCOL, transaction_id=tid)

    def _add_peer(self, info_hash: bytes, peer: M.PeerAddr, now: float) -> None:
        d = self._peers.get(info_hash)
        if d is None:
            while len(self._peers) >= self.config.max_infohashes:
                self._peers.popitem(last=False)
            d = self._peers[info_hash] = OrderedDict()
        else:
            self._peers.move_to_end(info_hash)
        d.pop(peer, None)
        d[peer] = now
        while len(d) > self.config.max_peers_per_infohash:
            d.popitem(last=False)

    def _expire_peers(self, now: float) -> None:
        cutoff = now - self.config.peer_ttl
        for ih in list(self._peers):
            d = self._peers[ih]
            while d and next(iter(d.values())) < cutoff:
                d.popitem(last=False)
            if not d:
                del self._peers[ih]

    def _id_ok(self, node_id: bytes, host: str) -> bool:
        if not self.config.enforce_bep42:
            return True
        # Memoised per (id, host): the check parses the host with ``ipaddress`` (pure
        # Python, ~6 us compiled), and every response of a lookup runs it.  Bounded.
        key = (node_id, host)
        ok = self._id_ok_memo.get(key)
        if ok is None:
            try:
                ok = bep42.is_exempt(host) or bep42.is_valid_node_id(node_id, host)
            except (ValueError, TypeError):
                ok = False
            if len(self._id_ok_memo) >= 4096:
                self._id_ok_memo.clear()
            self._id_ok_memo[key] = ok
        return ok

    def _note_querier(self, node_id: bytes, addr: tuple, now: float) -> None:
        n = self.table.get(node_id)
        if n is not None:
            if n.addr == addr:
                self.table.add_or_update(node_id, addr, now, queried_us=True)
            return
        # Unknown querier: ping it; only its answer puts it in the table.  Each address
        # at most once per ``repin_interval`` (a full bucket would otherwise make us ping
        # every querier that does not fit, on every query).
        if (addr in self._new_pings or len(self._new_pings) >= self.config.max_new_node_pings
                or not self._id_ok(node_id, addr[0])):
            return
        last = self._pinged.get(addr)
        if last is not None and now - last < self.config.repin_interval:
            return
        if len(self._pinged) >= 4096:
            self._pinged.popitem(last=False)
        self._pinged[addr] = now
        self._pinged.move_to_end(addr)
        self._new_pings.add(addr)
        op = self._new_op(_K_INTERNAL_PING)
        op.internal = True
        op.addr = addr
        self._send_query(op, node_id, addr, M.Ping(transaction_id=b"-", node_id=self.node_id), now)

    def _on_response(self, r: M.Response, addr: tuple, now: float, raw4: Optional[bytes],
                     raw6: Optional[bytes]) -> None:
        """``r`` with its node lists left as their checked compact bytes ``raw4`` /
        ``raw6`` (``messages.parse_datagram``)."""
        p = self._pending.get(r.transaction_id)
        if p is None or p.addr != addr:
            self.stats["dropped"] += 1  # unknown tid, or another address: dropped, not trusted
            return
        del self._pending[r.transaction_id]
        if r.node_id == self.node_id or (p.node_id is not None and r.node_id != p.node_id):
            self._on_failure(p, now, timeout=False)
            return
        latency = now - p.sent_at
        op = p.op
        if op is None or op.phase == 2:
            self._accept(r.node_id, addr, now, latency)
            return
        lk = op.lookup
        if lk is not None and op.phase == 0:
            # Only nodes the lookup has not seen yet are converted to (id, (host, port)):
            # in a populated network most of a reply is already in the shortlist.  The
            # cap is the lookup's own, applied to the reply as sent.
            nodes = []
            room = lk.max_nodes_per_response
            for step in (26, 38):
                raw = raw4 if step == 26 else raw6
                if raw:
                    end = len(raw)
                    i = 0
                    while i < end and room > 0:
                        room -= 1
                        nid = raw[i:i + 20]
                        if not lk.knows(nid):
                            nodes.append((nid, (_host(raw[i + 20:i + step - 2]),
                                                (raw[i + step - 2] << 8) | raw[i + step - 1])))
                        i += step
            values = None
            if op.kind in (_K_PEERS, _K_ANNOUNCE) and r.values:
                values = [(_host(v.ip), v.port) for v in r.values]
            elif op.kind == _K_GET and r.value is not None:
                values = [(r.value, r.key, r.seq, r.signature)]
            v = lk.on_response(r.node_id, addr, nodes, now, values, token=r.token)
            if v is Verdict.ACCEPTED:
                self._accept(r.node_id, addr, now, latency)
                if (values is not None and op.kind == _K_GET and r.key is None and op.quorum <= 1
                        and M.immutable_target(r.value) == op.target):
                    # BEP 44: an immutable item is verified by its hash alone and there is
                    # only one, so the first one ends the lookup (libtorrent does the
                    # same); quorum > 1 and mutable items keep going for agreement/seq.
                    self._finish(op, True, GetResult(target=op.target, value=r.value, agreement=1,
                                                     responses=1))
                    return
            elif v in (Verdict.WRONG_ID, Verdict.OWN_ID):
                self._blame(p.node_id, now)
            self._pump(op, now)
            return
        # single-query operations: pings and the write phase
        self._accept(r.node_id, addr, now, latency)
        if op.kind == _K_PING:
            self._finish(op, True, PingResult(node_id=r.node_id, rtt=latency))
        elif op.kind == _K_INTERNAL_PING:
            self._new_pings.discard(addr)
            self._finish(op, True)
        else:
            op.pending -= 1
            op.stored += 1
            self._maybe_finish_writes(op)

    def _accept(self, node_id: bytes, addr: tuple, now: float, latency: float) -> None:
        self.reputation.record_success(node_id, now, latency)
        if not self._id_ok(node_id, addr[0]):
            return
        res = self.table.add_or_update(node_id, addr, now, responded=True)
        for pid, paddr in res.pings:
            op = self._new_op(_K_INTERNAL_PING)
            op.internal = True
            op.addr = paddr
            self._send_query(op, pid, paddr, M.Ping(transaction_id=b"-", node_id=self.node_id), now)

    def _blame(self, node_id: Optional[bytes], now: float) -> None:
        if node_id is not None:
            self.reputation.record_failure(node_id, now)
            self.table.mark_failed(node_id, now)

    def _on_failure(self, p: _Pending, now: float, *, timeout: bool, remote_error: bool = False) -> None:
        op = p.op
        if p.node_id is not None and not remote_error:
            self._blame(p.node_id, now)
        if op is None or op.phase == 2:
            return
        if op.lookup is not None and op.phase == 0:
            if p.node_id is not None:
                op.lookup.on_timeout(p.node_id, now)
            self._pump(op, now)
            return
        if op.kind == _K_PING:
            self._finish(op, False, error="timeout" if timeout else "error reply")
        elif op.kind == _K_INTERNAL_PING:
            self._new_pings.discard(p.addr)
            self._finish(op, False)
        else:
            op.pending -= 1
            op.failed += 1
            self._maybe_finish_writes(op)

    # ---- originating -----------------------------------------------------------------
    def _new_op(self, kind: int, target: bytes = b"") -> _Op:
        op = _Op(self._next_op, kind, target)
        self._next_op += 1
        self._ops[op.op_id] = op
        return op

    @staticmethod
    def _check_id(x: bytes) -> bytes:
        if not isinstance(x, (bytes, bytearray)) or len(x) != 20:
            raise LocalProtocolError("target must be 20 bytes")
        return bytes(x)

    def _new_tid(self) -> bytes:
        # Drawn from a pool of rng output: one getrandom() per 64 queries instead of one
        # per query (a syscall on every send of a lookup).
        for _ in range(8):
            i = self._tid_at
            if i + 4 > len(self._tid_pool):
                self._tid_pool = self._rng(256)
                i = 0
            tid = self._tid_pool[i:i + 4]
            self._tid_at = i + 4
            if tid not in self._pending:
                return tid
        raise LocalProtocolError("cannot allocate a transaction id")

    def _query_template(self, q: M.Query) -> Optional[tuple]:
        """``(prefix, suffix)`` such that ``prefix + tid + suffix`` is ``q`` (with our
        version) encoded with the 4-byte transaction id ``tid``, or None if ``q`` cannot
        go in a datagram.  A lookup sends the same query to every node it asks; only the
        id differs, so it is encoded once.  The id's place is found by encoding twice
        with different placeholders, not by assuming a key order."""
        try:
            d = q._to_dict()
            d[b"v"] = self.config.client_version
            if self._read_only:
                d[b"ro"] = 1  # BEP 43
            d[b"t"] = b"\x00\x00\x00\x00"
            a = M.bencode.encode(d)
            d[b"t"] = b"\xff\xff\xff\xff"
            b = M.bencode.encode(d)
        except (LocalProtocolError, KrpcError):
            return None
        if len(a) > M.DATAGRAM_BUDGET or q.channel_only() or len(a) != len(b):
            return None
        i = 0
        while a[i] == b[i]:
            i += 1
        if a[i:i + 4] != b"\x00\x00\x00\x00" or a[i + 4:] != b[i + 4:]:
            return None
        return a[:i], a[i + 4:]

    def _send_query(self, op: Optional[_Op], node_id: Optional[bytes], addr: tuple, q: M.Query,
                    now: float, template: Optional[tuple] = None) -> bool:
        if len(self._pending) >= self.config.max_pending:
            p = _Pending(b"", op, node_id, addr, now, now, q.METHOD)
            self._on_failure(p, now, timeout=True)
            return False
        tid = self._new_tid()
        try:
            if template is not None and len(tid) == 4:
                data = template[0] + tid + template[1]
            else:
                # The query objects are built (and field-checked by the caller's API) once
                # per operation; per send only the transaction id and version change.
                d = q._to_dict()
                d[b"t"] = tid
                d[b"v"] = self.config.client_version
                if self._read_only:
                    d[b"ro"] = 1  # BEP 43: on every query we send
                data = M.bencode.encode(d)
                if len(data) > M.DATAGRAM_BUDGET or q.channel_only():
                    raise LocalProtocolError("query does not fit a datagram")
        except (LocalProtocolError, KrpcError):
            p = _Pending(tid, op, node_id, addr, now, now, q.METHOD)
            self._on_failure(p, now, timeout=False)
            return False
        deadline = now + self.config.query_timeout
        self._pending[tid] = _Pending(tid, op, node_id, addr, now, deadline, q.METHOD)
        heapq.heappush(self._heap, (deadline, tid))
        self._send(data, addr)
        return True

    def _send(self, data: bytes, addr: tuple) -> None:
        out = self._out
        if len(out) >= self.config.max_outgoing:
            del out[0]
        out.append((data, addr))

    def _start_lookup(self, op: _Op, now: float) -> None:
        initial = [(n.node_id, n.addr) for n in self.table.closest(op.target, self.config.k * 2)]
        op.lookup = Lookup(op.target, initial, k=self.config.k, alpha=self.config.alpha, now=now,
                           query_timeout=self.config.query_timeout * 1.5, own_id=self.node_id,
                           score=self.reputation.score, excluded=self.reputation.is_excluded)
        self._pump(op, now)

    def _query_for(self, op: _Op) -> M.Query:
        nid = self.node_id
        if op.kind in (_K_PEERS, _K_ANNOUNCE):
            return M.GetPeers(transaction_id=b"-", node_id=nid, info_hash=op.target)
        if op.kind == _K_GET:
            return M.Get(transaction_id=b"-", node_id=nid, target=op.target, seq=op.seq)
        if op.kind == _K_PUT:
            return M.Get(transaction_id=b"-", node_id=nid, target=op.target)
        return M.FindNode(transaction_id=b"-", node_id=nid, target=op.target)

    def _pump(self, op: _Op, now: float) -> None:
        lk = op.lookup
        if lk is None or op.phase != 0:
            return
        q = op.query
        if q is None:
            q = op.query = self._query_for(op)
            op.qtemplate = self._query_template(q)
        for node_id, addr in lk.next_queries(now):
            self._send_query(op, node_id, addr, q, now, op.qtemplate)
        lk.handle_timer(now)  # drain its expiry list; our own timeouts do the blaming
        if lk.done and op.phase == 0:
            self._lookup_done(op, now)

    def _lookup_done(self, op: _Op, now: float) -> None:
        res = op.lookup.result
        nodes = tuple((nid, addr) for nid, addr, _tok in res.closest)
        if op.kind == _K_FIND:
            self._finish(op, bool(nodes) or op.internal, FindNodeResult(target=op.target, nodes=nodes,
                                                                        queries=res.queries),
                         error="" if nodes else "no node answered")
        elif op.kind == _K_PEERS:
            peers = []
            seen = set()
            for _nid, peer in res.values:
                if peer not in seen:
                    seen.add(peer)
                    peers.append(peer)
            self._finish(op, bool(nodes), GetPeersResult(info_hash=op.target, peers=tuple(peers), nodes=nodes),
                         error="" if nodes else "no node answered")
        elif op.kind == _K_GET:
            self._finish(op, True, self._select(op, res.values))
        elif op.kind in (_K_ANNOUNCE, _K_PUT):
            op.phase = 1
            for nid, addr, tok in res.closest:
                if tok is None:
                    continue
                if op.kind == _K_ANNOUNCE:
                    q: M.Query = M.AnnouncePeer(transaction_id=b"-", node_id=self.node_id, info_hash=op.target,
                                                port=op.port, token=tok, implied_port=op.implied_port)
                else:
                    q = _replace_token(op.put, tok)
                op.pending += 1
                self._send_query(op, nid, addr, q, now)
            self._maybe_finish_writes(op)
        if op.internal and op.on_done is not None:
            op.on_done(now)

    def _maybe_finish_writes(self, op: _Op) -> None:
        if op.phase == 1 and op.pending <= 0:
            self._finish(op, op.stored > 0, PutResult(target=op.target, stored=op.stored, failed=op.failed),
                         error="" if op.stored else "no node stored it")

    def _select(self, op: _Op, values: tuple) -> GetResult:
        recs = []
        for _nid, (value, key, seq, sig) in values:
            recs.append(_Item(value, key, seq, sig))
        target, salt = op.target, op.salt

        def verify(it: "_Item") -> bool:
            if it.key is None:
                return M.immutable_target(it.value) == target
            if it.seq is None or it.sig is None or M.mutable_target(it.key, salt) != target:
                return False
            M.verify_mutable(it.key, it.sig, it.value, it.seq, salt)
            return True

        sel = select_record(recs, verify)
        if sel is None:
            return GetResult(target=target, value=None, responses=len(recs))
        it = sel.record
        if sel.agreement < op.quorum:
            return GetResult(target=target, value=None, agreement=sel.agreement, responses=sel.total,
                             conflict=sel.conflict)
        return GetResult(target=target, value=it.value, key=it.key, seq=it.seq, signature=it.sig,
                         agreement=sel.agreement, responses=sel.total, conflict=sel.conflict)

    def _start_put(self, put: M.Put, target: bytes, now: float) -> int:
        op = self._new_op(_K_PUT, target)
        op.put = put
        self._start_lookup(op, now)
        return op.op_id

    def _republish(self, rec: Any, now: float) -> None:
        if rec.kind is RecordKind.SIGNED:
            return  # qd records travel over links; their owners republish them
        if rec.kind is RecordKind.IMMUTABLE:
            put = M.Put(transaction_id=b"-", node_id=self.node_id, token=b"x", value=rec.value)
        else:
            put = M.Put(transaction_id=b"-", node_id=self.node_id, token=b"x", value=rec.value, key=rec.pubkey,
                        signature=rec.signature, seq=rec.seq, salt=rec.salt or None)
        op = self._new_op(_K_PUT, rec.target)
        op.internal = True
        op.put = put
        self._start_lookup(op, now)

    def _finish(self, op: _Op, ok: bool, result: object = None, error: str = "") -> None:
        if op.phase == 2 and op.op_id not in self._ops:
            return
        op.phase = 2
        self._ops.pop(op.op_id, None)
        if op.op_id in self._bootstrap_ops:
            self._bootstrap_ops.discard(op.op_id)
            if not self._bootstrap_ops and self._bootstrapping:
                self._bootstrap_lookups(self._now)
            return
        if op.internal:
            return
        self._events.append(OperationDone(op_id=op.op_id, ok=ok, result=result if ok else None, error=error))

    def _bootstrap_lookups(self, now: float) -> None:
        self._bootstrapping = False
        remaining = [2]

        def done(_now: float) -> None:
            remaining[0] -= 1
            if remaining[0] == 0:
                self._events.append(BootstrapDone(table_size=len(self.table)))

        for target in (self.node_id, self._rng(20)):
            op = self._new_op(_K_FIND, target)
            op.internal = True
            op.on_done = done
            self._start_lookup(op, now)


class _Item:
    __slots__ = ("value", "key", "seq", "sig")

    def __init__(self, value: bytes, key: Optional[bytes], seq: Optional[int], sig: Optional[bytes]) -> None:
        self.value = value
        self.key = key
        self.seq = seq
        self.sig = sig


def _replace_token(put: M.Put, token: bytes) -> M.Put:
    import dataclasses

    return dataclasses.replace(put, token=token)
