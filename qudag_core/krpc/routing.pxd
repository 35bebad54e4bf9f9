# C types for the routing table (compiled build only; routing.py is the source).
# Every query we answer and every response we get touches a node entry and its bucket;
# as extension types their fields are struct slots, not descriptor lookups.
# Ids and distances stay Python ints (160 bits); times stay objects (None = never).

cimport cython

cdef class Node:
    cdef public object node_id, addr, prefix, last_response, last_query
    cdef public object first_seen, ping_sent, compact
    cdef public Py_ssize_t failures, slot

cdef class _Bucket:
    cdef public list nodes
    cdef public object replacements, last_changed, last_refreshed
    cdef public dict prefix_count

cdef class RoutingTable:
    cdef public object own_id, config
    cdef object _own, _created
    cdef dict _buckets, _nodes, _by_addr, _prefix_count, _prefix_memo
    cdef bytearray _ids
    cdef list _slots

    cpdef tuple compact_closest(self, target, Py_ssize_t count)
    @cython.locals(node=Node, slots=list, n=Py_ssize_t, limit=Py_ssize_t, want=Py_ssize_t, out=list)
    cdef list _nearest(self, target, Py_ssize_t count, bint include_bad)
