/*
 * qudag_core._aead: the secure channel's frame sealing/opening kernel.
 *
 * Why this is in C: every application message crosses this code twice (seal on one
 * side, open on the other).  Going through ``cryptography`` costs a Python call, a fresh
 * or copied EVP_CIPHER_CTX and several temporary bytes objects per frame, plus the
 * Python-level header build and slicing; the channel's goal is to cost no more than a
 * bare AEAD call.  Here one C call builds the header, encrypts with an EVP context made
 * once per key (only the nonce changes per frame:
 * ``EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce)``), and writes the tag straight
 * into the result bytes object.  All cipher work is OpenSSL's (EVP chacha20-poly1305,
 * RFC 8439); nothing cryptographic is implemented here.
 *
 * Wire formats (must match qudag_core/channel/frames.py byte for byte):
 *   stream frame   = len:u32be || AEAD(nonce, payload || type:u8, aad = len:u32be)
 *                    where len = len(payload) + 1 + 16 (the body length); the type
 *                    byte trails the payload as in TLS 1.3's TLSInnerPlaintext
 *   datagram       = counter:u64be || AEAD(nonce, payload, aad = counter:u64be)
 *   nonce          = 0x00000000 || counter:u64be
 *
 * Bounds: every length is checked against the header, INT_MAX (EVP takes int) and the
 * caller's limits before any memory is touched.  Buffers come in through the buffer
 * protocol (bytes, bytearray, memoryview slices) and are not copied.  For frames of
 * at least GIL_RELEASE_MIN bytes the GIL is released around the cipher work; a busy
 * flag (checked with the GIL held) refuses concurrent use of one key object from two
 * threads, since an EVP context is not thread safe.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <openssl/evp.h>

#define KEY_SIZE 32
#define NONCE_SIZE 12
#define TAG_SIZE 16
#define STREAM_HEADER 4
#define DGRAM_HEADER 8
#define GIL_RELEASE_MIN 8192
/* A stream body is u32-length-prefixed; keep the limit well inside int for EVP. */
#define MAX_BODY ((Py_ssize_t)(INT_MAX - 64))

static PyObject *DecryptError; /* qudag_core.errors.DecryptError */

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
    int busy;
} FrameCipher;

static void
put_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void
put_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

static uint32_t
get_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

static void
make_nonce(unsigned char nonce[NONCE_SIZE], uint64_t counter)
{
    memset(nonce, 0, 4);
    put_be64(nonce + 4, counter);
}

/* Convert a Python int to uint64 (OverflowError / TypeError on failure). */
static int
counter_from(PyObject *obj, uint64_t *out)
{
    unsigned long long v = PyLong_AsUnsignedLongLong(obj);
    if (v == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)v;
    return 0;
}

static int
acquire(FrameCipher *self)
{
    if (self->enc == NULL || self->dec == NULL) {
        PyErr_SetString(PyExc_ValueError, "FrameCipher has been wiped");
        return -1;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "FrameCipher used concurrently from two threads");
        return -1;
    }
    self->busy = 1;
    return 0;
}

/* ---- core cipher steps (no Python API inside: may run without the GIL) ---- */

/* Encrypt in(inlen) || [post(postlen)] into out with aad, tag to tag.  0 on success.
 * The bulk goes first in one EVP update: measured with OpenSSL 3.0, a short update
 * *before* the bulk costs a few hundred ns per frame (the bulk then runs misaligned to
 * the ChaCha20 block), one after it costs nothing measurable. */
static int
do_seal(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *aad, int aadlen,
        const unsigned char *in, int inlen, const unsigned char *post, int postlen,
        unsigned char *out, unsigned char *tag)
{
    int outl = 0, total = 0;
    if (EVP_EncryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (EVP_EncryptUpdate(ctx, NULL, &outl, aad, aadlen) != 1)
        return -1;
    if (inlen > 0) {
        if (EVP_EncryptUpdate(ctx, out, &outl, in, inlen) != 1)
            return -1;
        total += outl;
    }
    if (postlen > 0) {
        if (EVP_EncryptUpdate(ctx, out + total, &outl, post, postlen) != 1)
            return -1;
        total += outl;
    }
    if (EVP_EncryptFinal_ex(ctx, out + total, &outl) != 1)
        return -1;
    total += outl;
    if (total != inlen + postlen)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_SIZE, tag) != 1)
        return -1;
    return 0;
}

/* Decrypt ct(ctlen) into out (ctlen bytes of room) in one EVP update and verify the tag.
 * Returns 0 ok, 1 authentication failure, -1 library failure. */
