/* The next token of each row of a step's logits (sampler_rows.py says when this runs): a greedy
 * row's argmax, any other row's draw under its temperature, top-k and top-p with one uniform
 * number from the row's own seeded generator.
 *
 * Why C: torch's tensor ops for the same filters (a topk of 1024 candidates, logsumexp, cumsum,
 * searchsorted, ...) cost 1.75 ms a step for one top-p row and 4 ms for eight, beside a forward
 * of 4-10 ms, and even the greedy batch's argmax took 0.56 ms at 8 rows: each op is a dispatch,
 * and the larger ones wake OpenMP's sleeping thread and wait for it. Here a row is four or five
 * vectorised passes over its logits on the calling thread.
 *
 * The filters are engine/sampling.py's, in its order: temperature, top-k, then top-p over what
 * top-k kept (renormalised), where a token is dropped once the tokens before it cover top_p (the
 * first always stays). The draw is by inverse CDF over the kept tokens in order of probability
 * (equal weights: lower id first), as sampler_rows.py's tensor path does.
 *
 * How a row goes:
 *     1. m = the largest logit; w = exp((x - m) / T) for every token, and the sum of w
 *     2. the candidates: the tokens whose weight is at least 2^-12 (then 2^-24, then any), taken
 *        with compress stores, until they hold the top-k, or the nucleus, or (no filter) any
 *     3. only the candidates are sorted; top-k and top-p cut them; u picks among what is left
 *     4. with no filter, a number that falls past the candidates' mass walks the remaining
 *        tokens in id order (any fixed order draws from the same distribution)
 *
 * No undefined behaviour (tests/engine/test_engine_kernels_sanitized.py runs it under ASan and
 * UBSan): sizes are checked first, rows whose logits are not finite fall back to the argmax,
 * and the scratch is carved in aligned pieces whose sizes come from ``vocab``.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_kernels.h"

#define LEVELS 3
static const float LEVEL[LEVELS] = {0x1p-12f, 0x1p-24f, 0.0f}; /* candidate weights, of the best's */

/* The scratch one call needs for rows of ``vocab`` logits: weights, candidates' ids and weights,
 * sort keys. */
static size_t piece(int vocab) { return ((size_t)vocab * 4 + 63) & ~(size_t)63; }

size_t llmtop_sample_scratch_bytes(int vocab) { return vocab > 0 ? 5 * piece(vocab) : 0; }

static inline __mmask16 tail(int n, int i) {
    return n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
}

/* The first index of the largest value; a NaN counts as the largest (as torch's argmax). */
static int64_t argmax_row(const float *x, int n) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    __mmask16 nan = 0;
    for (int i = 0; i < n; i += 16) {
        __m512 v = _mm512_maskz_loadu_ps(tail(n, i), x + i);
        nan |= _mm512_mask_cmp_ps_mask(tail(n, i), v, v, _CMP_UNORD_Q);
        best = _mm512_mask_max_ps(best, tail(n, i), best, v);
    }
    const float m = _mm512_reduce_max_ps(best);
    const __m512 vm = _mm512_set1_ps(m);
    for (int i = 0; i < n; i += 16) {
        __m512 v = _mm512_maskz_loadu_ps(tail(n, i), x + i);
        __mmask16 hit = nan ? _mm512_mask_cmp_ps_mask(tail(n, i), v, v, _CMP_UNORD_Q)
                            : _mm512_mask_cmp_ps_mask(tail(n, i), v, vm, _CMP_EQ_OQ);
        if (hit) return i + __builtin_ctz(hit);
    }
    return 0; /* every value -inf: the first, as torch */
}

static float max_row(const float *x, int n) {
    __m512 best = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < n; i += 16)
        best = _mm512_mask_max_ps(best, tail(n, i), best, _mm512_maskz_loadu_ps(tail(n, i), x + i));
    return _mm512_reduce_max_ps(best);
}

