/*
 * qudag_core._bencode: strict, canonical bencode decode/encode (BEP 3, as BEP 5 uses it).
 *
 * Why C: every KRPC datagram goes through this codec twice (decode on receive, encode on
 * send), and a DHT node handles thousands of datagrams a second; the pure reference in
 * qudag_core/krpc/bencode.py costs ~10x more per message.  The kernel is a byte scanner
 * that builds Python objects; nothing cryptographic lives here.
 *
 * Contract: identical to py_decode / py_encode in qudag_core/krpc/bencode.py, including
 * the error message and byte offset of the first violation (a Hypothesis test compares the
 * two on arbitrary input).  Safety:
 *   - input taken through the buffer protocol (PyBUF_SIMPLE), never copied;
 *   - every read is preceded by a `p < n` check; string lengths are compared against the
 *     remaining input while their digits are read, so a huge declared length allocates
 *     nothing and cannot overflow (length <= n is kept, n <= PY_SSIZE_T_MAX / 10 checked);
 *   - recursion depth is bounded by max_depth <= 512 (checked on entry), both ways;
 *   - integers: <= 18 digits on the int64 fast path, up to 256 digits through
 *     PyLong_FromString on a stack copy, more is an error.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

#define MAX_DEPTH_DEFAULT 64
#define MAX_DEPTH_LIMIT 512
#define MAX_SIZE_DEFAULT 65536
#define MAX_INT_DIGITS 256
#define MAX_INT_BITS 900

static const char E_END[] = "unexpected end of input";
static const char E_TYPE[] = "invalid value type byte";
static const char E_INT[] = "invalid integer";
static const char E_NEG_ZERO[] = "negative zero";
static const char E_INT_LEADING_ZERO[] = "leading zero in integer";
static const char E_INT_LONG[] = "integer too long";
static const char E_INT_END[] = "expected 'e' after integer";
static const char E_LEN_LEADING_ZERO[] = "leading zero in string length";
static const char E_LEN_PAST_END[] = "declared length past end of input";
static const char E_COLON[] = "expected ':' after string length";
static const char E_KEY_TYPE[] = "dictionary key is not a byte string";
static const char E_KEY_ORDER[] = "dictionary keys out of order";
static const char E_KEY_DUP[] = "duplicate dictionary key";
static const char E_DEPTH[] = "nesting too deep";
static const char E_TRAILING[] = "trailing bytes after value";
static const char E_TOO_BIG[] = "input larger than the size limit";

/* KRPC dictionary keys seen in nearly every message: decoded keys that match one reuse a
 * shared bytes object whose hash is already cached (single-byte keys are shared by
 * CPython itself).  Saves an allocation and a hash per key on the hot path. */
static const char *const known_keys[] = {
    "id", "ip", "nodes", "nodes6", "token", "values", "target", "info_hash", "port",
    "implied_port", "seq", "sig", "salt", "cas", "want", "name", "samples", "interval",
};
#define N_KNOWN_KEYS (sizeof known_keys / sizeof known_keys[0])
static PyObject *known_key_objs[N_KNOWN_KEYS];

static PyObject *BencodeError;       /* qudag_core.krpc.errors.BencodeError */
static PyObject *BencodeEncodeError; /* qudag_core.krpc.errors.BencodeEncodeError */
static PyObject *str_offset;

static void
raise_at(const char *msg, Py_ssize_t offset)
{
    PyObject *args = NULL, *kw = NULL, *exc = NULL, *off = NULL;
    args = Py_BuildValue("(s)", msg);
    off = PyLong_FromSsize_t(offset);
    kw = PyDict_New();
    if (args == NULL || off == NULL || kw == NULL)
        goto done;
    if (PyDict_SetItem(kw, str_offset, off) < 0)
        goto done;
    exc = PyObject_Call(BencodeError, args, kw);
    if (exc != NULL)
        PyErr_SetObject(BencodeError, exc);
done:
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_XDECREF(off);
    Py_XDECREF(exc);
}

