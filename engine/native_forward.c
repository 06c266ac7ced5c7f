/* The model's layers in C for the rows of one step (see native_forward.py for why).
 *
 * A decode step (one new token per sequence) is one call, llmtop_forward_decode: every layer and
 * the LM head inside one OpenMP parallel region, the threads meeting at a barrier between the
 * phases of a layer instead of returning to Python (or to OpenMP's pool) after each operation.
 * Per layer:
 *     1. RMSNorm, bf16, quantize for the matmul          rows (in pairs)
 *     2. q|k|v matmul                                    16-column groups
 *     3. RoPE on q and k, k and v into the float16 cache (row, kv head)
 *     4. attention per query head, bf16, quantize        (pair of rows, head)
 *     5. output projection, added to the residual        groups
 *     6. RMSNorm, bf16, quantize                         rows (in pairs)
 *     7. gate|up matmul, silu(gate) * up, quantize       32 columns of gate and of up
 *     8. down projection, added to the residual          groups
 * A step with prompt tokens runs the same phases, split into three calls per layer
 * (llmtop_layer_in: 1-3; llmtop_attend: 4 for its decode rows; llmtop_layer_out: the rest) so
 * that torch can attend over the prompt chunks in between. Each phase computes a row's values
 * with the same operations in the same order whichever call it runs in and whatever other rows
 * are there, so a sequence's logits are the same bits alone, batched, or beside a prompt.
 *
 * The barrier spins (pause) for a while and then yields the CPU: the threads of one step meet
 * every few microseconds, which a sleeping wait (OpenMP's own barrier under OMP_WAIT_POLICY=
 * PASSIVE: a futex per barrier) would make cost more than the phases themselves, while a
 * thread whose partner lost its core to another process gives the core back instead of
 * spinning through the partner's time slice.
 *
 * No undefined behaviour (tests/engine/test_engine_kernels_sanitized.py runs it under ASan and
 * UBSan): shapes, slots and positions are checked before anything is read, the scratch buffers
 * are sized from them, and offsets into whole buffers are computed in size_t.
 */
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "native_kernels.h"

#define QK LLMTOP_QK
#define NG LLMTOP_NG
#define MAX_D 256 /* head_dim up to 256, in steps of 32 (a head's output is whole blocks) */
#define MAX_G 16  /* query heads per kv head */
#define SPINS 4000 /* pauses before a barrier starts yielding (~0.1 ms) */
#define TILE 64    /* columns of the per-thread output tile: 2 groups of gate, 2 of up */

/* The structs below are mirrored by ctypes (native_forward.py): keep the two in step. */
typedef struct {
    const float *attn_norm, *ffn_norm; /* [dim] */
    llmtop_linear wqkv, wo, w13, w2;   /* [dim -> (h + 2 hkv) d], [h d -> dim], [dim -> 2 ffn], [ffn -> dim] */
} llmtop_layer;

typedef struct {
    int n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, vocab;
    float eps;
    int rope_len;
    const float *rope; /* [rope_len, head_dim / 2, 2]: cos, sin of each position and pair */
    const float *norm; /* [dim] */
    const llmtop_layer *layers;
    const llmtop_linear *output; /* the LM head [dim -> vocab]; NULL: llmtop_logits refuses */
} llmtop_model;

typedef struct {
    uint16_t *k, *v; /* float16 [n_layers, n_slots, n_kv_heads, max_len, head_dim] */
    int n_slots, max_len;
} llmtop_cache;

typedef struct {
    unsigned count, gen;
} barrier_t;

