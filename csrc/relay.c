/*
 * qudag_core._relay: one onion layer over a batch of fixed-size cells, in place.
 *
 * Why C: every relay peels (and every client adds) one layer per cell per hop, ~1 kB
 * each.  The cipher work is cheap with AES-NI/PCLMUL; what dominates in Python is the
 * per-call overhead of creating cipher objects (CTR needs a fresh IV per cell, GMAC a
 * fresh hash).  Here one Python call handles a batch of n cells, and the EVP contexts are
 * created once per layer object.  No cipher is implemented here: AES-256-ECB (EVP) gives
 * the tag block cipher, the recognition value and the CTR keystream (over counter blocks,
 * one call per CHUNK-cell chunk, counters built with 64-bit stores), and GHASH is
 * libcrypto's GCM128 (CLMUL) used as GMAC with EVP ECB as its block function (E(J0) of the
 * fixed IV cached, so the per-cell reset costs no AES call).  Adding a layer also batches
 * a chunk's LRW blocks into one ECB call (its chain value is the plaintext-side tag, so
 * the tweaks do not wait for AES_Kb); peeling cannot (S := AES^-1_Kb output).  Measured
 * breakdown and the rejected stitched-GCM variant: docs/onion.md §2.4.
 *
 * Construction (docs/onion.md §2, after Tor proposal 359 "Counter Galois Onion"): the
 * relay payload of each cell is T (16-byte tag) || C (the rest).  With per-layer keys
 * Kb (block), Kh (hash), Kc (counter), Kr (recognition) and a chain value S:
 *
 *   add layer ("encrypt"):  h  = GMAC_Kh(S || C)          (GHASH under a fixed IV)
 *                           T' = AES_Kb(T ^ h) ^ h         (LRW tweakable block cipher)
 *                           C' = C ^ AES-CTR_Kc(iv = T')
 *   peel layer ("decrypt"): C  = C' ^ AES-CTR_Kc(iv = T')
 *                           T  = AES^-1_Kb(T' ^ h) ^ h,  h = GMAC_Kh(S || C)
 *   both: recognised := (T == N); S := T; N := AES_Kr(S)
 *   originate: before adding the layer, T := N (the value the far end will expect).
 *
 * Any change to T' or C' randomises T (and, through S, every later cell on this layer).
 *
 * Bounds: the buffer must be writable, C-contiguous, a multiple of cell_size; the layer
 * covers bytes [offset, cell_size) of each cell, 17 to 65536 bytes (the keystream scratch
 * is CHUNK cells of that, allocated once per layer).  A libcrypto failure zeroes the whole
 * buffer and raises RuntimeError (no half-processed cell or parked chain value survives).
 * The GIL is held: a
 * layer object carries mutable chain state and must not be used from two threads.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/modes.h>

#define KEY_LEN 32
#define BLK 16
#ifndef CHUNK
#define CHUNK 8 /* cells per keystream call (8 KB scratch per layer; 8, 16 and 64 measured the same) */
#endif

/* GHASH's block function: EVP ECB under Kh, with E_Kh(J0) for the fixed IV cached.  With
 * only AAD processed, CRYPTO_gcm128 calls the block function once per setiv, always on the
 * same J0 = 0^96 || 1; answering that from the cache saves an EVP call (~20 ns) per cell.
 * Any other input (H = E(0) at creation) goes to EVP. */
typedef struct {
    EVP_CIPHER_CTX *ecb;
    int have_ek0;
    unsigned char j0[16];
    unsigned char ek0[16];
} GhashKey;

typedef struct {
    PyObject_HEAD
    EVP_CIPHER_CTX *ecb_enc;
    EVP_CIPHER_CTX *ecb_dec;
    EVP_CIPHER_CTX *recog;
    EVP_CIPHER_CTX *ctr;   /* AES-256-ECB under Kc over counter blocks: CTR, batched */
    GhashKey gkey;          /* AES-256-ECB under Kh (+ cached E(J0)): ghash's block function */
    GCM128_CONTEXT *ghash;  /* libcrypto's GCM (CLMUL GHASH), used for GMAC only */
    unsigned char *scratch; /* CHUNK cells of keystream */
    Py_ssize_t nblocks;     /* counter blocks per cell */
    Py_ssize_t cell_size;
    Py_ssize_t offset;
    unsigned char chain[BLK];
    unsigned char expect[BLK];
} RelayLayer;