#define IS_DIGIT(c) ((unsigned char)((c) - '0') <= 9)

typedef struct {
    const unsigned char *buf;
    Py_ssize_t n;
    int max_depth;
} dec_t;

/* Parse a string header at *pos (buf[*pos] is a digit).  On success stores the payload
 * start in *start and its length in *len, advances *pos past the payload. */
static int
scan_str(const dec_t *d, Py_ssize_t *pos, Py_ssize_t *start, Py_ssize_t *len)
{
    const unsigned char *buf = d->buf;
    Py_ssize_t n = d->n, p = *pos, r = p, length = 0;
    if (buf[p] == '0' && p + 1 < n && IS_DIGIT(buf[p + 1])) {
        raise_at(E_LEN_LEADING_ZERO, p);
        return -1;
    }
    while (r < n && IS_DIGIT(buf[r])) {
        length = length * 10 + (buf[r] - '0'); /* length <= n before, n <= SSIZE_MAX/10 */
        r++;
        if (length > n) {
            raise_at(E_LEN_PAST_END, p);
            return -1;
        }
    }
    if (r >= n) {
        raise_at(E_END, n);
        return -1;
    }
    if (buf[r] != ':') {
        raise_at(E_COLON, r);
        return -1;
    }
    r++;
    if (length > n - r) {
        raise_at(E_LEN_PAST_END, p);
        return -1;
    }
    *start = r;
    *len = length;
    *pos = r + length;
    return 0;
}

static PyObject *
dec_int(const dec_t *d, Py_ssize_t *pos)
{
    const unsigned char *buf = d->buf;
    Py_ssize_t n = d->n, p = *pos, q = p + 1, r;
    int neg = 0;
    if (q < n && buf[q] == '-') {
        neg = 1;
        q++;
    }
    if (q >= n) {
        raise_at(E_END, n);
        return NULL;
    }
    if (!IS_DIGIT(buf[q])) {
        raise_at(E_INT, q);
        return NULL;
    }
    if (buf[q] == '0') {
        if (neg) {
            raise_at(E_NEG_ZERO, q);
            return NULL;
        }
        if (q + 1 < n && IS_DIGIT(buf[q + 1])) {
            raise_at(E_INT_LEADING_ZERO, q);
            return NULL;
        }
    }
    r = q;
    long long v = 0;
    while (r < n && IS_DIGIT(buf[r])) {
        if (r - q >= MAX_INT_DIGITS) {
            raise_at(E_INT_LONG, r);
            return NULL;
        }
        if (r - q < 18)
            v = v * 10 + (buf[r] - '0');
        r++;
    }
    if (r >= n) {
        raise_at(E_END, n);
        return NULL;
    }
    if (buf[r] != 'e') {
        raise_at(E_INT_END, r);
        return NULL;
    }
    *pos = r + 1;
    if (r - q <= 18)
        return PyLong_FromLongLong(neg ? -v : v);
    /* Slow path for big integers: copy the (bounded) digits to a NUL-terminated buffer. */
    char tmp[MAX_INT_DIGITS + 2];
    Py_ssize_t k = 0, m = r - q;
    if (neg)
        tmp[k++] = '-';
    memcpy(tmp + k, buf + q, (size_t)m);
    tmp[k + m] = '\0';
    return PyLong_FromString(tmp, NULL, 10);
}

static PyObject *dec_value(const dec_t *d, Py_ssize_t *pos, int depth);

