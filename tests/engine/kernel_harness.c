/* A test harness for the engine's C kernels (engine/native_matmul.c, native_attention.c and
 * native_forward.c, linked in): small deterministic inputs, each kernel result checked against
 * a plain scalar reference computed here in double precision; the fused forward on a small
 * random model, checked for the same bits alone and batched, on one thread or more, through
 * its one-call and its per-layer entry points, and for refusing bad rows. test_engine_kernels_sanitized.py
 * builds it with AddressSanitizer and UndefinedBehaviorSanitizer, so an out-of-bounds access or
 * undefined behaviour in a kernel stops it with a report.
 *
 * Exit status 0 when every check passed, 1 at the first mismatch (printed on stderr).
 * -DY_SHORT_BY=1 plants a bug (the matmul's output buffer one element short), so the test can
 * show that an overrun inside a kernel is caught.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int llmtop_block_matmul(int bits, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm,
                        int n, int k, const uint16_t *x, int rows, uint16_t *y);
int llmtop_decode_attention(const float *q_and_k, const float *v, uint16_t *k_cache,
                            uint16_t *v_cache, const int64_t *slot, const int64_t *pos, int rows,
                            int n_slots, int h, int hkv, int d, int max_len, float scale,
                            float *out);

/* native_forward.c's structs (and native_kernels.h's llmtop_linear), mirrored as ctypes does */
typedef struct {
    int bits, n, k;
    const uint8_t *codes;
    const uint16_t *scale, *offset;
} llmtop_linear;
typedef struct {
    const float *attn_norm, *ffn_norm;
    llmtop_linear wqkv, wo, w13, w2;
} llmtop_layer;
typedef struct {
    int n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab;
    float eps;
    int rope_len;
    const float *rope, *norm;
    const llmtop_layer *layers;
    const llmtop_linear *output;
} llmtop_model;
typedef struct {
    uint16_t *k, *v;
    int n_slots, max_len;
} llmtop_cache;
int llmtop_forward_decode(const llmtop_model *m, const llmtop_cache *c, int rows, float *x,
                          const int64_t *slot, const int64_t *pos, float *logits, int threads);
int llmtop_layer_in(const llmtop_model *m, const llmtop_cache *c, int layer, int rows, float *x,
                    const int64_t *slot, const int64_t *pos, float *qkv);
int llmtop_attend(const llmtop_model *m, const llmtop_cache *c, int layer, int rows,
                  const float *qkv, const int64_t *slot, const int64_t *pos, float *o);
int llmtop_layer_out(const llmtop_model *m, int layer, int rows, float *x, const float *o);
int llmtop_logits(const llmtop_model *m, int rows, float *x, float *logits);
size_t llmtop_sample_scratch_bytes(int vocab);
int llmtop_sample_rows(const float *logits, int rows, int vocab, const float *temperature,
                       const int32_t *top_k, const float *top_p, const double *u, void *scratch,
                       int64_t *tokens);

#ifndef Y_SHORT_BY
#define Y_SHORT_BY 0
#endif

static int failures = 0;