/* Everything one call works on: the model, the rows, and scratch sized for them. */
typedef struct {
    const llmtop_model *m;
    const llmtop_cache *c;
    int rows, nqkv, kmax;
    const int64_t *slot, *pos;
    float *x;            /* the residual stream [rows, dim] */
    llmtop_acts a[2];    /* a matmul's quantized input; a phase writes one while reading the other */
    uint16_t *h;         /* bf16 [rows, kmax]: a matmul's input before it is quantized */
    uint16_t *y;         /* bf16 [rows, nqkv]: the q|k|v matmul's output */
    float *qkv;          /* [rows, nqkv]: q and k rotated, v; the caller's or scratch */
    uint16_t *tiles;     /* per thread [rows, TILE] bf16 */
    float *scores;       /* per thread [longest] */
    int longest, threads;
    void *base;          /* the one allocation behind the scratch */
    barrier_t bar;
} step_t;

static void barrier(barrier_t *b, int nt) {
    if (nt == 1) return;
    const unsigned gen = __atomic_load_n(&b->gen, __ATOMIC_ACQUIRE);
    if (__atomic_add_fetch(&b->count, 1, __ATOMIC_ACQ_REL) == (unsigned)nt) {
        __atomic_store_n(&b->count, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&b->gen, gen + 1, __ATOMIC_RELEASE);
        return;
    }
    int spins = 0;
    while (__atomic_load_n(&b->gen, __ATOMIC_ACQUIRE) == gen) {
        if (spins < SPINS) {
            _mm_pause();
            spins++;
        } else {
            sched_yield();
        }
    }
}

/* This thread's share [lo, hi) of n items. */
static inline void share(int n, int tid, int nt, int *lo, int *hi) {
    *lo = (int)((int64_t)n * tid / nt);
    *hi = (int)((int64_t)n * (tid + 1) / nt);
}

static int linear_ok(const llmtop_linear *w, int n, int k) {
    return w->codes && w->scale && w->offset && (w->bits == 4 || w->bits == 8) && w->n == n &&
           w->k == k && n > 0 && k > 0 && n % NG == 0 && k % QK == 0;
}

static int model_ok(const llmtop_model *m) {
    const int d = m->head_dim, h = m->n_heads, hkv = m->n_kv_heads;
    if (m->n_layers <= 0 || m->dim <= 0 || m->dim % QK || m->ffn_dim <= 0 || m->ffn_dim % QK) return 0;
    if (hkv <= 0 || h <= 0 || h % hkv || h / hkv > MAX_G || d <= 0 || d % QK || d > MAX_D) return 0;
    if (m->rope_len <= 0 || !m->rope || !m->norm || !m->layers || !(m->eps >= 0.0f)) return 0;
    for (int l = 0; l < m->n_layers; l++) {
        const llmtop_layer *L = &m->layers[l];
        if (!L->attn_norm || !L->ffn_norm) return 0;
        if (!linear_ok(&L->wqkv, (h + 2 * hkv) * d, m->dim) || !linear_ok(&L->wo, m->dim, h * d) ||
            !linear_ok(&L->w13, 2 * m->ffn_dim, m->dim) || !linear_ok(&L->w2, m->dim, m->ffn_dim))
            return 0;
    }
    return !m->output || linear_ok(m->output, m->vocab, m->dim);
}

static int rows_ok(const llmtop_model *m, const llmtop_cache *c, int rows, const int64_t *slot,
                   const int64_t *pos) {
    if (!c || !c->k || !c->v || c->n_slots <= 0 || c->max_len <= 0) return 0;
    for (int r = 0; r < rows; r++)
        if (slot[r] < 0 || slot[r] >= c->n_slots || pos[r] < 0 || pos[r] >= c->max_len ||
            pos[r] >= m->rope_len)
            return 0;
    return 1;
}