static PyObject *
dec_dict(const dec_t *d, Py_ssize_t *pos, int depth)
{
    const unsigned char *buf = d->buf;
    Py_ssize_t n = d->n, p = *pos;
    if (depth >= d->max_depth) {
        raise_at(E_DEPTH, p);
        return NULL;
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL)
        return NULL;
    Py_ssize_t prev_start = -1, prev_len = 0;
    p++;
    for (;;) {
        if (p >= n) {
            raise_at(E_END, n);
            goto fail;
        }
        unsigned char c = buf[p];
        if (c == 'e') {
            *pos = p + 1;
            return dict;
        }
        if (!IS_DIGIT(c)) {
            raise_at(E_KEY_TYPE, p);
            goto fail;
        }
        Py_ssize_t kstart, klen, kp = p;
        if (scan_str(d, &kp, &kstart, &klen) < 0)
            goto fail;
        if (prev_start >= 0) {
            Py_ssize_t m = klen < prev_len ? klen : prev_len;
            int cmp = memcmp(buf + kstart, buf + prev_start, (size_t)m);
            if (cmp == 0)
                cmp = (klen > prev_len) - (klen < prev_len);
            if (cmp <= 0) {
                raise_at(cmp == 0 ? E_KEY_DUP : E_KEY_ORDER, p);
                goto fail;
            }
        }
        PyObject *key = NULL;
        if (klen >= 2 && klen <= 12) {
            for (size_t j = 0; j < N_KNOWN_KEYS; j++) {
                PyObject *kk = known_key_objs[j];
                if (PyBytes_GET_SIZE(kk) == klen && memcmp(PyBytes_AS_STRING(kk), buf + kstart, (size_t)klen) == 0) {
                    key = kk;
                    Py_INCREF(key);
                    break;
                }
            }
        }
        if (key == NULL)
            key = PyBytes_FromStringAndSize((const char *)buf + kstart, klen);
        if (key == NULL)
            goto fail;
        PyObject *val = dec_value(d, &kp, depth + 1);
        if (val == NULL) {
            Py_DECREF(key);
            goto fail;
        }
        int rc = PyDict_SetItem(dict, key, val);
        Py_DECREF(key);
        Py_DECREF(val);
        if (rc < 0)
            goto fail;
        prev_start = kstart;
        prev_len = klen;
        p = kp;
    }
fail:
    Py_DECREF(dict);
    return NULL;
}

static PyObject *
dec_list(const dec_t *d, Py_ssize_t *pos, int depth)
{
    Py_ssize_t n = d->n, p = *pos;
    if (depth >= d->max_depth) {
        raise_at(E_DEPTH, p);
        return NULL;
    }
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    p++;
    for (;;) {
        if (p >= n) {
            raise_at(E_END, n);
            goto fail;
        }
        if (d->buf[p] == 'e') {
            *pos = p + 1;
            return list;
        }
        PyObject *val = dec_value(d, &p, depth + 1);
        if (val == NULL)
            goto fail;
        int rc = PyList_Append(list, val);
        Py_DECREF(val);
        if (rc < 0)
            goto fail;
    }
fail:
    Py_DECREF(list);
    return NULL;
}

static PyObject *
dec_value(const dec_t *d, Py_ssize_t *pos, int depth)
{
    Py_ssize_t p = *pos;
    if (p >= d->n) {
        raise_at(E_END, d->n);
        return NULL;
    }
    unsigned char c = d->buf[p];
    if (IS_DIGIT(c)) {
        Py_ssize_t start, len;
        if (scan_str(d, pos, &start, &len) < 0)
            return NULL;
        return PyBytes_FromStringAndSize((const char *)d->buf + start, len);
    }
    switch (c) {
    case 'i':
        return dec_int(d, pos);
    case 'd':
        return dec_dict(d, pos, depth);
    case 'l':
        return dec_list(d, pos, depth);
    default:
        raise_at(E_TYPE, p);
        return NULL;
    }
}