#define CHECK(cond, ...)                                                   \
    do {                                                                   \
        if (!(cond)) {                                                     \
            fprintf(stderr, "%s:%d: check failed: ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                  \
            fprintf(stderr, "\n");                                         \
            failures++;                                                    \
            return;                                                        \
        }                                                                  \
    } while (0)

/* --- deterministic inputs and number formats --------------------------------------------- */

static uint32_t rng = 2463534242u;

static uint32_t next_u32(void) { /* xorshift32 */
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static float uniform(float lo, float hi) { /* [lo, hi) */
    return lo + (hi - lo) * (float)(next_u32() >> 8) / 16777216.0f;
}

static uint16_t to_f16(float x) { return _cvtss_sh(x, _MM_FROUND_TO_NEAREST_INT); }
static float from_f16(uint16_t h) { return _cvtsh_ss(h); }

static uint16_t to_bf16(float x) { /* round to nearest even, as torch */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static float from_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static void *alloc(size_t bytes) { /* exact size, so ASan sees any byte past the end */
    void *p = malloc(bytes ? bytes : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

/* --- block matmul: y = x @ W.T, W = d * u + m per block of 32 inputs ---------------------- */

enum { QK = 32, NG = 16 };

struct weights {
    int bits, n, k;
    uint8_t *u;       /* codes [n, k] in plain order */
    uint16_t *d, *m;  /* fp16 [n, k / 32] */
    uint8_t *packed;  /* codes in the kernel's order */
    uint16_t *pd, *pm; /* fp16 [n / 16, k / 32, 16] */
};

/* The kernel's layout (block_matmul.pack_codes): per 16 columns and block of 32 inputs, 8
 * vectors of 4 inputs x 16 columns (4 bytes per column); with 4 bits, vectors 4-7 go into the
 * high nibbles of vectors 0-3. */
static void pack(struct weights *w) {
    const int nb = w->k / QK, vbytes = w->bits * QK * NG / 8;
    memset(w->packed, 0, (size_t)(w->n / NG) * nb * vbytes);
    for (int col = 0; col < w->n; col++)
        for (int in = 0; in < w->k; in++) {
            const int g = col / NG, c = col % NG, b = in / QK, v = in % QK / 4, i = in % 4;
            uint8_t *block = w->packed + ((size_t)g * nb + b) * vbytes;
            const uint8_t code = w->u[(size_t)col * w->k + in];
            if (w->bits == 8)
                block[v * 64 + c * 4 + i] = code;
            else
                block[v % 4 * 64 + c * 4 + i] |= (uint8_t)(v < 4 ? code : code << 4);
        }
    for (int col = 0; col < w->n; col++)
        for (int b = 0; b < nb; b++) {
            const size_t at = ((size_t)(col / NG) * nb + b) * NG + col % NG;
            w->pd[at] = w->d[(size_t)col * nb + b];
            w->pm[at] = w->m[(size_t)col * nb + b];
        }
}

static struct weights make_weights(int bits, int n, int k) {
    struct weights w = {.bits = bits, .n = n, .k = k};
    const int nb = k / QK;
    w.u = alloc((size_t)n * k);
    w.d = alloc(sizeof(uint16_t) * n * nb);
    w.m = alloc(sizeof(uint16_t) * n * nb);
    w.packed = alloc((size_t)n * k * bits / 8);
    w.pd = alloc(sizeof(uint16_t) * n * nb);
    w.pm = alloc(sizeof(uint16_t) * n * nb);
    for (size_t i = 0; i < (size_t)n * k; i++) w.u[i] = (uint8_t)(next_u32() % (1u << bits));
    for (size_t i = 0; i < (size_t)n * nb; i++) {
        w.d[i] = to_f16(uniform(0.001f, 0.05f));
        w.m[i] = to_f16(uniform(-0.5f, 0.1f));
    }
    pack(&w);
    return w;
}

static void free_weights(struct weights *w) {
    free(w->u), free(w->d), free(w->m), free(w->packed), free(w->pd), free(w->pm);
}

/* The exact product in double, and a bound on the kernel's error: the activations' 15-bit
 * step (a full step per block, twice the rounding), the bf16 output (2^-8 relative, twice its
 * rounding) and float accumulation. */
static void reference_matmul(const struct weights *w, const uint16_t *x, int row, int col,
                             double *exact, double *bound) {
    const int nb = w->k / QK;
    double sum = 0, step_err = 0, magnitude = 0;
    for (int b = 0; b < nb; b++) {
        const double d = from_f16(w->d[(size_t)col * nb + b]), m = from_f16(w->m[(size_t)col * nb + b]);
        double amax = 0, wsum = 0;
        for (int i = 0; i < QK; i++) {
            const int in = b * QK + i;
            const double xi = from_bf16(x[(size_t)row * w->k + in]);
            const double wi = d * w->u[(size_t)col * w->k + in] + m;
            sum += wi * xi;
            magnitude += fabs(wi * xi);
            wsum += fabs(wi);
            amax = fmax(amax, fabs(xi));
        }
        step_err += wsum * amax / 16383.0;
    }
    *exact = sum;
    *bound = step_err + fabs(sum) * 0x1p-8 + magnitude * 1e-5 + 1e-6;
}

static void check_matmul(int bits, int n, int k, int rows) {
    struct weights w = make_weights(bits, n, k);
    uint16_t *x = alloc(sizeof(uint16_t) * rows * k);
    uint16_t *y = alloc(sizeof(uint16_t) * ((size_t)rows * n - Y_SHORT_BY));
    uint16_t *alone = alloc(sizeof(uint16_t) * n);
    for (size_t i = 0; i < (size_t)rows * k; i++) x[i] = to_bf16(uniform(-3.0f, 3.0f));
    for (int i = 0; i < QK && rows > 1; i++) x[(size_t)k + i] = 0; /* row 1, block 0: all zero */
    if (rows > 2) x[2 * (size_t)k + 5] = to_bf16(1000.0f);          /* one large value */
    int rc = llmtop_block_matmul(bits, w.packed, w.pd, w.pm, n, k, x, rows, y);
    if (rc != 0) {
        fprintf(stderr, "block matmul returned %d (bits %d, %d rows)\n", rc, bits, rows);
        failures++;
        goto done;
    }
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < n; c++) {
            double exact, bound;
            reference_matmul(&w, x, r, c, &exact, &bound);
            const double got = from_bf16(y[(size_t)r * n + c]);
            if (!(fabs(got - exact) <= bound)) {
                fprintf(stderr, "block matmul bits %d rows %d: y[%d][%d] = %.6g, exact %.6g (bound %.3g)\n",
                        bits, rows, r, c, got, exact, bound);
                failures++;
                goto done;
            }
        }
        /* the same bits for the row alone: one_row() against tile_pairs() */
        rc = llmtop_block_matmul(bits, w.packed, w.pd, w.pm, n, k, x + (size_t)r * k, 1, alone);
        if (rc != 0 || memcmp(alone, y + (size_t)r * n, sizeof(uint16_t) * n) != 0) {
            fprintf(stderr, "block matmul bits %d rows %d: row %d alone differs\n", bits, rows, r);
            failures++;
            goto done;
        }
    }
done:
    free(x), free(y), free(alone), free_weights(&w);
}

static void check_matmul_refuses_bad_shapes(void) {
    struct weights w = make_weights(4, 32, 64);
    uint16_t x[64] = {0}, y[32];
    CHECK(llmtop_block_matmul(5, w.packed, w.pd, w.pm, 32, 64, x, 1, y) == -1, "bits 5");
    CHECK(llmtop_block_matmul(4, w.packed, w.pd, w.pm, 24, 64, x, 1, y) == -1, "n 24");
    CHECK(llmtop_block_matmul(4, w.packed, w.pd, w.pm, 32, 48, x, 1, y) == -1, "k 48");
    CHECK(llmtop_block_matmul(4, w.packed, w.pd, w.pm, 32, 64, x, -1, y) == -1, "rows -1");
    CHECK(llmtop_block_matmul(4, w.packed, w.pd, w.pm, 32, 64, x, 0, y) == 0, "rows 0");
    free_weights(&w);
}

/* --- decode attention ---------------------------------------------------------------------- */

struct attention_case {
    int rows, h, hkv, d, n_slots, max_len;
    int64_t slot[4], pos[4];
};

static void check_attention(const struct attention_case *t) {
    const int rows = t->rows, h = t->h, hkv = t->hkv, d = t->d, g = h / hkv;
    const size_t cache = (size_t)t->n_slots * hkv * t->max_len * d;
    float *qk = alloc(sizeof(float) * rows * (h + hkv) * d);
    float *v = alloc(sizeof(float) * rows * hkv * d);
    uint16_t *kc = alloc(sizeof(uint16_t) * cache), *vc = alloc(sizeof(uint16_t) * cache);
    uint16_t *kc0 = alloc(sizeof(uint16_t) * cache), *vc0 = alloc(sizeof(uint16_t) * cache);
    float *out = alloc(sizeof(float) * rows * h * d);
    double *p = alloc(sizeof(double) * t->max_len);
    for (size_t i = 0; i < (size_t)rows * (h + hkv) * d; i++) qk[i] = uniform(-2.0f, 2.0f);
    for (size_t i = 0; i < (size_t)rows * hkv * d; i++) v[i] = uniform(-1.0f, 1.0f);
    for (size_t i = 0; i < cache; i++) {
        kc[i] = kc0[i] = to_f16(uniform(-2.0f, 2.0f));
        vc[i] = vc0[i] = to_f16(uniform(-1.0f, 1.0f));
    }
    const float scale = 1.0f / sqrtf((float)d);
    int rc = llmtop_decode_attention(qk, v, kc, vc, t->slot, t->pos, rows, t->n_slots, h, hkv, d,
                                     t->max_len, scale, out);
    if (rc != 0) {
        fprintf(stderr, "decode attention returned %d (d %d, %d rows)\n", rc, d, rows);
        failures++;
        goto done;
    }
    /* the cache: each row's new key and value at (slot, pos), rounded to fp16; nothing else */
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < hkv; j++)
            for (int c = 0; c < d; c++) {
                const size_t at = (((size_t)t->slot[r] * hkv + j) * t->max_len + t->pos[r]) * d + c;
                kc0[at] = to_f16(qk[((size_t)r * (h + hkv) + h + j) * d + c]);
                vc0[at] = to_f16(v[((size_t)r * hkv + j) * d + c]);
            }
    if (memcmp(kc, kc0, sizeof(uint16_t) * cache) || memcmp(vc, vc0, sizeof(uint16_t) * cache)) {
        fprintf(stderr, "decode attention d %d: the cache holds other values than the new rows\n", d);
        failures++;
        goto done;
    }
    /* out = softmax(scale q . k) v over positions 0..pos of the row's slot */
    for (int r = 0; r < rows; r++)
        for (int i = 0; i < h; i++) {
            const int j = i / g, len = (int)t->pos[r] + 1;
            const float *q = qk + ((size_t)r * (h + hkv) + i) * d;
            const size_t base = ((size_t)t->slot[r] * hkv + j) * t->max_len * d;
            double top = -INFINITY, total = 0;
            for (int l = 0; l < len; l++) {
                double s = 0;
                for (int c = 0; c < d; c++) s += (double)q[c] * from_f16(kc[base + (size_t)l * d + c]);
                p[l] = s * scale;
                top = fmax(top, p[l]);
            }
            for (int l = 0; l < len; l++) total += p[l] = exp(p[l] - top);
            for (int c = 0; c < d; c++) {
                double exact = 0;
                for (int l = 0; l < len; l++) exact += p[l] / total * from_f16(vc[base + (size_t)l * d + c]);
                const double got = out[((size_t)r * h + i) * d + c];
                if (!(fabs(got - exact) <= 1e-5 + 1e-5 * fabs(exact))) {
                    fprintf(stderr, "decode attention d %d: out[%d][%d][%d] = %.8g, exact %.8g\n",
                            d, r, i, c, got, exact);
                    failures++;
                    goto done;
                }
            }
        }
done:
    free(qk), free(v), free(kc), free(vc), free(kc0), free(vc0), free(out), free(p);
}

static void check_attention_refuses_bad_input(void) {
    enum { S = 2, HKV = 2, L = 8, D = 32, H = 4 };
    float qk[(H + HKV) * D] = {0}, v[HKV * D] = {0}, out[H * D];
    uint16_t *kc = alloc(sizeof(uint16_t) * S * HKV * L * D), *vc = alloc(sizeof(uint16_t) * S * HKV * L * D);
    int64_t ok = 0, bad_slot = S, bad_pos = L, negative = -1;
    const float sc = 0.125f;
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &bad_slot, &ok, 1, S, H, HKV, D, L, sc, out) == -1, "slot");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &negative, &ok, 1, S, H, HKV, D, L, sc, out) == -1, "slot -1");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &ok, &bad_pos, 1, S, H, HKV, D, L, sc, out) == -1, "pos");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &ok, &negative, 1, S, H, HKV, D, L, sc, out) == -1, "pos -1");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &ok, &ok, 1, S, H, 0, D, L, sc, out) == -1, "hkv 0");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &ok, &ok, 1, S, 3, HKV, D, L, sc, out) == -1, "h 3");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &ok, &ok, 1, S, H, HKV, 24, L, sc, out) == -1, "d 24");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &ok, &ok, 1, S, 34, 2, D, L, sc, out) == -1, "g 17");
    CHECK(llmtop_decode_attention(qk, v, kc, vc, &ok, &ok, 0, S, H, HKV, D, L, sc, out) == 0, "rows 0");
    free(kc), free(vc);
}

