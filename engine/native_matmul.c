/* y = x @ W.T for GGUF block weights on x86 CPUs with AVX-512 VNNI (see block_matmul.py for why).
 *
 * Weights: unsigned 8-bit codes u with one fp16 scale d and offset m per 32 inputs of a column,
 * w = d * u + m, which is Q4_0 (u = q, m = -8 d), Q4_1 (u = q, m = m) and Q8_0 (u = q + 128,
 * m = -128 d) unchanged. Activations: each row's blocks of 32 quantized to 15-bit codes with
 * their own scale, a = round(x / s), held as two int8 halves (a = 128 hi + lo). Then per column
 * and block
 *     sum_k w_k x_k = d s (sum_k u_k a_k) + m s (sum_k a_k),
 * where the integer sum is vpdpbusd (64 u8 x s8 products per instruction), once per half.
 *
 * Layout, per group of 16 columns and block of 32 inputs: the codes of 16 columns x 4
 * consecutive inputs fill one 64-byte vector (4 bytes per int32 lane, lane = column), so one
 * vpdpbusd with 4 activation bytes broadcast adds 4 inputs to 16 columns. 4-bit codes hold
 * inputs 0-15 in the low nibbles and 16-31 in the high nibbles of 4 such vectors (256 bytes);
 * 8-bit codes take 8 vectors. The codes are unpacked once per block and used for up to 8 rows.
 *
 * A lone row takes one_row(); rows in pairs take tile_pairs(), where a vector holds 8 columns
 * of two rows, so that one broadcast feeds two rows: at 8 rows that is half the activation
 * loads and ~25% faster (the kernel is bound by instruction throughput there, not memory).
 *
 * Every output element is computed with the same integer sums and the same float operations in
 * the same order, whichever path and whatever the number of rows (batch size), so a
 * sequence's logits do not depend on what it is batched with (the tests check the bits).
 *
 * No undefined behaviour (tests/engine/test_engine_kernels_sanitized.py runs both kernels under
 * ASan and UBSan): buffers are read as wider integers only through memcpy (a cast-and-dereference
 * would break C's aliasing rules), vectors are loaded and stored through the unaligned vector
 * types (__m512i_u, ...), and index arithmetic over whole buffers is done in size_t.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_kernels.h"

#define QK LLMTOP_QK
#define NG LLMTOP_NG
#define MT_MAX 8     /* rows per pass over a group's weights (4 pairs) */
#define PAIR_BLOCK LLMTOP_PAIR_BLOCK /* 2 rows x 2 x 32 codes */
#define ACT_MAX 16383.0f /* activation codes: 15 bits */

/* 4 or 8 bytes as one integer, whatever type the buffer holds (one mov after optimisation) */
static inline int32_t load_i32(const void *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline int64_t load_i64(const void *p) {
    int64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline __m256i load_256(const void *p) { return _mm256_loadu_si256((const __m256i_u *)p); }

static inline void store_256(void *p, __m256i v) { _mm256_storeu_si256((__m256i_u *)p, v); }

static inline __m512 bf16_to_f32(const uint16_t *p) {
    __m256i h = load_256(p);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* round to nearest even, as torch does */
static inline __m256i f32_to_bf16(__m512 v) {
    __m512i i = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(i, 16), _mm512_set1_epi32(1));
    i = _mm512_add_epi32(i, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(i, 16));
}

/* One row of bf16 activations -> per block of 32: 15-bit codes a = round(x / s) in +-16383,
 * stored as two int8 halves (32 bytes hi = a >> 7, then 32 bytes lo = a & 127, so
 * a = 128 hi + lo), the scale s, and s * sum(a). */
static void quantize_row(const uint16_t *x, int nb, int8_t *q, float *s, float *ssum) {
    const __m512i low7 = _mm512_set1_epi32(127);
    for (int b = 0; b < nb; b++) {
        __m512 f0 = bf16_to_f32(x + b * QK), f1 = bf16_to_f32(x + b * QK + 16);
        __m512 amax = _mm512_max_ps(_mm512_abs_ps(f0), _mm512_abs_ps(f1));
        float mx = _mm512_reduce_max_ps(amax);
        float d = mx / ACT_MAX, id = mx > 0.0f ? ACT_MAX / mx : 0.0f;
        __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(f0, _mm512_set1_ps(id)));
        __m512i i1 = _mm512_cvtps_epi32(_mm512_mul_ps(f1, _mm512_set1_ps(id)));
        int8_t *o = q + 2 * b * QK;
        _mm_storeu_si128((__m128i_u *)o, _mm512_cvtepi32_epi8(_mm512_srai_epi32(i0, 7)));
        _mm_storeu_si128((__m128i_u *)(o + 16), _mm512_cvtepi32_epi8(_mm512_srai_epi32(i1, 7)));
        _mm_storeu_si128((__m128i_u *)(o + 32), _mm512_cvtepi32_epi8(_mm512_and_si512(i0, low7)));
        _mm_storeu_si128((__m128i_u *)(o + 48), _mm512_cvtepi32_epi8(_mm512_and_si512(i1, low7)));
        s[b] = d;
        ssum[b] = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    }
}

/* One block's codes of a group (16 columns x 32 inputs) as 8 vectors of 4 inputs x 16 columns. */
static inline __attribute__((always_inline)) void unpack(const int BITS, const uint8_t *p, __m512i *w) {
    if (BITS == 4) {
        const __m512i low = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++) {
            __m512i c = _mm512_loadu_si512(p + 64 * v);
            w[v] = _mm512_and_si512(c, low);
            w[v + 4] = _mm512_and_si512(_mm512_srli_epi16(c, 4), low);
        }
    } else {
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) w[v] = _mm512_loadu_si512(p + 64 * v);
    }
}