static PyObject *
bencode_decode(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    static const char *const names[] = {"data", "max_size", "max_depth"};
    PyObject *vals[3] = {NULL, NULL, NULL};
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    if (nargs > 3) {
        PyErr_SetString(PyExc_TypeError, "decode() takes at most 3 arguments");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++)
        vals[i] = args[i];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        int found = 0;
        for (int j = 0; j < 3; j++) {
            if (PyUnicode_CompareWithASCIIString(name, names[j]) == 0) {
                if (vals[j] != NULL) {
                    PyErr_Format(PyExc_TypeError, "decode() got multiple values for '%s'", names[j]);
                    return NULL;
                }
                vals[j] = args[nargs + i];
                found = 1;
            }
        }
        if (!found) {
            PyErr_Format(PyExc_TypeError, "decode() got an unexpected keyword argument '%U'", name);
            return NULL;
        }
    }
    if (vals[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "decode() missing required argument 'data'");
        return NULL;
    }
    Py_ssize_t max_size = MAX_SIZE_DEFAULT;
    long max_depth = MAX_DEPTH_DEFAULT;
    if (vals[1] != NULL) {
        max_size = PyLong_AsSsize_t(vals[1]);
        if (max_size == -1 && PyErr_Occurred())
            return NULL;
    }
    if (vals[2] != NULL) {
        max_depth = PyLong_AsLong(vals[2]);
        if (max_depth == -1 && PyErr_Occurred())
            return NULL;
    }
    if (max_depth < 1 || max_depth > MAX_DEPTH_LIMIT) {
        PyErr_Format(PyExc_ValueError, "max_depth must be in 1..%d", MAX_DEPTH_LIMIT);
        return NULL;
    }
    if (max_size < 0) {
        PyErr_SetString(PyExc_ValueError, "max_size must be >= 0");
        return NULL;
    }
    Py_buffer view;
    PyObject *copy = NULL;
    if (PyObject_GetBuffer(vals[0], &view, PyBUF_SIMPLE) < 0) {
        /* A non-contiguous view has no simple buffer; the pure decoder copies it
         * (memoryview.tobytes), so do the same rather than refuse it. */
        if (!PyMemoryView_Check(vals[0]) || !PyErr_ExceptionMatches(PyExc_BufferError))
            return NULL;
        PyErr_Clear();
        copy = PyBytes_FromObject(vals[0]);
        if (copy == NULL)
            return NULL;
        if (PyObject_GetBuffer(copy, &view, PyBUF_SIMPLE) < 0) {
            Py_DECREF(copy);
            return NULL;
        }
    }
    PyObject *result = NULL;
    if (view.len > max_size) {
        raise_at(E_TOO_BIG, max_size);
        goto done;
    }
    if (view.len > PY_SSIZE_T_MAX / 16) { /* keeps length*10+9 from overflowing */
        raise_at(E_TOO_BIG, PY_SSIZE_T_MAX / 16);
        goto done;
    }
    dec_t d = {(const unsigned char *)view.buf, view.len, (int)max_depth};
    Py_ssize_t pos = 0;
    result = dec_value(&d, &pos, 0);
    if (result != NULL && pos != d.n) {
        Py_CLEAR(result);
        raise_at(E_TRAILING, pos);
    }
done:
    PyBuffer_Release(&view);
    Py_XDECREF(copy);
    return result;
}

/* ---- encoder ------------------------------------------------------------------------ */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
    int max_depth;
    char small[512];
} enc_t;

static int
enc_reserve(enc_t *e, Py_ssize_t extra)
{
    if (extra > PY_SSIZE_T_MAX - e->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t need = e->len + extra;
    if (need <= e->cap)
        return 0;
    Py_ssize_t cap = e->cap;
    while (cap < need) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            cap = need;
            break;
        }
        cap *= 2;
    }
    char *nb;
    if (e->buf == e->small) {
        nb = PyMem_Malloc((size_t)cap);
        if (nb != NULL)
            memcpy(nb, e->small, (size_t)e->len);
    } else {
        nb = PyMem_Realloc(e->buf, (size_t)cap);
    }
    if (nb == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    e->buf = nb;
    e->cap = cap;
    return 0;
}

static inline char *
fmt_u(char *end, unsigned long long v)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

