# C types for the KRPC parse path (compiled build only; messages.py is the source).
# Every lookup response goes through these: a compact node list is walked byte by byte
# and most optional fields are absent, so the checks are C loops and C calls here.
cimport cython

cpdef object _get_bytes(dict d, bytes key, object tid, Py_ssize_t lo, Py_ssize_t hi,
                        bint required=*, object code=*)

@cython.locals(i=Py_ssize_t, n=Py_ssize_t, port=int, out=list)
cpdef tuple _parse_nodes(bytes raw, Py_ssize_t step, object tid, str what)