static size_t up64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Scratch for ``rows`` rows in one allocation (freed with step_free); 0 when out of memory. */
static int step_alloc(step_t *s, const llmtop_model *m, const llmtop_cache *c, int rows,
                      const int64_t *slot, const int64_t *pos, float *x, float *qkv) {
    memset(s, 0, sizeof *s);
    s->m = m, s->c = c, s->rows = rows, s->slot = slot, s->pos = pos, s->x = x;
    s->nqkv = (m->n_heads + 2 * m->n_kv_heads) * m->head_dim;
    int kmax = m->dim > m->ffn_dim ? m->dim : m->ffn_dim;
    if (m->n_heads * m->head_dim > kmax) kmax = m->n_heads * m->head_dim;
    s->kmax = kmax;
    s->threads = omp_get_max_threads();
    if (s->threads < 1) s->threads = 1;
    s->longest = 1;
    for (int r = 0; pos && r < rows; r++)
        if (pos[r] + 1 > s->longest) s->longest = (int)pos[r] + 1;
    const size_t R = (size_t)rows, pairs = R / 2, nb = (size_t)kmax / QK, T = (size_t)s->threads;
    const size_t acts = up64(2 * R * kmax) + up64(sizeof(float) * 2 * R * nb) +
                        up64(pairs * nb * LLMTOP_PAIR_BLOCK) + up64(sizeof(float) * 4 * pairs * nb);
    const size_t total = 2 * acts + up64(2 * R * kmax) + up64(2 * R * s->nqkv) +
                         (qkv ? 0 : up64(sizeof(float) * R * s->nqkv)) + up64(2 * T * R * TILE) +
                         up64(sizeof(float) * T * s->longest);
    char *p = aligned_alloc(64, total);
    if (!p) return 0;
    s->base = p;
    for (int i = 0; i < 2; i++) {
        llmtop_acts *a = &s->a[i];
        a->rows = rows, a->k = kmax, a->nb = (int)nb;
        a->xq = (int8_t *)p, p += up64(2 * R * kmax);
        a->xs = (float *)p, a->xss = a->xs + R * nb, p += up64(sizeof(float) * 2 * R * nb);
        a->xp = (int8_t *)p, p += up64(pairs * nb * LLMTOP_PAIR_BLOCK);
        a->xsp = (float *)p, a->xssp = a->xsp + 2 * pairs * nb, p += up64(sizeof(float) * 4 * pairs * nb);
    }
    s->h = (uint16_t *)p, p += up64(2 * R * kmax);
    s->y = (uint16_t *)p, p += up64(2 * R * s->nqkv);
    if (qkv) {
        s->qkv = qkv;
    } else {
        s->qkv = (float *)p, p += up64(sizeof(float) * R * s->nqkv);
    }
    s->tiles = (uint16_t *)p, p += up64(2 * T * R * TILE);
    s->scores = (float *)p;
    return 1;
}

static void step_free(step_t *s) { free(s->base); }

/* Point acts ``a`` at a matmul input of k columns (the buffers hold kmax). */
static inline void acts_for(llmtop_acts *a, int k) {
    a->k = k;
    a->nb = k / QK;
}

/* --- the phases: each is called by every thread of the region with its id ------------------ */

/* RMSNorm of row r of x (dim values) times w, as bf16 into out. */
static void rms_norm_row(const float *x, const float *w, int dim, float eps, uint16_t *out) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < dim; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        acc = _mm512_fmadd_ps(v, v, acc);
    }
    const float inv = 1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)dim + eps);
    for (int i = 0; i < dim; i++) out[i] = llmtop_bf16(x[i] * inv * w[i]);
}

/* Rows in pairs: normalize with w, quantize into a (for a matmul of k = dim). */
static void phase_norm(step_t *s, const float *w, llmtop_acts *a, int tid, int nt) {
    const int dim = s->m->dim, units = (s->rows + 1) / 2;
    int lo, hi;
    acts_for(a, dim);
    share(units, tid, nt, &lo, &hi);
    for (int u = lo; u < hi; u++)
        for (int r = 2 * u; r < 2 * u + 2 && r < s->rows; r++) {
            uint16_t *h = s->h + (size_t)r * s->kmax;
            rms_norm_row(s->x + (size_t)r * dim, w, dim, s->m->eps, h);
            llmtop_quantize_row(a, r, h);
        }
}