static int
enc_bytes(enc_t *e, const char *data, Py_ssize_t len)
{
    char tmp[24];
    char *s = fmt_u(tmp + sizeof tmp, (unsigned long long)len);
    Py_ssize_t hl = (tmp + sizeof tmp) - s;
    if (enc_reserve(e, hl + 1 + len) < 0)
        return -1;
    memcpy(e->buf + e->len, s, (size_t)hl);
    e->buf[e->len + hl] = ':';
    if (len)
        memcpy(e->buf + e->len + hl + 1, data, (size_t)len);
    e->len += hl + 1 + len;
    return 0;
}

static int
enc_raise(const char *msg)
{
    PyErr_SetString(BencodeEncodeError, msg);
    return -1;
}

static int
enc_int(enc_t *e, PyObject *obj)
{
    int overflow = 0;
    long long v = PyLong_AsLongLongAndOverflow(obj, &overflow);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (!overflow) {
        char tmp[24];
        unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
        char *s = fmt_u(tmp + sizeof tmp, u);
        if (v < 0)
            *--s = '-';
        Py_ssize_t l = (tmp + sizeof tmp) - s;
        if (enc_reserve(e, l + 2) < 0)
            return -1;
        e->buf[e->len++] = 'i';
        memcpy(e->buf + e->len, s, (size_t)l);
        e->len += l;
        e->buf[e->len++] = 'e';
        return 0;
    }
    PyObject *exact = PyNumber_Index(obj); /* plain int even for int subclasses */
    if (exact == NULL)
        return -1;
    int64_t bits = (int64_t)_PyLong_NumBits(exact);
    if (bits < 0 || bits > MAX_INT_BITS) {
        Py_DECREF(exact);
        if (PyErr_Occurred())
            PyErr_Clear();
        return enc_raise("integer too long");
    }
    PyObject *s = PyNumber_ToBase(exact, 10);
    int neg = _PyLong_Sign(exact) < 0;
    Py_DECREF(exact);
    if (s == NULL)
        return -1;
    Py_ssize_t l;
    const char *u = PyUnicode_AsUTF8AndSize(s, &l);
    if (u == NULL) {
        Py_DECREF(s);
        return -1;
    }
    if (l - neg > MAX_INT_DIGITS) {
        Py_DECREF(s);
        return enc_raise("integer too long");
    }
    if (enc_reserve(e, l + 2) < 0) {
        Py_DECREF(s);
        return -1;
    }
    e->buf[e->len++] = 'i';
    memcpy(e->buf + e->len, u, (size_t)l);
    e->len += l;
    e->buf[e->len++] = 'e';
    Py_DECREF(s);
    return 0;
}

static int enc_value(enc_t *e, PyObject *obj, int depth);

static int
enc_dict(enc_t *e, PyObject *obj, int depth)
{
    if (depth >= e->max_depth)
        return enc_raise("nesting too deep");
    Py_ssize_t i = 0, n = PyDict_GET_SIZE(obj);
    PyObject *k, *v;
    /* Fast path: keys already in order (what our own message classes produce). */
    int sorted = 1;
    const char *pk = NULL;
    Py_ssize_t pl = 0;
    while (PyDict_Next(obj, &i, &k, &v)) {
        if (!PyBytes_Check(k)) {
            PyErr_Format(BencodeEncodeError, "dictionary key must be bytes, not %.100s", Py_TYPE(k)->tp_name);
            return -1;
        }
        const char *kb = PyBytes_AS_STRING(k);
        Py_ssize_t kl = PyBytes_GET_SIZE(k);
        if (pk != NULL && sorted) {
            Py_ssize_t m = kl < pl ? kl : pl;
            int cmp = memcmp(kb, pk, (size_t)m);
            if (cmp == 0)
                cmp = (kl > pl) - (kl < pl);
            if (cmp <= 0)
                sorted = 0;
        }
        pk = kb;
        pl = kl;
    }
    if (enc_reserve(e, 1) < 0)
        return -1;
    e->buf[e->len++] = 'd';
    if (sorted) {
        i = 0;
        while (PyDict_Next(obj, &i, &k, &v)) {
            Py_INCREF(v);
            int rc = enc_bytes(e, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k));
            if (rc == 0)
                rc = enc_value(e, v, depth + 1);
            Py_DECREF(v);
            if (rc < 0)
                return -1;
        }
    } else {
        PyObject *keys = PyDict_Keys(obj);
        if (keys == NULL)
            return -1;
        if (PyList_Sort(keys) < 0) {
            Py_DECREF(keys);
            return -1;
        }
        n = PyList_GET_SIZE(keys);
        for (i = 0; i < n; i++) {
            k = PyList_GET_ITEM(keys, i);
            v = PyDict_GetItemWithError(obj, k);
            if (v == NULL) {
                if (!PyErr_Occurred())
                    PyErr_SetString(PyExc_RuntimeError, "dictionary changed during encoding");
                Py_DECREF(keys);
                return -1;
            }
            Py_INCREF(v);
            int rc = enc_bytes(e, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k));
            if (rc == 0)
                rc = enc_value(e, v, depth + 1);
            Py_DECREF(v);
            if (rc < 0) {
                Py_DECREF(keys);
                return -1;
            }
        }
        Py_DECREF(keys);
    }
    if (enc_reserve(e, 1) < 0)
        return -1;
    e->buf[e->len++] = 'e';
    return 0;
}

