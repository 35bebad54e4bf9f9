# C types for the KRPC parse path (compiled build only; messages.py is the source).
# Every lookup response goes through these: a compact node list is walked byte by byte
# and most optional fields are absent, so the checks are C loops and C calls here.
cimport cython
from cpython.object cimport PyObject_GenericSetAttr

cdef extern from *:
    """
    /* A NamedTuple (tuple subclass) of three items, filled the way tuple.__new__ fills
       it, without the Python-level __new__ NamedTuple defines. */
    static PyObject *qudag_new_tuple3(PyObject *t, PyObject *a, PyObject *b, PyObject *c) {
        PyTypeObject *tp = (PyTypeObject *)t;
        PyObject *o = tp->tp_alloc(tp, 3);
        if (o == NULL) return NULL;
        Py_INCREF(a); PyTuple_SET_ITEM(o, 0, a);
        Py_INCREF(b); PyTuple_SET_ITEM(o, 1, b);
        Py_INCREF(c); PyTuple_SET_ITEM(o, 2, c);
        return o;
    }
    /* tp_alloc of a plain heap type, as object.__new__ does it. */
    #define qudag_alloc_instance(t) PyType_GenericAlloc((PyTypeObject *)(t), 0)
    """
    object qudag_new_tuple3(object t, object a, object b, object c)
    object qudag_alloc_instance(object t)

cpdef object _get_bytes(dict d, bytes key, object tid, Py_ssize_t lo, Py_ssize_t hi,
                        bint required=*, object code=*)

cdef object _node_info(object node_id, object ip, object port)

@cython.locals(i=Py_ssize_t, n=Py_ssize_t)
cdef _check_nodes(bytes raw, Py_ssize_t step, object tid, str what)

@cython.locals(i=Py_ssize_t, n=Py_ssize_t, port=int, out=list)
cpdef tuple _parse_nodes(bytes raw, Py_ssize_t step, object tid, str what)

cdef object _build(object cls, tuple values)