/* --- the fused forward ------------------------------------------------------------------------ */

enum { FL = 2, FDIM = 64, FH = 4, FHKV = 2, FD = 32, FFN = 96, FV = 48, FS = 3, FML = 8 };

struct tiny_model {
    struct weights w[FL][4], out;
    llmtop_layer layers[FL];
    float norms[FL][2][FDIM], norm[FDIM], rope[FML * FD];
    llmtop_model m;
};

static llmtop_linear as_linear(const struct weights *w) {
    return (llmtop_linear){w->bits, w->n, w->k, w->packed, w->pd, w->pm};
}

static void make_tiny(struct tiny_model *t) {
    const int nqkv = (FH + 2 * FHKV) * FD;
    for (int l = 0; l < FL; l++) {
        t->w[l][0] = make_weights(4, nqkv, FDIM);
        t->w[l][1] = make_weights(8, FDIM, FH * FD);
        t->w[l][2] = make_weights(4, 2 * FFN, FDIM);
        t->w[l][3] = make_weights(4, FDIM, FFN);
        for (int i = 0; i < FDIM; i++) t->norms[l][0][i] = uniform(0.5f, 1.5f), t->norms[l][1][i] = uniform(0.5f, 1.5f);
        t->layers[l] = (llmtop_layer){t->norms[l][0], t->norms[l][1], as_linear(&t->w[l][0]),
                                      as_linear(&t->w[l][1]), as_linear(&t->w[l][2]), as_linear(&t->w[l][3])};
    }
    t->out = make_weights(8, FV, FDIM);
    for (int i = 0; i < FDIM; i++) t->norm[i] = uniform(0.5f, 1.5f);
    for (int p = 0; p < FML; p++)
        for (int i = 0; i < FD / 2; i++) {
            const double a = p * pow(10000.0, -2.0 * i / FD);
            t->rope[p * FD + 2 * i] = (float)cos(a), t->rope[p * FD + 2 * i + 1] = (float)sin(a);
        }
    static llmtop_linear head;
    head = as_linear(&t->out);
    t->m = (llmtop_model){FL, FDIM, FH, FHKV, FD, FFN, FV, 1e-5f, FML, t->rope, t->norm, t->layers, &head};
}