static int
enc_seq(enc_t *e, PyObject *obj, int depth)
{
    if (depth >= e->max_depth)
        return enc_raise("nesting too deep");
    if (enc_reserve(e, 1) < 0)
        return -1;
    e->buf[e->len++] = 'l';
    PyObject *fast = PySequence_Fast(obj, "list or tuple expected");
    if (fast == NULL)
        return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        Py_INCREF(item);
        int rc = enc_value(e, item, depth + 1);
        Py_DECREF(item);
        if (rc < 0) {
            Py_DECREF(fast);
            return -1;
        }
        n = PySequence_Fast_GET_SIZE(fast);
    }
    Py_DECREF(fast);
    if (enc_reserve(e, 1) < 0)
        return -1;
    e->buf[e->len++] = 'e';
    return 0;
}

static int
enc_value(enc_t *e, PyObject *obj, int depth)
{
    if (PyBytes_CheckExact(obj))
        return enc_bytes(e, PyBytes_AS_STRING(obj), PyBytes_GET_SIZE(obj));
    if (PyDict_CheckExact(obj))
        return enc_dict(e, obj, depth);
    if (PyLong_CheckExact(obj))
        return enc_int(e, obj);
    if (PyList_CheckExact(obj) || PyTuple_CheckExact(obj))
        return enc_seq(e, obj, depth);
    if (PyBool_Check(obj))
        return enc_raise("bool has no bencode form; use 0 or 1");
    if (PyLong_Check(obj))
        return enc_int(e, obj);
    if (PyBytes_Check(obj) || PyByteArray_Check(obj) || PyMemoryView_Check(obj)) {
        /* PyBUF_SIMPLE refuses non-contiguous views; the pure encoder's bytes(obj) takes
         * them, so go through bytes() in that rare case to stay identical. */
        Py_buffer view;
        if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) == 0) {
            int rc = enc_bytes(e, view.buf, view.len);
            PyBuffer_Release(&view);
            return rc;
        }
        PyErr_Clear();
        PyObject *b = PyBytes_FromObject(obj);
        if (b == NULL)
            return -1;
        int rc = enc_bytes(e, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b));
        Py_DECREF(b);
        return rc;
    }
    if (PyDict_Check(obj)) {
        PyObject *copy = PyDict_Copy(obj);
        if (copy == NULL)
            return -1;
        int rc = enc_dict(e, copy, depth);
        Py_DECREF(copy);
        return rc;
    }
    if (PyList_Check(obj) || PyTuple_Check(obj))
        return enc_seq(e, obj, depth);
    if (PyUnicode_Check(obj))
        return enc_raise("str has no bencode form; encode it to bytes first");
    PyErr_Format(BencodeEncodeError, "cannot bencode %.100s", Py_TYPE(obj)->tp_name);
    return -1;
}