static const unsigned char ZERO_IV[12] = {0};

static void layer_free_ctx(RelayLayer *self) {
    EVP_CIPHER_CTX_free(self->ecb_enc); self->ecb_enc = NULL;
    EVP_CIPHER_CTX_free(self->ecb_dec); self->ecb_dec = NULL;
    EVP_CIPHER_CTX_free(self->recog);   self->recog = NULL;
    EVP_CIPHER_CTX_free(self->ctr);     self->ctr = NULL;
    if (self->ghash) { CRYPTO_gcm128_release(self->ghash); self->ghash = NULL; }
    EVP_CIPHER_CTX_free(self->gkey.ecb); self->gkey.ecb = NULL;
    OPENSSL_cleanse(self->gkey.ek0, BLK);
    self->gkey.have_ek0 = 0;
    if (self->scratch) {
        OPENSSL_cleanse(self->scratch, (size_t)(CHUNK * self->nblocks * BLK));
        PyMem_Free(self->scratch);
        self->scratch = NULL;
    }
}

static void RelayLayer_dealloc(RelayLayer *self) {
    layer_free_ctx(self);
    OPENSSL_cleanse(self->chain, BLK);
    OPENSSL_cleanse(self->expect, BLK);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int ecb1(EVP_CIPHER_CTX *ctx, const unsigned char in[BLK], unsigned char out[BLK]) {
    int outl = 0;
    if (EVP_CipherUpdate(ctx, out, &outl, in, BLK) != 1 || outl != BLK) return -1;
    return 0;
}

static int update_expect(RelayLayer *self) {
    return ecb1(self->recog, self->chain, self->expect);
}

/* block128_f over an EVP ECB context (see GhashKey) */
static void evp_block(const unsigned char in[16], unsigned char out[16], const void *key) {
    const GhashKey *gk = key;
    int outl = 0;
    if (gk->have_ek0 && memcmp(in, gk->j0, BLK) == 0) {
        memcpy(out, gk->ek0, BLK);
        return;
    }
    (void)EVP_EncryptUpdate(gk->ecb, out, &outl, in, BLK);
}

/* h = GMAC_Kh(S || C) with the fixed all-zero 96-bit IV, i.e. GHASH_H(S || C) ^ E_Kh(J0).
 * The low-level GCM128 API avoids the EVP re-init cost (~150 ns) per cell.  `slot` is the
 * cell's 16-byte tag field, followed by C: the caller has saved the tag, and S is written
 * there so that S || C is hashed in one contiguous call (one GHASH pass, no extra gmult). */
static int gmac_tag(RelayLayer *self, unsigned char *slot, int clen, unsigned char h[BLK]) {
    memcpy(slot, self->chain, BLK);
    CRYPTO_gcm128_setiv(self->ghash, ZERO_IV, sizeof ZERO_IV);
    if (CRYPTO_gcm128_aad(self->ghash, slot, (size_t)clen + BLK) != 0) return -1;
    CRYPTO_gcm128_tag(self->ghash, h, BLK);
    return 0;
}

static inline uint64_t load_be64(const unsigned char *p) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
#else
    uint64_t v = 0;
    for (int k = 0; k < 8; k++) v = (v << 8) | p[k];
    return v;
#endif
}

static inline void store_be64(unsigned char *p, uint64_t v) {
#if defined(__GNUC__) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
#else
    for (int k = 7; k >= 0; k--) { p[k] = (unsigned char)v; v >>= 8; }
#endif
}

/* Fill the scratch with the AES-CTR keystream (128-bit big-endian counter, as OpenSSL's
 * and cryptography's CTR mode) for cells [0, m) of a chunk, from their ivs, with ONE ECB
 * call: a per-cell CTR re-init costs more than the keystream itself. */