static void free_tiny(struct tiny_model *t) {
    for (int l = 0; l < FL; l++)
        for (int i = 0; i < 4; i++) free_weights(&t->w[l][i]);
    free_weights(&t->out);
}

/* Rows at positions pos (their earlier positions filled with random keys and values): the same
 * logits and the same cache, bit for bit, batched or one at a time, and through the per-layer
 * entry points. */
static void check_forward(void) {
    static struct tiny_model t;
    make_tiny(&t);
    enum { R = 3 };
    const size_t cache = (size_t)FL * FS * FHKV * FML * FD;
    const int64_t slot[R] = {2, 0, 1}, pos[R] = {0, 3, 7};
    uint16_t *k0 = alloc(2 * cache), *v0 = alloc(2 * cache), *k1 = alloc(2 * cache), *v1 = alloc(2 * cache);
    float *emb = alloc(sizeof(float) * R * FDIM), *x = alloc(sizeof(float) * R * FDIM);
    float *logits = alloc(sizeof(float) * R * FV), *alone = alloc(sizeof(float) * FV);
    float *qkv = alloc(sizeof(float) * R * (FH + 2 * FHKV) * FD), *o = alloc(sizeof(float) * R * FH * FD);
    for (size_t i = 0; i < cache; i++) k0[i] = to_f16(uniform(-2.0f, 2.0f)), v0[i] = to_f16(uniform(-1.0f, 1.0f));
    for (int i = 0; i < R * FDIM; i++) emb[i] = from_bf16(to_bf16(uniform(-0.5f, 0.5f)));
    llmtop_cache c = {k1, v1, FS, FML};

    memcpy(k1, k0, 2 * cache), memcpy(v1, v0, 2 * cache), memcpy(x, emb, sizeof(float) * R * FDIM);
    CHECK(llmtop_forward_decode(&t.m, &c, R, x, slot, pos, logits, 0) == 0, "forward_decode");
    for (int i = 0; i < R * FV; i++) CHECK(isfinite(logits[i]), "logit %d not finite", i);
    uint16_t *kb = alloc(2 * cache), *vb = alloc(2 * cache);
    memcpy(kb, k1, 2 * cache), memcpy(vb, v1, 2 * cache);
    memcpy(k1, k0, 2 * cache), memcpy(v1, v0, 2 * cache);
    for (int r = 0; r < R; r++) {
        memcpy(x, emb + r * FDIM, sizeof(float) * FDIM);
        CHECK(llmtop_forward_decode(&t.m, &c, 1, x, slot + r, pos + r, alone, 1 + r % 2) == 0, "row %d alone", r);
        CHECK(!memcmp(alone, logits + r * FV, sizeof(float) * FV), "row %d: other logits alone", r);
    }
    CHECK(!memcmp(k1, kb, 2 * cache) && !memcmp(v1, vb, 2 * cache), "other cache alone");
    float *one = alloc(sizeof(float) * R * FV); /* the batch on one thread */
    memcpy(k1, k0, 2 * cache), memcpy(v1, v0, 2 * cache), memcpy(x, emb, sizeof(float) * R * FDIM);
    CHECK(llmtop_forward_decode(&t.m, &c, R, x, slot, pos, one, 1) == 0, "one thread");
    CHECK(!memcmp(one, logits, sizeof(float) * R * FV), "other logits on one thread");
    free(one);

    /* the per-layer entry points (a step with prompt rows), with attend for every row */
    memcpy(k1, k0, 2 * cache), memcpy(v1, v0, 2 * cache), memcpy(x, emb, sizeof(float) * R * FDIM);
    for (int l = 0; l < FL; l++) {
        CHECK(llmtop_layer_in(&t.m, &c, l, R, x, slot, pos, qkv) == 0, "layer_in %d", l);
        CHECK(llmtop_attend(&t.m, &c, l, R, qkv, slot, pos, o) == 0, "attend %d", l);
        CHECK(llmtop_layer_out(&t.m, l, R, x, o) == 0, "layer_out %d", l);
    }
    float *split = alloc(sizeof(float) * R * FV);
    CHECK(llmtop_logits(&t.m, R, x, split) == 0, "logits");
    CHECK(!memcmp(split, logits, sizeof(float) * R * FV), "per-layer calls: other logits");
    CHECK(!memcmp(k1, kb, 2 * cache) && !memcmp(v1, vb, 2 * cache), "per-layer calls: other cache");

    /* bad rows: refused before anything is written */
    const int64_t bad_slot = FS, bad_pos = FML, negative = -1, ok = 0;
    memcpy(k1, k0, 2 * cache);
    CHECK(llmtop_forward_decode(&t.m, &c, 1, x, &bad_slot, &ok, logits, 0) == -1, "slot");
    CHECK(llmtop_forward_decode(&t.m, &c, 1, x, &negative, &ok, logits, 0) == -1, "slot -1");
    CHECK(llmtop_forward_decode(&t.m, &c, 1, x, &ok, &bad_pos, logits, 0) == -1, "pos");
    CHECK(llmtop_forward_decode(&t.m, &c, 1, x, &ok, &negative, logits, 0) == -1, "pos -1");
    CHECK(llmtop_forward_decode(&t.m, &c, -1, x, &ok, &ok, logits, 0) == -1, "rows -1");
    CHECK(llmtop_forward_decode(&t.m, &c, 0, x, &ok, &ok, logits, 0) == 0, "rows 0");
    CHECK(llmtop_layer_in(&t.m, &c, FL, 1, x, &ok, &ok, qkv) == -1, "layer past the last");
    CHECK(!memcmp(k1, k0, 2 * cache), "a refused call wrote the cache");
    llmtop_model bad = t.m;
    bad.n_heads = 3;
    CHECK(llmtop_forward_decode(&bad, &c, 1, x, &ok, &ok, logits, 0) == -1, "h 3");
    free(k0), free(v0), free(k1), free(v1), free(kb), free(vb), free(emb), free(x);
    free(logits), free(alone), free(qkv), free(o), free(split);
    free_tiny(&t);
}

