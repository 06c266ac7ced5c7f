/* Decode attention: one new token per sequence, each over its own cached keys and values
 * (see decode_attention.py for why this is not torch's).
 *
 * Per (sequence, kv head): write the token's key and value into the cache at its position,
 * then for each of the query heads that share this kv head: scores over the sequence's own
 * positions 0..pos (no padding to the batch's longest, so nothing to mask), softmax, and the
 * weighted sum of values, all in float32 and in one fixed order. A row's output is therefore
 * the same bits whatever else is in the batch.
 *
 * The cache holds float16 (as llama.cpp's default cache does): half the memory of float32, and
 * attention is still computed in float32 (keys and values convert exactly).
 *
 * No undefined behaviour (tests/engine/test_engine_kernels_sanitized.py runs it under ASan and
 * UBSan): the shapes are checked before any division or index, vectors are loaded and stored
 * through the unaligned vector types, and offsets into the caches are computed in size_t.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "native_kernels.h"

#define MAX_D 256  /* head_dim up to 256, in steps of 16 */
#define MAX_G 16   /* query heads per kv head */

/* 16 float16 values from the cache as float32 (exact) */
static inline __m512 load_h(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i_u *)p));
}

/* Inlined for each d / 16 (DV), so that the query and accumulator vectors stay in registers. */
static inline __attribute__((always_inline)) void head_group(
    const int DV, const float *q, int g, const uint16_t *keys, const uint16_t *values, int len,
    float scale, float *scores, float *out) {
    const int dv = DV, d = 16 * DV;
    /* scores[i * len + l] = scale * q_i . k_l */
    for (int i = 0; i < g; i++) {
        __m512 qi[MAX_D / 16];
        for (int c = 0; c < dv; c++)
            qi[c] = _mm512_mul_ps(_mm512_loadu_ps(q + i * d + 16 * c), _mm512_set1_ps(scale));
        for (int l = 0; l < len; l++) {
            const uint16_t *kl = keys + (size_t)l * d;
            __m512 acc = _mm512_mul_ps(qi[0], load_h(kl));
            for (int c = 1; c < dv; c++) acc = _mm512_fmadd_ps(qi[c], load_h(kl + 16 * c), acc);
            scores[i * len + l] = _mm512_reduce_add_ps(acc);
        }
    }
    /* softmax numerators and their sums, 16 positions at a time */
    float inv[MAX_G];
    for (int i = 0; i < g; i++) {
        float *s = scores + i * len;
        __m512 mx = _mm512_set1_ps(-INFINITY);
        for (int l = 0; l < len; l += 16) {
            __mmask16 m = len - l >= 16 ? 0xFFFF : (__mmask16)((1u << (len - l)) - 1);
            mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), m, s + l));
        }
        __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx)), sum = _mm512_setzero_ps();
        for (int l = 0; l < len; l += 16) {
            __mmask16 m = len - l >= 16 ? 0xFFFF : (__mmask16)((1u << (len - l)) - 1);
            __m512 e = llmtop_exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + l), top));
            e = _mm512_maskz_mov_ps(m, e);
            _mm512_mask_storeu_ps(s + l, m, e);
            sum = _mm512_add_ps(sum, e);
        }
        inv[i] = 1.0f / _mm512_reduce_add_ps(sum);
    }
    /* out_i = sum_l p_il v_l / sum_l p_il */
    for (int i = 0; i < g; i++) {
        const float *p = scores + i * len;
        __m512 acc[MAX_D / 16];
        for (int c = 0; c < dv; c++) acc[c] = _mm512_setzero_ps();
        for (int l = 0; l < len; l++) {
            __m512 pl = _mm512_set1_ps(p[l]);
            const uint16_t *vl = values + (size_t)l * d;
            for (int c = 0; c < dv; c++) acc[c] = _mm512_fmadd_ps(pl, load_h(vl + 16 * c), acc[c]);
        }
        for (int c = 0; c < dv; c++)
            _mm512_storeu_ps(out + i * d + 16 * c, _mm512_mul_ps(acc[c], _mm512_set1_ps(inv[i])));
    }
}