/* w = exp((x - m) / t) for the row (x <= m: the exponential of a value <= 0); their sum. */
static double weights(const float *x, int n, float m, float t, float *w) {
    const __m512 vm = _mm512_set1_ps(m), inv = _mm512_set1_ps(1.0f / t);
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    for (int i = 0; i < n; i += 16) {
        const __mmask16 k = tail(n, i);
        __m512 v = _mm512_maskz_loadu_ps(k, x + i);
        __m512 e = _mm512_maskz_mov_ps(k, llmtop_exp_ps(_mm512_mul_ps(_mm512_sub_ps(v, vm), inv)));
        _mm512_mask_storeu_ps(w + i, k, e);
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

/* The tokens whose weight is at least ``lo``, as sort keys (weight bits, then the id inverted,
 * so that keys in descending order are weights high to low, ids low to high); how many. Their
 * mass into *mass. */
static int candidates(const float *w, int n, float lo, int32_t *ids, float *cw, uint64_t *keys,
                      double *mass) {
    const __m512 vlo = _mm512_set1_ps(lo);
    const __m512i step = _mm512_set1_epi32(16);
    __m512i id = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    int c = 0;
    for (int i = 0; i < n; i += 16, id = _mm512_add_epi32(id, step)) {
        __m512 v = _mm512_maskz_loadu_ps(tail(n, i), w + i);
        __mmask16 keep = _mm512_mask_cmp_ps_mask(tail(n, i), v, vlo, _CMP_GE_OQ);
        _mm512_mask_compressstoreu_epi32(ids + c, keep, id);
        _mm512_mask_compressstoreu_ps(cw + c, keep, v);
        c += __builtin_popcount(keep);
    }
    double s = 0.0;
    for (int j = 0; j < c; j++) {
        uint32_t bits;
        memcpy(&bits, &cw[j], sizeof bits);
        keys[j] = (uint64_t)bits << 32 | (uint32_t)(UINT32_MAX - (uint32_t)ids[j]);
        s += cw[j];
    }
    *mass = s;
    return c;
}

static int descending(const void *a, const void *b) {
    uint64_t x, y;
    memcpy(&x, a, sizeof x);
    memcpy(&y, b, sizeof y);
    return (x < y) - (x > y);
}

static inline float key_weight(uint64_t key) {
    const uint32_t bits = (uint32_t)(key >> 32);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline int64_t key_id(uint64_t key) { return (int64_t)(UINT32_MAX - (uint32_t)key); }

/* One row's draw (see the top of the file). */
static int64_t draw_row(const float *x, int n, float t, int top_k, float top_p, double u, char *scratch) {
    const float m = max_row(x, n);
    if (!(t > 0) || !isfinite(m)) return argmax_row(x, n);
    const size_t p = piece(n);
    float *w = (float *)scratch, *cw = (float *)(scratch + p);
    int32_t *ids = (int32_t *)(scratch + 2 * p);
    uint64_t *keys = (uint64_t *)(scratch + 3 * p); /* 8 n bytes: two pieces */
    const double z = weights(x, n, m, t, w);
    const int by_k = top_k > 0 && top_k < n, by_p = top_p < 1.0f;
    int c = 0;
    double mass = 0.0;
    for (int l = 0; l < LEVELS; l++) {
        c = candidates(w, n, LEVEL[l], ids, cw, keys, &mass);
        const int enough = by_k ? c >= top_k : by_p ? mass >= (double)top_p * z * (1 + 1e-6) : 1;
        if (enough || l == LEVELS - 1) break;
    }
    qsort(keys, (size_t)c, sizeof *keys, descending);
    int kept = by_k && top_k < c ? top_k : c;
    double zk = z; /* the normaliser: over the top-k when there is one, else over every token */
    if (by_k) {
        zk = 0.0;
        for (int j = 0; j < kept; j++) zk += key_weight(keys[j]);
    }
    double cum = 0.0;
    if (by_k || by_p) {
        const double cover = by_p ? (double)top_p * zk : 2.0 * zk;
        int j = 0;
        for (; j < kept && cum < cover; j++) cum += key_weight(keys[j]); /* the first always */
        kept = j;
        const double target = u * cum;
        cum = 0.0;
        for (j = 0; j < kept - 1; j++) {
            cum += key_weight(keys[j]);
            if (cum >= target) break;
        }
        return key_id(keys[j]);
    }
    /* no filter: u picks from every token's mass, the candidates first */
    const double target = u * z;
    for (int j = 0; j < c; j++) {
        cum += key_weight(keys[j]);
        if (cum >= target) return key_id(keys[j]);
    }
    const float lo = LEVEL[0]; /* c < n only when the first level sufficed */
    int64_t last = key_id(keys[c - 1]);
    for (int i = 0; i < n; i++) {
        if (w[i] >= lo || w[i] <= 0.0f) continue;
        cum += w[i];
        last = i;
        if (cum >= target) break;
    }
    return last;
}

/* tokens[r] for each row r of logits [rows, vocab]: the argmax where temperature[r] is 0 (or
 * not positive), else a draw with top_k[r] (0: off), top_p[r] (1: off) and u[r] in [0, 1).
 * ``scratch``: llmtop_sample_scratch_bytes(vocab) bytes, 64-byte aligned. Returns 0, or -1 for
 * bad sizes. */
int llmtop_sample_rows(const float *logits, int rows, int vocab, const float *temperature,
                       const int32_t *top_k, const float *top_p, const double *u, void *scratch,
                       int64_t *tokens) {
    if (rows < 0 || vocab <= 0 || !logits || !scratch || !tokens) return -1;
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * vocab;
        if (!(temperature[r] > 0)) {
            tokens[r] = argmax_row(x, vocab);
            continue;
        }
        const double ur = u[r] >= 0.0 && u[r] < 1.0 ? u[r] : 0.0;
        tokens[r] = draw_row(x, vocab, temperature[r], top_k[r], top_p[r], ur, scratch);
    }
    return 0;
}