static int keystream(RelayLayer *self, const unsigned char *ivs, Py_ssize_t m) {
    unsigned char *ks = self->scratch;
    const Py_ssize_t nb = self->nblocks;
    int outl = 0;
    for (Py_ssize_t i = 0; i < m; i++) {
        uint64_t hi = load_be64(ivs + i * BLK), lo = load_be64(ivs + i * BLK + 8);
        unsigned char *d = ks + i * nb * BLK;
        for (Py_ssize_t b = 0; b < nb; b++, d += BLK) {
            store_be64(d, hi);
            store_be64(d + 8, lo);
            if (++lo == 0) hi++;
        }
    }
    int len = (int)(m * nb * BLK);
    if (EVP_EncryptUpdate(self->ctr, ks, &outl, ks, len) != 1 || outl != len) return -1;
    return 0;
}

static void xor_into(unsigned char *restrict dst, const unsigned char *restrict src, int len) {
    int k = 0;
    for (; k + 8 <= len; k += 8) {
        uint64_t a, b;
        memcpy(&a, dst + k, 8);
        memcpy(&b, src + k, 8);
        a ^= b;
        memcpy(dst + k, &a, 8);
    }
    for (; k < len; k++) dst[k] ^= src[k];
}

/* out = a ^ b over one block, as two 64-bit words (out may be a) */
static inline void xor16(unsigned char *out, const unsigned char *a, const unsigned char *b) {
    uint64_t a0, a1, b0, b1;
    memcpy(&a0, a, 8); memcpy(&a1, a + 8, 8);
    memcpy(&b0, b, 8); memcpy(&b1, b + 8, 8);
    a0 ^= b0; a1 ^= b1;
    memcpy(out, &a0, 8); memcpy(out + 8, &a1, 8);
}

static EVP_CIPHER_CTX *mk(const EVP_CIPHER *cipher, const unsigned char *key, int enc) {
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    if (ctx == NULL) return NULL;
    if (EVP_CipherInit_ex(ctx, cipher, NULL, key, NULL, enc) != 1) {
        EVP_CIPHER_CTX_free(ctx);
        return NULL;
    }
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    return ctx;
}

static int RelayLayer_init(RelayLayer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"block_key", "hash_key", "ctr_key", "recog_key", "chain",
                             "cell_size", "offset", NULL};
    Py_buffer kb = {0}, kh = {0}, kc = {0}, kr = {0}, s0 = {0};
    Py_ssize_t cell_size = 0, offset = 0;
    int rc = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*y*y*y*nn", kwlist, &kb, &kh, &kc, &kr, &s0,
                                     &cell_size, &offset))
        return -1;
    if (kb.len != KEY_LEN || kh.len != KEY_LEN || kc.len != KEY_LEN || kr.len != KEY_LEN) {
        PyErr_SetString(PyExc_ValueError, "relay layer keys must be 32 bytes each");
        goto done;
    }
    if (s0.len != BLK) {
        PyErr_SetString(PyExc_ValueError, "chain value must be 16 bytes");
        goto done;
    }
    if (offset < 0 || cell_size <= 0 || cell_size - offset < BLK + 1 || cell_size - offset > (1 << 16)) {
        PyErr_SetString(PyExc_ValueError, "bad cell_size/offset");
        goto done;
    }
    layer_free_ctx(self);
    self->ecb_enc = mk(EVP_aes_256_ecb(), kb.buf, 1);
    self->ecb_dec = mk(EVP_aes_256_ecb(), kb.buf, 0);
    self->recog = mk(EVP_aes_256_ecb(), kr.buf, 1);
    self->ctr = mk(EVP_aes_256_ecb(), kc.buf, 1);
    self->nblocks = (cell_size - offset - BLK + BLK - 1) / BLK;
    self->scratch = PyMem_Malloc((size_t)(CHUNK * self->nblocks * BLK));
    self->gkey.ecb = mk(EVP_aes_256_ecb(), kh.buf, 1);
    if (self->gkey.ecb != NULL) {
        memset(self->gkey.j0, 0, BLK);
        self->gkey.j0[BLK - 1] = 1;  /* J0 for the 96-bit all-zero IV */
        if (ecb1(self->gkey.ecb, self->gkey.j0, self->gkey.ek0) == 0) {
            self->ghash = CRYPTO_gcm128_new(&self->gkey, evp_block);
            self->gkey.have_ek0 = 1;
        }
    }
    if (!self->ecb_enc || !self->ecb_dec || !self->recog || !self->ctr || !self->gkey.ecb || !self->ghash || !self->scratch) {
        layer_free_ctx(self);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto context setup failed");
        goto done;
    }
    self->cell_size = cell_size;
    self->offset = offset;
    memcpy(self->chain, s0.buf, BLK);
    if (update_expect(self) != 0) {
        layer_free_ctx(self);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failure");
        goto done;
    }
    rc = 0;