/* One group of 16 columns for one row; BITS 4 or 8. */
static inline __attribute__((always_inline)) void one_row(
    const int BITS, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, int nb,
    const int8_t *xq, const float *xs, const float *xss, uint16_t *y) {
    const int vbytes = BITS * QK * NG / 8;
    __m512 acc = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512i w[8];
        unpack(BITS, wq + (size_t)b * vbytes, w);
        const int8_t *a = xq + 2 * (size_t)b * QK; /* 4 codes per int32: hi halves, then lo */
        __m512i dot = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) dot = _mm512_dpbusd_epi32(dot, w[v], _mm512_set1_epi32(load_i32(a + 4 * v)));
        dot = _mm512_slli_epi32(dot, 7);
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) dot = _mm512_dpbusd_epi32(dot, w[v], _mm512_set1_epi32(load_i32(a + 4 * (v + 8))));
        __m512 d = _mm512_cvtph_ps(load_256(wd + (size_t)b * NG));
        __m512 m = _mm512_cvtph_ps(load_256(wm + (size_t)b * NG));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, _mm512_set1_ps(xs[b])), acc);
        acc = _mm512_fmadd_ps(m, _mm512_set1_ps(xss[b]), acc);
    }
    store_256(y, f32_to_bf16(acc));
}

/* Two rows per vector: lane 2c + p holds column c (of 8) for row p of a pair, so one 8-byte
 * broadcast serves two rows, and each 16-column weight vector is split into two (permutes,
 * shared by all pairs). Per element the same integer sum and the same three float operations
 * as one_row(), in the same order: the results are the same bits.
 * xp: per pair and block 128 bytes (16 x 8: 4 code bytes of each row); xsp, xssp: per pair and
 * block the two rows' scales side by side (2 floats, broadcast as one 8-byte value). */
static inline __attribute__((always_inline)) void tile_pairs(
    const int NP, const int BITS, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm,
    int nb, const int8_t *xp, const float *xsp, const float *xssp, uint16_t *y, size_t n) {
    const int vbytes = BITS * QK * NG / 8;
    const __m512i ilo = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
    const __m512i ihi = _mm512_add_epi32(ilo, _mm512_set1_epi32(8));
    __m512 acc[MT_MAX];
#pragma GCC unroll 8
    for (int i = 0; i < 2 * NP; i++) acc[i] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        __m512i w[8];
        unpack(BITS, wq + (size_t)b * vbytes, w);
        __m512i dot[MT_MAX], lo[MT_MAX];
        const int8_t *a = xp + (size_t)b * PAIR_BLOCK; /* pair q: a + q * nb * PAIR_BLOCK */
#pragma GCC unroll 8
        for (int i = 0; i < 2 * NP; i++) { dot[i] = _mm512_setzero_si512(); lo[i] = _mm512_setzero_si512(); }
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++) {
            __m512i wl = _mm512_permutexvar_epi32(ilo, w[v]), wh = _mm512_permutexvar_epi32(ihi, w[v]);
#pragma GCC unroll 4
            for (int q = 0; q < NP; q++) {
                const int8_t *aq = a + (size_t)q * nb * PAIR_BLOCK;
                __m512i av = _mm512_set1_epi64(load_i64(aq + 8 * v));
                __m512i al = _mm512_set1_epi64(load_i64(aq + 8 * (v + 8)));
                dot[2 * q] = _mm512_dpbusd_epi32(dot[2 * q], wl, av);
                dot[2 * q + 1] = _mm512_dpbusd_epi32(dot[2 * q + 1], wh, av);
                lo[2 * q] = _mm512_dpbusd_epi32(lo[2 * q], wl, al);
                lo[2 * q + 1] = _mm512_dpbusd_epi32(lo[2 * q + 1], wh, al);
            }
        }