/* Rows in pairs: float32 o [rows, k] as bf16, quantized into a. */
static void phase_quantize(step_t *s, const float *o, int k, llmtop_acts *a, int tid, int nt) {
    const int units = (s->rows + 1) / 2;
    int lo, hi;
    acts_for(a, k);
    share(units, tid, nt, &lo, &hi);
    for (int u = lo; u < hi; u++)
        for (int r = 2 * u; r < 2 * u + 2 && r < s->rows; r++) {
            uint16_t *h = s->h + (size_t)r * s->kmax;
            for (int i = 0; i < k; i++) h[i] = llmtop_bf16(o[(size_t)r * k + i]);
            llmtop_quantize_row(a, r, h);
        }
}

/* y [rows, n] = the matmul of a by w, split by groups. */
static void phase_matmul(step_t *s, const llmtop_linear *w, const llmtop_acts *a, uint16_t *y,
                         int tid, int nt) {
    int lo, hi;
    share(w->n / NG, tid, nt, &lo, &hi);
    for (int g = lo; g < hi; g++) llmtop_matmul_group(w, a, s->rows, g, y + (size_t)g * NG, w->n);
}

/* x += the matmul of a by w (n = dim), split by groups. */
static void phase_residual(step_t *s, const llmtop_linear *w, const llmtop_acts *a, int tid, int nt) {
    uint16_t *tile = s->tiles + (size_t)tid * s->rows * TILE;
    const int dim = s->m->dim;
    int lo, hi;
    share(w->n / NG, tid, nt, &lo, &hi);
    for (int g = lo; g < hi; g++) {
        llmtop_matmul_group(w, a, s->rows, g, tile, TILE);
        for (int r = 0; r < s->rows; r++)
            for (int c = 0; c < NG; c++)
                s->x[(size_t)r * dim + (size_t)g * NG + c] += llmtop_from_bf16(tile[(size_t)r * TILE + c]);
    }
}

/* Rotate adjacent pairs of one head (bf16 in) by the position's angles; float32 out. */
static void rope_head(const uint16_t *in, const float *rot, int d, float *out) {
    for (int i = 0; i < d; i += 2) {
        const float x0 = llmtop_from_bf16(in[i]), x1 = llmtop_from_bf16(in[i + 1]);
        const float cs = rot[i], sn = rot[i + 1];
        out[i] = x0 * cs - x1 * sn;
        out[i + 1] = x0 * sn + x1 * cs;
    }
}

static inline size_t cache_at(const step_t *s, int layer, int r, int j) {
    const llmtop_cache *c = s->c;
    const size_t hkv = (size_t)s->m->n_kv_heads;
    return ((((size_t)layer * c->n_slots + (size_t)s->slot[r]) * hkv + (size_t)j) * c->max_len) *
           (size_t)s->m->head_dim;
}

/* Per (row, kv head): q and k rotated into qkv, v copied; k and v into the cache at the row's
 * slot and position, rounded to float16 (to nearest even, as torch's .to(float16)). */
static void phase_rope(step_t *s, int layer, int tid, int nt) {
    const int h = s->m->n_heads, hkv = s->m->n_kv_heads, d = s->m->head_dim, g = h / hkv;
    const int rne = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    int lo, hi;
    share(s->rows * hkv, tid, nt, &lo, &hi);
    for (int t = lo; t < hi; t++) {
        const int r = t / hkv, j = t % hkv;
        const int64_t p = s->pos[r];
        const float *rot = s->m->rope + (size_t)p * d;
        const uint16_t *y = s->y + (size_t)r * s->nqkv;
        float *out = s->qkv + (size_t)r * s->nqkv;
        for (int i = j * g; i < (j + 1) * g; i++) rope_head(y + (size_t)i * d, rot, d, out + (size_t)i * d);
        float *k = out + (size_t)(h + j) * d, *v = out + (size_t)(h + hkv + j) * d;
        rope_head(y + (size_t)(h + j) * d, rot, d, k);
        for (int i = 0; i < d; i++) v[i] = llmtop_from_bf16(y[(size_t)(h + hkv + j) * d + i]);
        const size_t at = cache_at(s, layer, r, j) + (size_t)p * d;
        for (int c = 0; c < d; c += 16) {
            _mm256_storeu_si256((__m256i_u *)(s->c->k + at + c), _mm512_cvtps_ph(_mm512_loadu_ps(k + c), rne));
            _mm256_storeu_si256((__m256i_u *)(s->c->v + at + c), _mm512_cvtps_ph(_mm512_loadu_ps(v + c), rne));
        }
    }
}