done:
    if (kb.obj) PyBuffer_Release(&kb);
    if (kh.obj) PyBuffer_Release(&kh);
    if (kc.obj) PyBuffer_Release(&kc);
    if (kr.obj) PyBuffer_Release(&kr);
    if (s0.obj) PyBuffer_Release(&s0);
    return rc;
}

/* Validate the batch buffer; on success the caller must PyBuffer_Release(view). */
static int get_batch(RelayLayer *self, PyObject *obj, Py_buffer *view, Py_ssize_t *n) {
    if (self->ghash == NULL) {
        PyErr_SetString(PyExc_ValueError, "relay layer not initialised");
        return -1;
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) != 0) return -1;
    if (view->len % self->cell_size != 0) {
        PyBuffer_Release(view);
        PyErr_SetString(PyExc_ValueError, "buffer length is not a multiple of cell_size");
        return -1;
    }
    *n = view->len / self->cell_size;
    return 0;
}

static PyObject *RelayLayer_encrypt(RelayLayer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"buf", "originate", NULL};
    PyObject *obj;
    int originate = 0;
    Py_buffer view;
    Py_ssize_t n, i;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p", kwlist, &obj, &originate)) return NULL;
    if (get_batch(self, obj, &view, &n) != 0) return NULL;
    const int clen = (int)(self->cell_size - self->offset - BLK);
    unsigned char *base = view.buf;
    unsigned char ivs[CHUNK * BLK];
    unsigned char hs[CHUNK * BLK];
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {
        Py_ssize_t m = n - c0 < CHUNK ? n - c0 : CHUNK;
        int outl = 0;
        /* pass 1 (serial through the chain): the tweaks.  The chain moves to the
         * plaintext-side tag T, known before AES_Kb runs, so h_i does not wait for T'_{i-1}
         * and the chunk's LRW block calls collapse into one (ivs holds T ^ h meanwhile). */
        for (i = 0; i < m; i++) {
            unsigned char *t = base + (c0 + i) * self->cell_size + self->offset;
            unsigned char tag[BLK];
            memcpy(tag, originate ? self->expect : t, BLK);
            if (gmac_tag(self, t, clen, hs + i * BLK) != 0) goto fail;
            xor16(ivs + i * BLK, tag, hs + i * BLK);
            memcpy(self->chain, tag, BLK);
            /* only an originator needs N cell by cell; otherwise once, at the end */
            if (originate && update_expect(self) != 0) goto fail;
        }
        /* T'_i = AES_Kb(T_i ^ h_i) ^ h_i for the whole chunk, in place in ivs */
        if (EVP_EncryptUpdate(self->ecb_enc, ivs, &outl, ivs, (int)(m * BLK)) != 1 || outl != (int)(m * BLK))
            goto fail;
        for (i = 0; i < m; i++) {
            xor16(ivs + i * BLK, ivs + i * BLK, hs + i * BLK);
            memcpy(base + (c0 + i) * self->cell_size + self->offset, ivs + i * BLK, BLK);
        }
        /* pass 2: the bulk, CTR under each new tag, keystream in one call */
        if (keystream(self, ivs, m) != 0) goto fail;
        for (i = 0; i < m; i++)
            xor_into(base + (c0 + i) * self->cell_size + self->offset + BLK,
                     self->scratch + i * self->nblocks * BLK, clen);
    }
    if (!originate && n > 0 && update_expect(self) != 0) goto fail;
    PyBuffer_Release(&view);
    Py_RETURN_NONE;
fail:
    /* half-processed cells (and the chain values parked in tag fields) never leave */
    OPENSSL_cleanse(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    PyErr_SetString(PyExc_RuntimeError, "libcrypto failure in relay layer");
    return NULL;
}