static PyObject *
bencode_encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    PyObject *obj = NULL, *depth_obj = NULL;
    if (nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "encode() takes at most 2 arguments");
        return NULL;
    }
    if (nargs >= 1)
        obj = args[0];
    if (nargs >= 2)
        depth_obj = args[1];
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        if (PyUnicode_CompareWithASCIIString(name, "obj") == 0 && obj == NULL)
            obj = args[nargs + i];
        else if (PyUnicode_CompareWithASCIIString(name, "max_depth") == 0 && depth_obj == NULL)
            depth_obj = args[nargs + i];
        else {
            PyErr_Format(PyExc_TypeError, "encode() got an unexpected or repeated keyword argument '%U'", name);
            return NULL;
        }
    }
    if (obj == NULL) {
        PyErr_SetString(PyExc_TypeError, "encode() missing required argument 'obj'");
        return NULL;
    }
    long max_depth = MAX_DEPTH_DEFAULT;
    if (depth_obj != NULL) {
        max_depth = PyLong_AsLong(depth_obj);
        if (max_depth == -1 && PyErr_Occurred())
            return NULL;
    }
    if (max_depth < 1 || max_depth > MAX_DEPTH_LIMIT) {
        PyErr_Format(PyExc_ValueError, "max_depth must be in 1..%d", MAX_DEPTH_LIMIT);
        return NULL;
    }
    enc_t e;
    e.buf = e.small;
    e.len = 0;
    e.cap = sizeof e.small;
    e.max_depth = (int)max_depth;
    PyObject *result = NULL;
    if (enc_value(&e, obj, 0) == 0)
        result = PyBytes_FromStringAndSize(e.buf, e.len);
    if (e.buf != e.small)
        PyMem_Free(e.buf);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", (PyCFunction)(void (*)(void))bencode_decode, METH_FASTCALL | METH_KEYWORDS,
     "decode(data, max_size=65536, max_depth=64)\n--\n\n"
     "Decode one strict, canonical bencode value spanning all of data; BencodeError otherwise."},
    {"encode", (PyCFunction)(void (*)(void))bencode_encode, METH_FASTCALL | METH_KEYWORDS,
     "encode(obj, max_depth=64)\n--\n\n"
     "Canonical bencode of obj (keys sorted bytewise); BencodeEncodeError for what bencode cannot say."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "qudag_core._bencode",
    "Strict canonical bencode kernel; see qudag_core.krpc.bencode for the contract.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC
PyInit__bencode(void)
{
    PyObject *errors = PyImport_ImportModule("qudag_core.krpc.errors");
    if (errors == NULL)
        return NULL;
    BencodeError = PyObject_GetAttrString(errors, "BencodeError");
    BencodeEncodeError = PyObject_GetAttrString(errors, "BencodeEncodeError");
    Py_DECREF(errors);
    if (BencodeError == NULL || BencodeEncodeError == NULL)
        return NULL;
    for (size_t j = 0; j < N_KNOWN_KEYS; j++) {
        known_key_objs[j] = PyBytes_FromString(known_keys[j]);
        if (known_key_objs[j] == NULL || PyObject_Hash(known_key_objs[j]) == -1)
            return NULL;
    }
    str_offset = PyUnicode_InternFromString("offset");
    if (str_offset == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "MAX_DEPTH", MAX_DEPTH_DEFAULT) < 0 ||
        PyModule_AddIntConstant(m, "MAX_DEPTH_LIMIT", MAX_DEPTH_LIMIT) < 0 ||
        PyModule_AddIntConstant(m, "DEFAULT_MAX_SIZE", MAX_SIZE_DEFAULT) < 0 ||
        PyModule_AddIntConstant(m, "MAX_INT_DIGITS", MAX_INT_DIGITS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
