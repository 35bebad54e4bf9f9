# C types for the KRPC node (compiled build only; node.py is the source).  Every datagram
# of a lookup runs a chain of the node's internal methods; declared here they are C
# calls on a struct instead of attribute lookups and Python calls.  Fields stay public:
# tests and the adapters read them.

cimport cython
from qudag_core.krpc.lookup cimport Lookup
from qudag_core.krpc.routing cimport RoutingTable

cdef class _Op:
    cdef public object op_id, kind, target, lookup, phase, pending, stored, failed, peers
    cdef public object peer_set, salt, seq, put, port, implied_port, internal, addr
    cdef public object sent_at, on_done, quorum, query, qtemplate

cdef class _Pending:
    cdef public object tid, op, node_id, addr, sent_at, deadline, method

cdef class KrpcNode:
    cdef public object node_id, config, tokens, store, reputation, ratelimit
    cdef public RoutingTable table
    cdef public object _rng, _peers, _pinged, _tid_pool, _now, _maintenance_at
    cdef public dict _pending, _ops, _id_ok_memo, stats
    cdef public list _heap, _out, _events, _bootstrap_addrs
    cdef public set _new_pings, _bootstrap_ops
    cdef public Py_ssize_t _next_op, _tid_at
    cdef public bint _bootstrapping, _read_only
    cdef object __weakref__

    cdef object _receive(self, data, addr, now, bint datagram)
    cdef object _nodes_for(self, dict r, target, addr)
    cdef dict _answer(self, q, addr, now)
    cdef bint _id_ok(self, node_id, host) except -1
    cdef object _note_querier(self, node_id, addr, now)
    @cython.locals(lk=Lookup, raw=bytes, i=Py_ssize_t, end=Py_ssize_t, step=Py_ssize_t,
                   room=Py_ssize_t, nodes=list)
    cdef object _on_response(self, r, addr, now, raw4, raw6)
    cdef object _accept(self, node_id, addr, now, latency)
    cdef object _blame(self, node_id, now)
    cdef object _new_tid(self)
    cdef bint _send_query(self, op, node_id, addr, q, now, template=*) except -1
    cdef object _send(self, data, addr)
    @cython.locals(lk=Lookup)
    cdef object _pump(self, op, now)