#pragma GCC unroll 8
        for (int i = 0; i < 2 * NP; i++) dot[i] = _mm512_add_epi32(_mm512_slli_epi32(dot[i], 7), lo[i]);
        __m512 d = _mm512_cvtph_ps(load_256(wd + (size_t)b * NG));
        __m512 m = _mm512_cvtph_ps(load_256(wm + (size_t)b * NG));
        __m512 dl = _mm512_permutexvar_ps(ilo, d), dh = _mm512_permutexvar_ps(ihi, d);
        __m512 ml = _mm512_permutexvar_ps(ilo, m), mh = _mm512_permutexvar_ps(ihi, m);
#pragma GCC unroll 4
        for (int q = 0; q < NP; q++) {
            const size_t qb = 2 * ((size_t)q * nb + b);
            __m512 s = _mm512_castsi512_ps(_mm512_set1_epi64(load_i64(xsp + qb)));
            __m512 ss = _mm512_castsi512_ps(_mm512_set1_epi64(load_i64(xssp + qb)));
            acc[2 * q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[2 * q]), _mm512_mul_ps(dl, s), acc[2 * q]);
            acc[2 * q] = _mm512_fmadd_ps(ml, ss, acc[2 * q]);
            acc[2 * q + 1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[2 * q + 1]), _mm512_mul_ps(dh, s), acc[2 * q + 1]);
            acc[2 * q + 1] = _mm512_fmadd_ps(mh, ss, acc[2 * q + 1]);
        }
    }
    /* lanes (c, p) -> row p's 16 columns */
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
#pragma GCC unroll 4
    for (int q = 0; q < NP; q++) {
        __m512 r0 = _mm512_permutex2var_ps(acc[2 * q], even, acc[2 * q + 1]);
        __m512 r1 = _mm512_permutex2var_ps(acc[2 * q], odd, acc[2 * q + 1]);
        store_256(y + (size_t)(2 * q) * n, f32_to_bf16(r0));
        store_256(y + (size_t)(2 * q + 1) * n, f32_to_bf16(r1));
    }
}

#define PAIRS(BITS)                                                                      \
    switch (np) {                                                                        \
    case 1: tile_pairs(1, BITS, wq, wd, wm, nb, xp, xsp, xssp, y, n); break;             \
    case 2: tile_pairs(2, BITS, wq, wd, wm, nb, xp, xsp, xssp, y, n); break;             \
    case 3: tile_pairs(3, BITS, wq, wd, wm, nb, xp, xsp, xssp, y, n); break;             \
    default: tile_pairs(4, BITS, wq, wd, wm, nb, xp, xsp, xssp, y, n); break;            \
    }

static void pairs4(int np, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, int nb,
                   const int8_t *xp, const float *xsp, const float *xssp, uint16_t *y, size_t n) {
    PAIRS(4)
}

static void pairs8(int np, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, int nb,
                   const int8_t *xp, const float *xsp, const float *xssp, uint16_t *y, size_t n) {
    PAIRS(8)
}

static void row4(const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, int nb,
                 const int8_t *xq, const float *xs, const float *xss, uint16_t *y) {
    one_row(4, wq, wd, wm, nb, xq, xs, xss, y);
}

static void row8(const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, int nb,
                 const int8_t *xq, const float *xs, const float *xss, uint16_t *y) {
    one_row(8, wq, wd, wm, nb, xq, xs, xss, y);
}

void llmtop_quantize_blocks(const llmtop_acts *a, int r, const uint16_t *x, int b0, int b1) {
    const size_t rb = (size_t)r * a->nb;
    quantize_row(x + (size_t)b0 * QK, b1 - b0, a->xq + 2 * (rb + b0) * QK, a->xs + rb + b0,
                 a->xss + rb + b0);
}

void llmtop_pack_pair(const llmtop_acts *a, int q, int b0, int b1) {
    const size_t nb = (size_t)a->nb, r0 = 2 * (size_t)q * nb, r1 = r0 + nb;
    const int8_t *a0 = a->xq + 2 * r0 * QK, *a1 = a->xq + 2 * r1 * QK;
    int8_t *o = a->xp + (size_t)q * nb * PAIR_BLOCK;
    float *s = a->xsp + 2 * (size_t)q * nb, *ss = a->xssp + 2 * (size_t)q * nb;
    for (size_t b = (size_t)b0; b < (size_t)b1; b++) {
        for (size_t i = 16 * b; i < 16 * (b + 1); i++) { /* 16 x 4 code bytes per row and block */
            memcpy(o + 8 * i, a0 + 4 * i, 4);
            memcpy(o + 8 * i + 4, a1 + 4 * i, 4);
        }
        s[2 * b] = a->xs[r0 + b];
        s[2 * b + 1] = a->xs[r1 + b];
        ss[2 * b] = a->xss[r0 + b];
        ss[2 * b + 1] = a->xss[r1 + b];
    }
}