static int
do_open(EVP_CIPHER_CTX *ctx, const unsigned char *nonce, const unsigned char *aad, int aadlen,
        const unsigned char *ct, int ctlen, unsigned char *out, const unsigned char *tag)
{
    int outl = 0;
    unsigned char tagbuf[TAG_SIZE];
    unsigned char scratch[64];
    memcpy(tagbuf, tag, TAG_SIZE);
    if (EVP_DecryptInit_ex(ctx, NULL, NULL, NULL, nonce) != 1)
        return -1;
    if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_SIZE, tagbuf) != 1)
        return -1;
    if (EVP_DecryptUpdate(ctx, NULL, &outl, aad, aadlen) != 1)
        return -1;
    if (ctlen > 0) {
        if (EVP_DecryptUpdate(ctx, out, &outl, ct, ctlen) != 1 || outl != ctlen)
            return -1;
    }
    /* chacha20-poly1305 emits nothing at Final; the scratch buffer keeps that obvious. */
    if (EVP_DecryptFinal_ex(ctx, scratch, &outl) != 1)
        return 1;
    return 0;
}

/* ---- type ---- */

static PyObject *
FrameCipher_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"key", NULL};
    Py_buffer key;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*:FrameCipher", kwlist, &key))
        return NULL;
    if (key.len != KEY_SIZE) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "FrameCipher key must be %d bytes", KEY_SIZE);
        return NULL;
    }
    FrameCipher *self = (FrameCipher *)type->tp_alloc(type, 0);
    if (self == NULL) {
        PyBuffer_Release(&key);
        return NULL;
    }
    self->enc = EVP_CIPHER_CTX_new();
    self->dec = EVP_CIPHER_CTX_new();
    if (self->enc == NULL || self->dec == NULL
        || EVP_EncryptInit_ex(self->enc, EVP_chacha20_poly1305(), NULL, key.buf, NULL) != 1
        || EVP_DecryptInit_ex(self->dec, EVP_chacha20_poly1305(), NULL, key.buf, NULL) != 1) {
        PyBuffer_Release(&key);
        Py_DECREF(self);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL chacha20-poly1305 context setup failed");
        return NULL;
    }
    PyBuffer_Release(&key);
    return (PyObject *)self;
}

static void
FrameCipher_wipe_ctx(FrameCipher *self)
{
    /* EVP_CIPHER_CTX_free cleanses the key schedule (OPENSSL_clear_free). */
    if (self->enc) {
        EVP_CIPHER_CTX_free(self->enc);
        self->enc = NULL;
    }
    if (self->dec) {
        EVP_CIPHER_CTX_free(self->dec);
        self->dec = NULL;
    }
}

static void
FrameCipher_dealloc(FrameCipher *self)
{
    FrameCipher_wipe_ctx(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
FrameCipher_wipe(FrameCipher *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "FrameCipher busy");
        return NULL;
    }
    FrameCipher_wipe_ctx(self);
    Py_RETURN_NONE;
}

/* seal_frame(counter, frame_type, payload) -> bytes */
static PyObject *
FrameCipher_seal_frame(FrameCipher *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t counter;
    Py_buffer pt;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "seal_frame(counter, frame_type, payload)");
        return NULL;
    }
    if (counter_from(args[0], &counter) < 0)
        return NULL;
    long ftype = PyLong_AsLong(args[1]);
    if (ftype == -1 && PyErr_Occurred())
        return NULL;
    if (ftype < 0 || ftype > 255) {
        PyErr_SetString(PyExc_ValueError, "frame_type must fit in a byte");
        return NULL;
    }
    if (PyObject_GetBuffer(args[2], &pt, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pt.len > MAX_BODY - 1 - TAG_SIZE) {
        PyBuffer_Release(&pt);
        PyErr_SetString(PyExc_ValueError, "payload too large for one frame");
        return NULL;
    }
    Py_ssize_t body = 1 + pt.len + TAG_SIZE;
    PyObject *res = PyBytes_FromStringAndSize(NULL, STREAM_HEADER + body);
    if (res == NULL) {
        PyBuffer_Release(&pt);
        return NULL;
    }
    if (acquire(self) < 0) {
        PyBuffer_Release(&pt);
        Py_DECREF(res);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(res);
    unsigned char nonce[NONCE_SIZE];
    unsigned char tb = (unsigned char)ftype;
    int rc;
    put_be32(out, (uint32_t)body);
    make_nonce(nonce, counter);
    if (pt.len >= GIL_RELEASE_MIN) {
        Py_BEGIN_ALLOW_THREADS
        rc = do_seal(self->enc, nonce, out, STREAM_HEADER, pt.buf, (int)pt.len, &tb, 1,
                     out + STREAM_HEADER, out + STREAM_HEADER + pt.len + 1);
        Py_END_ALLOW_THREADS
    } else {
        rc = do_seal(self->enc, nonce, out, STREAM_HEADER, pt.buf, (int)pt.len, &tb, 1,
                     out + STREAM_HEADER, out + STREAM_HEADER + pt.len + 1);
    }
    self->busy = 0;
    PyBuffer_Release(&pt);
    if (rc != 0) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL seal failed");
        return NULL;
    }
    return res;
}

