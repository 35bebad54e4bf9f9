# C types for the lookup state machine (compiled build only; lookup.py is the source).
# Every response of a lookup walks the shortlist and touches each candidate's fields;
# as extension types those are struct fields instead of dictionary-backed slots.
# Distances stay Python ints (160 bits).

cimport cython

cdef class _Cand:
    cdef public object node_id, addr, dist, token
    cdef public int state
    cdef public double sent_at

cdef bint _valid_node(object entry)

cdef class Lookup:
    cdef public object target, own_id
    cdef public Py_ssize_t k, alpha, max_shortlist, max_queries, max_values, max_nodes_per_response
    cdef public double query_timeout, started
    cdef public Py_ssize_t queries, failures
    cdef object _score, _excluded, _t
    cdef public list _list
    cdef list _dists, _values, _expired
    cdef dict _by_id, _inflight
    cdef set _addrs, _queried
    cdef bint _done

    cpdef bint knows(self, node_id)
    @cython.locals(c=_Cand, top=list, eligible=list, out=list, j=Py_ssize_t, slots=Py_ssize_t,
                   want=Py_ssize_t)
    cpdef list next_queries(self, double now)
    cdef list _best(self, list eligible, Py_ssize_t want)
    cdef _add(self, node_id, addr)
    cdef _drop(self, Py_ssize_t j)
    cdef _fail(self, _Cand c)
    cdef _expire(self, double now)
    cdef _check_done(self)