void llmtop_quantize_row(const llmtop_acts *a, int r, const uint16_t *x) {
    llmtop_quantize_blocks(a, r, x, 0, a->nb);
    if (r % 2 == 1) llmtop_pack_pair(a, r / 2, 0, a->nb);
}

void llmtop_matmul_group(const llmtop_linear *w, const llmtop_acts *a, int rows, int g,
                         uint16_t *y, size_t ldy) {
    const int nb = w->k / QK, bits = w->bits;
    const size_t gbytes = (size_t)nb * bits * QK * NG / 8;
    const uint8_t *gq = w->codes + (size_t)g * gbytes;
    const uint16_t *gd = w->scale + (size_t)g * nb * NG, *gm = w->offset + (size_t)g * nb * NG;
    for (int r = 0; r < rows; r += MT_MAX) {
        int mt = rows - r < MT_MAX ? rows - r : MT_MAX;
        uint16_t *ry = y + (size_t)r * ldy;
        if (mt >= 2) {
            const size_t q = r / 2;
            const int np = mt / 2;
            const int8_t *qp = a->xp + q * nb * PAIR_BLOCK;
            const float *qs = a->xsp + 2 * q * nb, *qss = a->xssp + 2 * q * nb;
            if (bits == 4)
                pairs4(np, gq, gd, gm, nb, qp, qs, qss, ry, ldy);
            else
                pairs8(np, gq, gd, gm, nb, qp, qs, qss, ry, ldy);
            if (mt % 2 == 0) continue;
            r += mt - 1;
            ry = y + (size_t)r * ldy;
            mt = 1;
        }
        const int8_t *rq = a->xq + 2 * (size_t)r * a->k;
        const float *rs = a->xs + (size_t)r * a->nb, *rss = a->xss + (size_t)r * a->nb;
        if (bits == 4)
            row4(gq, gd, gm, nb, rq, rs, rss, ry);
        else
            row8(gq, gd, gm, nb, rq, rs, rss, ry);
    }
}

/* x bf16 [rows, k], y bf16 [rows, n]; wq codes, wd/wm fp16 [n/16, k/32, 16]. Returns 0, or -1
 * when out of memory or the shapes are not what the kernel handles (bits 4 or 8, whole groups). */
int llmtop_block_matmul(int bits, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm,
                       int n, int k, const uint16_t *x, int rows, uint16_t *y) {
    if ((bits != 4 && bits != 8) || n <= 0 || k <= 0 || rows < 0 || n % NG || k % QK) return -1;
    if (rows == 0) return 0;
    const int nb = k / QK, groups = n / NG, npairs = rows / 2;
    llmtop_acts a = {.rows = rows, .k = k, .nb = nb};
    a.xq = malloc(2 * (size_t)rows * k);
    a.xs = malloc(sizeof(float) * 2 * (size_t)rows * nb);
    a.xp = npairs ? malloc((size_t)npairs * nb * PAIR_BLOCK) : NULL;
    a.xsp = npairs ? malloc(sizeof(float) * 4 * (size_t)npairs * nb) : NULL;
    if (!a.xq || !a.xs || (npairs && (!a.xp || !a.xsp))) {
        free(a.xq);
        free(a.xs);
        free(a.xp);
        free(a.xsp);
        return -1;
    }
    a.xss = a.xs + (size_t)rows * nb;
    a.xssp = npairs ? a.xsp + 2 * (size_t)npairs * nb : NULL;
    const llmtop_linear w = {.bits = bits, .n = n, .k = k, .codes = wq, .scale = wd, .offset = wm};
#pragma omp parallel for schedule(static) if (rows > 16)
    for (int r = 0; r < rows; r++) llmtop_quantize_blocks(&a, r, x + (size_t)r * k, 0, nb);
    /* rows 2q and 2q + 1 side by side: 4 code bytes of each, then their scales */
    for (int q = 0; q < npairs; q++) llmtop_pack_pair(&a, q, 0, nb);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < groups; g++) llmtop_matmul_group(&w, &a, rows, g, y + (size_t)g * NG, n);
    free(a.xq);
    free(a.xs);
    free(a.xp);
    free(a.xsp);
    return 0;
}
