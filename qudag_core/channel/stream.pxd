# C types for the stream channel's hot path (compiled build only; stream.py is the source).
# Counters stay Python ints: they reach 2**64, which no C integer type holds with room
# for the "one past the last" value.
cimport cython
from cpython.object cimport PyObject_GenericSetAttr

cdef extern from *:
    """
    /* tp_alloc of a plain heap type, as object.__new__ does it (the cast is what
       Cython's own cpython.type declaration leaves out). */
    #define qudag_alloc_instance(t) PyType_GenericAlloc((PyTypeObject *)(t), 0)
    """
    object qudag_alloc_instance(object t)

cdef object _message_received(object payload)

cdef class SecureChannel:
    cdef object _config, _state, _session_id
    cdef bytearray _tx_key, _rx_key, _in
    cdef object _tx, _rx
    cdef object _tx_counter, _rx_counter, _tx_bytes, _tx_epoch, _rx_epoch
    cdef object _now, _tx_key_since, _last_received_at, _last_sent_at
    cdef list _out, _pending
    cdef Py_ssize_t _max_payload, _max_body
    cdef object _nonce_limit, _data_limit, _rekey_msgs, _rekey_bytes

    cdef _refuse(self, inp)
    cdef _send_frame(self, int frame_type, payload, Py_ssize_t nbytes)
    cdef _seal_final(self, int frame_type, payload)
    cdef _update_tx_key(self)
    cdef _update_rx_key(self)
    @cython.locals(n=Py_ssize_t, pos=Py_ssize_t, body=Py_ssize_t, end=Py_ssize_t, max_body=Py_ssize_t,
                   header_size=Py_ssize_t, min_body=Py_ssize_t, frame_type=int, events=list)
    cdef Py_ssize_t _parse(self, src) except -1
    @cython.locals(buf=bytearray, n=Py_ssize_t, have=Py_ssize_t, pos=Py_ssize_t, end=Py_ssize_t,
                   take=Py_ssize_t, consumed=Py_ssize_t, header_size=Py_ssize_t)
    cdef _reassemble(self, data)
    cdef _control(self, int frame_type, payload)
    cdef _fail(self, exc)
    cdef _alert_and_end(self, code, str reason, inp)
    cdef _end(self, state)
