/* y = x @ W.T for GGUF block weights on x86 CPUs with AVX-512 VNNI (see block_matmul.py for why).
 *
 * Weights: unsigned 8-bit codes u with one fp16 scale d and offset m per 32 inputs of a column,
 * w = d * u + m, which is Q4_0 (u = q, m = -8 d), Q4_1 (u = q, m = m) and Q8_0 (u = q + 128,
 * m = -128 d) unchanged. Activations: each row's blocks of 32 quantized to int8 with their own
 * scale a = round(x / s), as llama.cpp does (its "q8_1"). Then per column and block
 *     sum_k w_k x_k = d s (sum_k u_k a_k) + m s (sum_k a_k),
 * where the integer sum is vpdpbusd (64 u8 x s8 products per instruction).
 *
 * Layout, per group of 16 columns and block of 32 inputs: the codes of 16 columns x 4
 * consecutive inputs fill one 64-byte vector (4 bytes per int32 lane, lane = column), so one
 * vpdpbusd with 4 activation bytes broadcast adds 4 inputs to 16 columns. 4-bit codes hold
 * inputs 0-15 in the low nibbles and 16-31 in the high nibbles of 4 such vectors (256 bytes);
 * 8-bit codes take 8 vectors. The codes are unpacked once per block and used for up to 8 rows.
 *
 * Every output element is summed in the same order whatever the number of rows (batch size),
 * so a sequence's logits do not depend on what it is batched with.
 */
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define QK 32        /* inputs per block */
#define NG 16        /* columns per group */
#define MT_MAX 8     /* rows per register tile */
#define ACT_MAX 16383.0f /* activation codes: 15 bits */

static inline __m512 bf16_to_f32(const uint16_t *p) {
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
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
        _mm_storeu_si128((__m128i *)o, _mm512_cvtepi32_epi8(_mm512_srai_epi32(i0, 7)));
        _mm_storeu_si128((__m128i *)(o + 16), _mm512_cvtepi32_epi8(_mm512_srai_epi32(i1, 7)));
        _mm_storeu_si128((__m128i *)(o + 32), _mm512_cvtepi32_epi8(_mm512_and_si512(i0, low7)));
        _mm_storeu_si128((__m128i *)(o + 48), _mm512_cvtepi32_epi8(_mm512_and_si512(i1, low7)));
        s[b] = d;
        ssum[b] = d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    }
}

/* One group of 16 columns for MT rows; BITS 4 or 8. Inlined with constant MT and BITS so the
 * accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(
    const int MT, const int BITS, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm,
    int nb, const int8_t *xq, const float *xs, const float *xss, uint16_t *y, int n) {
    const int k = nb * QK, vbytes = BITS * QK * NG / 8;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc[MT_MAX];
#pragma GCC unroll 8
    for (int r = 0; r < MT; r++) acc[r] = _mm512_setzero_ps();
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = wq + (size_t)b * vbytes;
        __m512i w[8];
        if (BITS == 4) {
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
        __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wd + b * NG)));
        __m512 m = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(wm + b * NG)));
        /* rows interleaved: MT independent dependency chains through the dot products */
        __m512i dot[MT_MAX];
        const int32_t *a = (const int32_t *)(xq + 2 * (size_t)b * QK);
#pragma GCC unroll 8
        for (int r = 0; r < MT; r++) dot[r] = _mm512_setzero_si512();
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++)
#pragma GCC unroll 8
            for (int r = 0; r < MT; r++)
                dot[r] = _mm512_dpbusd_epi32(dot[r], w[v], _mm512_set1_epi32(a[r * k / 2 + v]));
#pragma GCC unroll 8
        for (int r = 0; r < MT; r++) dot[r] = _mm512_slli_epi32(dot[r], 7);
#pragma GCC unroll 8
        for (int v = 0; v < 8; v++)
#pragma GCC unroll 8
            for (int r = 0; r < MT; r++)
                dot[r] = _mm512_dpbusd_epi32(dot[r], w[v], _mm512_set1_epi32(a[r * k / 2 + v + 8]));
#pragma GCC unroll 8
        for (int r = 0; r < MT; r++) {
            __m512 ds = _mm512_mul_ps(d, _mm512_set1_ps(xs[r * nb + b]));
            acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[r]), ds, acc[r]);
            acc[r] = _mm512_fmadd_ps(m, _mm512_set1_ps(xss[r * nb + b]), acc[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < MT; r++) _mm256_storeu_si256((__m256i *)(y + (size_t)r * n), f32_to_bf16(acc[r]));
}

#define TILES(BITS)                                                                      \
    switch (mt) {                                                                        \
    case 1: tile(1, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                    \
    case 2: tile(2, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                    \
    case 3: tile(3, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                    \
    case 4: tile(4, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                    \
    case 5: tile(5, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                    \
    case 6: tile(6, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                    \
    case 7: tile(7, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                    \
    default: tile(8, BITS, wq, wd, wm, nb, xq, xs, xss, y, n); break;                   \
    }

static void tile4(int mt, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, int nb,
                  const int8_t *xq, const float *xs, const float *xss, uint16_t *y, int n) {
    TILES(4)
}

static void tile8(int mt, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm, int nb,
                  const int8_t *xq, const float *xs, const float *xss, uint16_t *y, int n) {
    TILES(8)
}

/* x bf16 [rows, k], y bf16 [rows, n]; wq codes, wd/wm fp16 [n/16, k/32, 16]. Returns 0, or -1
 * when out of memory. */
int llmtop_block_matmul(int bits, const uint8_t *wq, const uint16_t *wd, const uint16_t *wm,
                       int n, int k, const uint16_t *x, int rows, uint16_t *y) {
    const int nb = k / QK, groups = n / NG;
    const size_t gbytes = (size_t)nb * bits * QK * NG / 8;
    int8_t *xq = malloc(2 * (size_t)rows * k);
    float *xs = malloc(sizeof(float) * 2 * (size_t)rows * nb);
    if (!xq || !xs) {
        free(xq);
        free(xs);
        return -1;
    }
    float *xss = xs + (size_t)rows * nb;
#pragma omp parallel for schedule(static) if (rows > 16)
    for (int r = 0; r < rows; r++)
        quantize_row(x + (size_t)r * k, nb, xq + 2 * (size_t)r * k, xs + (size_t)r * nb, xss + (size_t)r * nb);
#pragma omp parallel for schedule(static)
    for (int g = 0; g < groups; g++) {
        const uint8_t *gq = wq + g * gbytes;
        const uint16_t *gd = wd + (size_t)g * nb * NG, *gm = wm + (size_t)g * nb * NG;
        for (int r = 0; r < rows; r += MT_MAX) {
            int mt = rows - r < MT_MAX ? rows - r : MT_MAX;
            const int8_t *rq = xq + 2 * (size_t)r * k;
            const float *rs = xs + (size_t)r * nb, *rss = xss + (size_t)r * nb;
            uint16_t *ry = y + (size_t)r * n + g * NG;
            if (bits == 4)
                tile4(mt, gq, gd, gm, nb, rq, rs, rss, ry, n);
            else
                tile8(mt, gq, gd, gm, nb, rq, rs, rss, ry, n);
        }
    }
    free(xq);
    free(xs);
    return 0;
}