/* open_frame(counter, frame) -> (frame_type, payload); frame = header || body, whole. */
static PyObject *
FrameCipher_open_frame(FrameCipher *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t counter;
    Py_buffer fr;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "open_frame(counter, frame)");
        return NULL;
    }
    if (counter_from(args[0], &counter) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &fr, PyBUF_SIMPLE) < 0)
        return NULL;
    const unsigned char *p = fr.buf;
    if (fr.len < STREAM_HEADER + 1 + TAG_SIZE || fr.len > STREAM_HEADER + MAX_BODY
        || (Py_ssize_t)get_be32(p) != fr.len - STREAM_HEADER) {
        PyBuffer_Release(&fr);
        PyErr_SetString(PyExc_ValueError, "frame length does not match its header");
        return NULL;
    }
    Py_ssize_t ctlen = fr.len - STREAM_HEADER - TAG_SIZE; /* includes the type byte */
    PyObject *payload = PyBytes_FromStringAndSize(NULL, ctlen - 1);
    if (payload == NULL) {
        PyBuffer_Release(&fr);
        return NULL;
    }
    if (acquire(self) < 0) {
        PyBuffer_Release(&fr);
        Py_DECREF(payload);
        return NULL;
    }
    unsigned char nonce[NONCE_SIZE];
    int rc;
    /* payload || type decrypts straight into the bytes object: its ctlen-1 data bytes
     * plus the trailing NUL every bytes object has (C API guarantee) hold exactly ctlen
     * bytes.  The type byte lands on the NUL, is read, and the NUL is put back. */
    unsigned char one[1];
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(payload);
    unsigned char tb;
    if (ctlen == 1)
        out = one; /* empty payload: b"" is a shared singleton, never write into it */
    make_nonce(nonce, counter);
    if (ctlen >= GIL_RELEASE_MIN) {
        Py_BEGIN_ALLOW_THREADS
        rc = do_open(self->dec, nonce, p, STREAM_HEADER, p + STREAM_HEADER, (int)ctlen, out,
                     p + STREAM_HEADER + ctlen);
        Py_END_ALLOW_THREADS
    } else {
        rc = do_open(self->dec, nonce, p, STREAM_HEADER, p + STREAM_HEADER, (int)ctlen, out,
                     p + STREAM_HEADER + ctlen);
    }
    tb = out[ctlen - 1];
    out[ctlen - 1] = 0;
    self->busy = 0;
    PyBuffer_Release(&fr);
    if (rc != 0) {
        /* The unauthenticated plaintext never leaves this function. */
        OPENSSL_cleanse(out, (size_t)ctlen);
        Py_DECREF(payload);
        if (rc == 1)
            PyErr_SetString(DecryptError, "AEAD authentication failed");
        else
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL open failed");
        return NULL;
    }
    PyObject *t = PyLong_FromLong(tb);
    if (t == NULL) {
        Py_DECREF(payload);
        return NULL;
    }
    PyObject *tup = PyTuple_New(2);
    if (tup == NULL) {
        Py_DECREF(t);
        Py_DECREF(payload);
        return NULL;
    }
    PyTuple_SET_ITEM(tup, 0, t);
    PyTuple_SET_ITEM(tup, 1, payload);
    return tup;
}

/* seal_datagram(counter, payload) -> counter:u64be || ciphertext || tag */
static PyObject *
FrameCipher_seal_datagram(FrameCipher *self, PyObject *const *args, Py_ssize_t nargs)
{
    uint64_t counter;
    Py_buffer pt;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "seal_datagram(counter, payload)");
        return NULL;
    }
    if (counter_from(args[0], &counter) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &pt, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pt.len > MAX_BODY - TAG_SIZE) {
        PyBuffer_Release(&pt);
        PyErr_SetString(PyExc_ValueError, "payload too large for one datagram");
        return NULL;
    }
    PyObject *res = PyBytes_FromStringAndSize(NULL, DGRAM_HEADER + pt.len + TAG_SIZE);
    if (res == NULL) {
        PyBuffer_Release(&pt);
        return NULL;
    }
    if (acquire(self) < 0) {
        PyBuffer_Release(&pt);
        Py_DECREF(res);
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(res);
    unsigned char nonce[NONCE_SIZE];
    put_be64(out, counter);
    make_nonce(nonce, counter);
    int rc = do_seal(self->enc, nonce, out, DGRAM_HEADER, pt.buf, (int)pt.len, NULL, 0,
                     out + DGRAM_HEADER, out + DGRAM_HEADER + pt.len);
    self->busy = 0;
    PyBuffer_Release(&pt);
    if (rc != 0) {
        Py_DECREF(res);
        PyErr_SetString(PyExc_RuntimeError, "OpenSSL seal failed");
        return NULL;
    }
    return res;
}