/* Per (pair of rows, query head): attention over the row's positions 0..pos. Into o (float32
 * [rows, h d]) when given, else as bf16 quantized into a (the output projection's input). */
static void phase_attend(step_t *s, int layer, float *o, llmtop_acts *a, int tid, int nt) {
    const int h = s->m->n_heads, hkv = s->m->n_kv_heads, d = s->m->head_dim, g = h / hkv;
    const int units = (s->rows + 1) / 2, per_head = d / QK;
    const float scale = 1.0f / sqrtf((float)d);
    float *scores = s->scores + (size_t)tid * s->longest, out[MAX_D];
    int lo, hi;
    if (!o) acts_for(a, h * d);
    share(units * h, tid, nt, &lo, &hi);
    for (int t = lo; t < hi; t++) {
        const int u = t / h, i = t % h, j = i / g;
        for (int r = 2 * u; r < 2 * u + 2 && r < s->rows; r++) {
            const size_t base = cache_at(s, layer, r, j);
            const float *q = s->qkv + (size_t)r * s->nqkv + (size_t)i * d;
            llmtop_attend_head(q, s->c->k + base, s->c->v + base, (int)s->pos[r] + 1, d, scale, scores, out);
            if (o) {
                memcpy(o + ((size_t)r * h + i) * d, out, sizeof(float) * d);
                continue;
            }
            uint16_t *hrow = s->h + (size_t)r * s->kmax;
            for (int c = 0; c < d; c++) hrow[(size_t)i * d + c] = llmtop_bf16(out[c]);
            llmtop_quantize_blocks(a, r, hrow, i * per_head, (i + 1) * per_head);
            if (r % 2 == 1) llmtop_pack_pair(a, u, i * per_head, (i + 1) * per_head);
        }
    }
}

/* silu(g) * u for 16 lanes: g * sigmoid(g), with e^-|g| (the exponential of a value <= 0). */
static inline __m512 silu_mul(__m512 g, __m512 u) {
    const __m512 one = _mm512_set1_ps(1.0f);
    __m512 e = llmtop_exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(g)));
    __m512 inv = _mm512_div_ps(one, _mm512_add_ps(one, e));
    __mmask16 neg = _mm512_cmp_ps_mask(g, _mm512_setzero_ps(), _CMP_LT_OQ);
    __m512 sig = _mm512_mask_mul_ps(inv, neg, e, inv); /* g < 0: e / (1 + e) */
    return _mm512_mul_ps(_mm512_mul_ps(g, sig), u);
}

/* Per 32 columns of the feed-forward: gate and up (2 groups each) from a, silu(gate) * up as
 * bf16, quantized into b (its block of the down projection's input). */
static void phase_ffn(step_t *s, const llmtop_linear *w13, const llmtop_acts *a, llmtop_acts *b,
                      int tid, int nt) {
    const int f = s->m->ffn_dim, half = f / NG;
    uint16_t *tile = s->tiles + (size_t)tid * s->rows * TILE;
    int lo, hi;
    acts_for(b, f);
    share(f / QK, tid, nt, &lo, &hi);
    for (int blk = lo; blk < hi; blk++) {
        for (int i = 0; i < 2; i++) {
            llmtop_matmul_group(w13, a, s->rows, 2 * blk + i, tile + NG * i, TILE);
            llmtop_matmul_group(w13, a, s->rows, half + 2 * blk + i, tile + 32 + NG * i, TILE);
        }
        for (int r = 0; r < s->rows; r++) {
            const uint16_t *t = tile + (size_t)r * TILE;
            uint16_t *hrow = s->h + (size_t)r * s->kmax;
            for (int c = 0; c < QK; c += 16) {
                __m512 gv = _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i_u *)(t + c))), 16));
                __m512 uv = _mm512_castsi512_ps(_mm512_slli_epi32(
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i_u *)(t + 32 + c))), 16));
                float act[16];
                _mm512_storeu_ps(act, silu_mul(gv, uv));
                for (int e = 0; e < 16; e++) hrow[(size_t)blk * QK + c + e] = llmtop_bf16(act[e]);
            }
            llmtop_quantize_blocks(b, r, hrow, blk, blk + 1);
            if (r % 2 == 1) llmtop_pack_pair(b, r / 2, blk, blk + 1);
        }
    }
}