static void one_head_group(const float *q, int g, int d, const uint16_t *keys,
                           const uint16_t *values, int len, float scale, float *scores, float *out) {
    switch (d / 16) {
#define DV_CASE(n) \
    case n: head_group(n, q, g, keys, values, len, scale, scores, out); break;
    DV_CASE(1) DV_CASE(2) DV_CASE(3) DV_CASE(4) DV_CASE(5) DV_CASE(6) DV_CASE(7) DV_CASE(8)
    DV_CASE(9) DV_CASE(10) DV_CASE(11) DV_CASE(12) DV_CASE(13) DV_CASE(14) DV_CASE(15)
    default: head_group(16, q, g, keys, values, len, scale, scores, out); break;
#undef DV_CASE
    }
}

void llmtop_attend_head(const float *q, const uint16_t *keys, const uint16_t *values, int len,
                        int d, float scale, float *scores, float *out) {
    one_head_group(q, 1, d, keys, values, len, scale, scores, out);
}

/* q_and_k [rows, h + hkv, d] (queries then the new keys, rope applied), v [rows, hkv, d],
 * k_cache / v_cache float16 [slots, hkv, max_len, d] for this layer, slot and pos [rows];
 * out [rows, h, d]. The new key and value are rounded to float16 (to nearest even, as torch's
 * .to(float16)) before any row reads them.
 * Returns 0, or -1 when out of memory, a slot or position is outside the cache, or the shapes
 * are outside what this kernel handles. */
int llmtop_decode_attention(const float *q_and_k, const float *v, uint16_t *k_cache, uint16_t *v_cache,
                            const int64_t *slot, const int64_t *pos, int rows, int n_slots, int h, int hkv,
                            int d, int max_len, float scale, float *out) {
    if (rows < 0 || h <= 0 || hkv <= 0 || h % hkv || h / hkv > MAX_G) return -1;
    if (d <= 0 || d % 16 || d > MAX_D || n_slots <= 0 || max_len <= 0) return -1;
    if (rows == 0) return 0;
    const int g = h / hkv;
    int64_t longest = 0;
    for (int r = 0; r < rows; r++) {
        if (pos[r] < 0 || pos[r] >= max_len || slot[r] < 0 || slot[r] >= n_slots) return -1;
        if (pos[r] + 1 > longest) longest = pos[r] + 1;
    }
    const int tasks = rows * hkv; /* rows <= the batch, hkv <= h: far from overflow */
    float *scratch = malloc(sizeof(float) * (size_t)tasks * g * longest);
    if (!scratch) return -1;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tasks; t++) {
        const int r = t / hkv, j = t % hkv, len = (int)pos[r] + 1;
        const size_t base = (((size_t)slot[r] * hkv + j) * max_len) * d;
        const float *row = q_and_k + (size_t)r * (h + hkv) * d;
        uint16_t *kc = k_cache + base, *vc = v_cache + base;
        for (int c = 0; c < d; c += 16) {
            const int rne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
            _mm256_storeu_si256((__m256i_u *)(kc + (size_t)pos[r] * d + c),
                                _mm512_cvtps_ph(_mm512_loadu_ps(row + (size_t)(h + j) * d + c), rne));
            _mm256_storeu_si256((__m256i_u *)(vc + (size_t)pos[r] * d + c),
                                _mm512_cvtps_ph(_mm512_loadu_ps(v + ((size_t)r * hkv + j) * d + c), rne));
        }
        one_head_group(row + (size_t)j * g * d, g, d, kc, vc, len, scale,
                       scratch + (size_t)t * g * longest, out + ((size_t)r * h + (size_t)j * g) * d);
    }
    free(scratch);
    return 0;
}