/* open_datagram(packet) -> payload; the caller has parsed and window-checked the counter. */
static PyObject *
FrameCipher_open_datagram(FrameCipher *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer pk;
    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "open_datagram(packet)");
        return NULL;
    }
    if (PyObject_GetBuffer(args[0], &pk, PyBUF_SIMPLE) < 0)
        return NULL;
    if (pk.len < DGRAM_HEADER + TAG_SIZE || pk.len > DGRAM_HEADER + MAX_BODY) {
        PyBuffer_Release(&pk);
        PyErr_SetString(PyExc_ValueError, "datagram shorter than header and tag");
        return NULL;
    }
    const unsigned char *p = pk.buf;
    Py_ssize_t ctlen = pk.len - DGRAM_HEADER - TAG_SIZE;
    PyObject *payload = PyBytes_FromStringAndSize(NULL, ctlen);
    if (payload == NULL) {
        PyBuffer_Release(&pk);
        return NULL;
    }
    if (acquire(self) < 0) {
        PyBuffer_Release(&pk);
        Py_DECREF(payload);
        return NULL;
    }
    unsigned char nonce[NONCE_SIZE];
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(payload);
    memset(nonce, 0, 4);
    memcpy(nonce + 4, p, DGRAM_HEADER);
    int rc = do_open(self->dec, nonce, p, DGRAM_HEADER, p + DGRAM_HEADER, (int)ctlen, out,
                     p + DGRAM_HEADER + ctlen);
    self->busy = 0;
    PyBuffer_Release(&pk);
    if (rc != 0) {
        OPENSSL_cleanse(out, (size_t)ctlen);
        Py_DECREF(payload);
        if (rc == 1)
            PyErr_SetString(DecryptError, "AEAD authentication failed");
        else
            PyErr_SetString(PyExc_RuntimeError, "OpenSSL open failed");
        return NULL;
    }
    return payload;
}

static PyObject *
FrameCipher_repr(FrameCipher *self)
{
    return PyUnicode_FromString("<FrameCipher chacha20-poly1305 (key hidden)>");
}

static PyMethodDef FrameCipher_methods[] = {
    {"seal_frame", (PyCFunction)(void (*)(void))FrameCipher_seal_frame, METH_FASTCALL,
     "seal_frame(counter, frame_type, payload) -> bytes: one length-prefixed stream frame."},
    {"open_frame", (PyCFunction)(void (*)(void))FrameCipher_open_frame, METH_FASTCALL,
     "open_frame(counter, frame) -> (frame_type, payload); raises DecryptError."},
    {"seal_datagram", (PyCFunction)(void (*)(void))FrameCipher_seal_datagram, METH_FASTCALL,
     "seal_datagram(counter, payload) -> bytes: counter-prefixed datagram."},
    {"open_datagram", (PyCFunction)(void (*)(void))FrameCipher_open_datagram, METH_FASTCALL,
     "open_datagram(packet) -> payload; raises DecryptError."},
    {"wipe", (PyCFunction)FrameCipher_wipe, METH_NOARGS,
     "Free both EVP contexts (cleansing the key schedule); the object is then unusable."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject FrameCipherType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qudag_core._aead.FrameCipher",
    .tp_basicsize = sizeof(FrameCipher),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FrameCipher(key): ChaCha20-Poly1305 encrypt and decrypt EVP contexts for one key.",
    .tp_new = FrameCipher_new,
    .tp_dealloc = (destructor)FrameCipher_dealloc,
    .tp_repr = (reprfunc)FrameCipher_repr,
    .tp_methods = FrameCipher_methods,
};

static struct PyModuleDef aeadmodule = {
    PyModuleDef_HEAD_INIT,
    .m_name = "qudag_core._aead",
    .m_doc = "OpenSSL ChaCha20-Poly1305 frame kernel for qudag_core.channel.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__aead(void)
{
    if (PyType_Ready(&FrameCipherType) < 0)
        return NULL;
    PyObject *errors = PyImport_ImportModule("qudag_core.errors");
    if (errors == NULL)
        return NULL;
    DecryptError = PyObject_GetAttrString(errors, "DecryptError");
    Py_DECREF(errors);
    if (DecryptError == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&aeadmodule);
    if (m == NULL)
        return NULL;
    Py_INCREF(&FrameCipherType);
    if (PyModule_AddObject(m, "FrameCipher", (PyObject *)&FrameCipherType) < 0
        || PyModule_AddIntConstant(m, "TAG_SIZE", TAG_SIZE) < 0
        || PyModule_AddIntConstant(m, "STREAM_HEADER_SIZE", STREAM_HEADER) < 0
        || PyModule_AddIntConstant(m, "DATAGRAM_HEADER_SIZE", DGRAM_HEADER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