/* logits [rows, vocab] (float32 of the bf16 matmul output) = the LM head over a, by groups. */
static void phase_logits(step_t *s, const llmtop_acts *a, float *logits, int tid, int nt) {
    const llmtop_linear *w = s->m->output;
    uint16_t *tile = s->tiles + (size_t)tid * s->rows * TILE;
    int lo, hi;
    share(w->n / NG, tid, nt, &lo, &hi);
    for (int g = lo; g < hi; g++) {
        llmtop_matmul_group(w, a, s->rows, g, tile, TILE);
        for (int r = 0; r < s->rows; r++)
            for (int c = 0; c < NG; c++)
                logits[(size_t)r * w->n + (size_t)g * NG + c] = llmtop_from_bf16(tile[(size_t)r * TILE + c]);
    }
}

/* Phases 6-8 of a layer (after the output projection): the feed-forward block. */
static void ffn_block(step_t *s, const llmtop_layer *L, int tid, int nt) {
    phase_norm(s, L->ffn_norm, &s->a[0], tid, nt);
    barrier(&s->bar, nt);
    phase_ffn(s, &L->w13, &s->a[0], &s->a[1], tid, nt);
    barrier(&s->bar, nt);
    phase_residual(s, &L->w2, &s->a[1], tid, nt);
    barrier(&s->bar, nt);
}

/* Phases 1-3 of a layer. */
static void attention_in(step_t *s, int layer, int tid, int nt) {
    const llmtop_layer *L = &s->m->layers[layer];
    phase_norm(s, L->attn_norm, &s->a[0], tid, nt);
    barrier(&s->bar, nt);
    phase_matmul(s, &L->wqkv, &s->a[0], s->y, tid, nt);
    barrier(&s->bar, nt);
    phase_rope(s, layer, tid, nt);
    barrier(&s->bar, nt);
}

/* --- the entry points --------------------------------------------------------------------- */

/* One decode step: x [rows, dim] holds each row's token embedding (float32) and ends as the
 * residual stream after the last layer; the rows' keys and values go into the cache at (slot,
 * pos); logits [rows, vocab] get the next-token logits (NULL: no LM head, x is the result).
 * ``threads``: at most that many (0: OpenMP's count); the bits are the same for any count, as
 * a thread's share of a phase only decides who computes a row or column, never how.
 * Returns 0, or -1 for a model or cache the kernels do not handle, a slot or position outside
 * the cache, or no memory. */
int llmtop_forward_decode(const llmtop_model *m, const llmtop_cache *c, int rows, float *x,
                          const int64_t *slot, const int64_t *pos, float *logits, int threads) {
    if (rows < 0 || !model_ok(m) || (logits && !m->output) || !rows_ok(m, c, rows, slot, pos))
        return -1;
    if (rows == 0) return 0;
    step_t s;
    if (!step_alloc(&s, m, c, rows, slot, pos, x, NULL)) return -1;
    if (threads > 0 && threads < s.threads) s.threads = threads; /* the scratch fits fewer */
#pragma omp parallel num_threads(s.threads)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        for (int l = 0; l < m->n_layers; l++) {
            attention_in(&s, l, tid, nt);
            phase_attend(&s, l, NULL, &s.a[1], tid, nt);
            barrier(&s.bar, nt);
            phase_residual(&s, &m->layers[l].wo, &s.a[1], tid, nt);
            barrier(&s.bar, nt);
            ffn_block(&s, &m->layers[l], tid, nt);
        }
        if (logits) {
            phase_norm(&s, m->norm, &s.a[0], tid, nt);
            barrier(&s.bar, nt);
            phase_logits(&s, &s.a[0], logits, tid, nt);
        }
    }
    step_free(&s);
    return 0;
}