/* --- the sampler ------------------------------------------------------------------------- */

/* Rows of 37 logits (tails of vector loads in every pass) with one known answer each: the argmax
 * (greedy, top-k 1, a tiny top-p), the top-2 under top-k 2, a NaN, an all -inf row; and draws
 * with every filter that must land in range, the last one walking the tail past the candidates. */
static void check_sampler(void) {
    enum { V = 37, R = 9 };
    float x[R * V];
    for (int i = 0; i < R * V; i++) x[i] = uniform(-4.0f, 4.0f);
    for (int r = 0; r < R; r++) x[r * V + 5 + r] = 9.0f; /* row r's best: 5 + r */
    x[3 * V + 30] = 8.9f;                                /* row 3's second */
    x[4 * V + 11] = NAN;
    for (int i = 0; i < V; i++) x[5 * V + i] = -INFINITY;
    for (int i = 0; i < V; i++) x[8 * V + i] = i < 19 ? 0.0f : -20.0f; /* candidates, then a tail */
    const float temperature[R] = {0, 0.7f, 1.0f, 50.0f, 0, 1.0f, 1.0f, 0.8f, 1.0f};
    const int32_t top_k[R] = {0, 1, 0, 2, 0, 0, 40, 5, 0};
    const float top_p[R] = {1, 1, 1e-6f, 1, 1, 1, 0.9f, 0.5f, 1};
    const double u[R] = {0, 0.99, 0.5, 0.999, 0, 0.3, 0.7, 0.999, 1 - 1e-12}; /* last: in the tail */
    const size_t bytes = llmtop_sample_scratch_bytes(V);
    void *scratch = aligned_alloc(64, (bytes + 63) / 64 * 64);
    int64_t tokens[R];
    CHECK(scratch != NULL, "no memory");
    const int rc = llmtop_sample_rows(x, R, V, temperature, top_k, top_p, u, scratch, tokens);
    free(scratch);
    CHECK(rc == 0, "sampler refused %d rows", R);
    for (int r = 0; r < R; r++) CHECK(tokens[r] >= 0 && tokens[r] < V, "row %d: token %lld", r, (long long)tokens[r]);
    CHECK(tokens[0] == 5 && tokens[1] == 6 && tokens[2] == 7, "argmax rows: %lld %lld %lld",
          (long long)tokens[0], (long long)tokens[1], (long long)tokens[2]);
    CHECK(tokens[3] == 8 || tokens[3] == 30, "top-k 2: %lld", (long long)tokens[3]);
    CHECK(tokens[4] == 11, "a NaN is the argmax (as torch): %lld", (long long)tokens[4]);
    CHECK(tokens[5] == 0, "all -inf: the first, %lld", (long long)tokens[5]);
    CHECK(tokens[8] >= 19, "a number past the candidates' mass draws from the tail: %lld",
          (long long)tokens[8]);
    CHECK(llmtop_sample_rows(x, 1, 0, temperature, top_k, top_p, u, x, tokens) == -1, "vocab 0 accepted");
}

int main(void) {
    static const int row_counts[] = {1, 2, 3, 7, 8, 9, 17, 20};
    for (int bits = 4; bits <= 8; bits += 4)
        for (size_t i = 0; i < sizeof row_counts / sizeof *row_counts; i++)
            check_matmul(bits, 48, 96, row_counts[i]);
    check_matmul_refuses_bad_shapes();

    static const struct attention_case cases[] = {
        /* rows, h, hkv, d, slots, max_len, slot[], pos[]: lengths 1, 18, 40 (a partial tail) */
        {3, 4, 2, 48, 3, 40, {2, 0, 1}, {0, 17, 39}},
        {2, 16, 1, 256, 2, 33, {1, 0}, {15, 32}}, /* the largest head and group */
        {4, 2, 2, 16, 4, 20, {3, 2, 1, 0}, {4, 19, 0, 16}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) check_attention(&cases[i]);
    check_attention_refuses_bad_input();
    check_forward();
    check_sampler();

    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("kernel harness: all checks passed\n");
    return 0;
}