static PyObject *RelayLayer_decrypt(RelayLayer *self, PyObject *obj) {
    Py_buffer view;
    Py_ssize_t n, i;
    if (get_batch(self, obj, &view, &n) != 0) return NULL;
    PyObject *flags = PyBytes_FromStringAndSize(NULL, n);
    if (flags == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    unsigned char *fl = (unsigned char *)PyBytes_AS_STRING(flags);
    const int clen = (int)(self->cell_size - self->offset - BLK);
    unsigned char *base = view.buf;
    unsigned char ivs[CHUNK * BLK];
    unsigned char tags[CHUNK * BLK];
    for (Py_ssize_t c0 = 0; c0 < n; c0 += CHUNK) {
        Py_ssize_t m = n - c0 < CHUNK ? n - c0 : CHUNK;
        int outl = 0;
        /* the incoming tags are the CTR ivs: all keystream of the chunk in one call */
        for (i = 0; i < m; i++)
            memcpy(ivs + i * BLK, base + (c0 + i) * self->cell_size + self->offset, BLK);
        if (keystream(self, ivs, m) != 0) goto fail;
        for (i = 0; i < m; i++) {
            unsigned char *t = base + (c0 + i) * self->cell_size + self->offset;
            unsigned char *c = t + BLK;
            unsigned char h[BLK], x[BLK];
            xor_into(c, self->scratch + i * self->nblocks * BLK, clen);
            /* T' is kept in ivs; the tag field is free until T is written */
            if (gmac_tag(self, t, clen, h) != 0) goto fail;
            xor16(x, ivs + i * BLK, h);
            if (ecb1(self->ecb_dec, x, t) != 0) goto fail;
            xor16(t, t, h);
            memcpy(tags + i * BLK, t, BLK);
            memcpy(self->chain, t, BLK);
        }
        /* recognition: cell i must carry N_i = AES_Kr(T_{i-1}) (N_0 = the stored value);
         * the N_i of the whole chunk come from one ECB call over the recovered tags */
        fl[c0] = CRYPTO_memcmp(tags, self->expect, BLK) == 0 ? 1 : 0;
        if (EVP_EncryptUpdate(self->recog, ivs, &outl, tags, (int)(m * BLK)) != 1 || outl != (int)(m * BLK))
            goto fail;
        for (i = 1; i < m; i++)
            fl[c0 + i] = CRYPTO_memcmp(tags + i * BLK, ivs + (i - 1) * BLK, BLK) == 0 ? 1 : 0;
        memcpy(self->expect, ivs + (m - 1) * BLK, BLK);
    }
    PyBuffer_Release(&view);
    return flags;
fail:
    OPENSSL_cleanse(view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    Py_DECREF(flags);
    PyErr_SetString(PyExc_RuntimeError, "libcrypto failure in relay layer");
    return NULL;
}

static PyObject *RelayLayer_repr(RelayLayer *self) {
    return PyUnicode_FromFormat("<RelayLayer cell_size=%zd offset=%zd>", self->cell_size, self->offset);
}

static PyMethodDef RelayLayer_methods[] = {
    {"encrypt", (PyCFunction)(void (*)(void))RelayLayer_encrypt, METH_VARARGS | METH_KEYWORDS,
     "encrypt(buf, originate=False) -> None: add this layer to every cell of buf in place."},
    {"decrypt", (PyCFunction)RelayLayer_decrypt, METH_O,
     "decrypt(buf) -> bytes: peel this layer in place; one flag byte per cell, 1 = recognised."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RelayLayerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "qudag_core._relay.RelayLayer",
    .tp_basicsize = sizeof(RelayLayer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One onion layer (one hop, one direction) with its EVP contexts.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)RelayLayer_init,
    .tp_dealloc = (destructor)RelayLayer_dealloc,
    .tp_methods = RelayLayer_methods,
    .tp_repr = (reprfunc)RelayLayer_repr,
};

static struct PyModuleDef relaymodule = {
    PyModuleDef_HEAD_INIT, "qudag_core._relay",
    "Batched in-place onion layer crypto (AES-ECB/CTR/GMAC via libcrypto).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__relay(void) {
    if (PyType_Ready(&RelayLayerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&relaymodule);
    if (m == NULL) return NULL;
    Py_INCREF(&RelayLayerType);
    if (PyModule_AddObject(m, "RelayLayer", (PyObject *)&RelayLayerType) < 0) {
        Py_DECREF(&RelayLayerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