/* Phases 1-3 of ``layer`` for rows of any kind (prompt tokens and decode rows): qkv [rows,
 * (h + 2 hkv) d] gets q and k rotated and v (float32); k and v go into the cache. */
int llmtop_layer_in(const llmtop_model *m, const llmtop_cache *c, int layer, int rows,
                    float *x, const int64_t *slot, const int64_t *pos, float *qkv) {
    if (rows < 0 || !model_ok(m) || layer < 0 || layer >= m->n_layers || !rows_ok(m, c, rows, slot, pos))
        return -1;
    if (rows == 0) return 0;
    step_t s;
    if (!step_alloc(&s, m, c, rows, slot, pos, x, qkv)) return -1;
#pragma omp parallel num_threads(s.threads)
    attention_in(&s, layer, omp_get_thread_num(), omp_get_num_threads());
    step_free(&s);
    return 0;
}

/* Phase 4 for decode rows whose keys and values llmtop_layer_in has cached: o [rows, h d]
 * float32 from qkv [rows, (h + 2 hkv) d]. */
int llmtop_attend(const llmtop_model *m, const llmtop_cache *c, int layer, int rows,
                  const float *qkv, const int64_t *slot, const int64_t *pos, float *o) {
    if (rows < 0 || !model_ok(m) || layer < 0 || layer >= m->n_layers || !rows_ok(m, c, rows, slot, pos))
        return -1;
    if (rows == 0) return 0;
    step_t s;
    /* qkv is only read here; the cast lets it sit where layer_in writes it */
    if (!step_alloc(&s, m, c, rows, slot, pos, NULL, (float *)(uintptr_t)qkv)) return -1;
#pragma omp parallel num_threads(s.threads)
    phase_attend(&s, layer, o, NULL, omp_get_thread_num(), omp_get_num_threads());
    step_free(&s);
    return 0;
}

/* Phases 5-8 of ``layer``: x [rows, dim] += the output projection of o [rows, h d] (float32,
 * the attention's output), then += the feed-forward block. */
int llmtop_layer_out(const llmtop_model *m, int layer, int rows, float *x, const float *o) {
    if (rows < 0 || !model_ok(m) || layer < 0 || layer >= m->n_layers) return -1;
    if (rows == 0) return 0;
    step_t s;
    if (!step_alloc(&s, m, NULL, rows, NULL, NULL, x, NULL)) return -1; /* no cache in these phases */
#pragma omp parallel num_threads(s.threads)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        phase_quantize(&s, o, m->n_heads * m->head_dim, &s.a[1], tid, nt);
        barrier(&s.bar, nt);
        phase_residual(&s, &m->layers[layer].wo, &s.a[1], tid, nt);
        barrier(&s.bar, nt);
        ffn_block(&s, &m->layers[layer], tid, nt);
    }
    step_free(&s);
    return 0;
}

/* logits [rows, vocab] of the residual stream x [rows, dim]: final RMSNorm and the LM head. */
int llmtop_logits(const llmtop_model *m, int rows, float *x, float *logits) {
    if (rows < 0 || !model_ok(m) || !m->output) return -1;
    if (rows == 0) return 0;
    step_t s;
    if (!step_alloc(&s, m, NULL, rows, NULL, NULL, x, NULL)) return -1;
#pragma omp parallel num_threads(s.threads)
    {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        phase_norm(&s, m->norm, &s.a[0], tid, nt);
        barrier(&s.bar, nt);
        phase_logits(&s, &s.a[0], logits, tid, nt);
    }
    step_free(&s);
    return 0;
}
