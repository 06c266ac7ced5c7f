/* What the engine's C kernels share between their files (native_matmul.c, native_attention.c,
 * native_forward.c): a block weight, the quantized activations a matmul reads, and the pieces of
 * both kernels that the fused forward (native_forward.c) calls inside its own parallel region.
 * Everything here is internal to the library except the structs, which ctypes mirrors
 * (native_forward.py). */
#ifndef LLMTOP_NATIVE_KERNELS_H
#define LLMTOP_NATIVE_KERNELS_H

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define LLMTOP_QK 32         /* inputs per block */
#define LLMTOP_NG 16         /* columns per group */
#define LLMTOP_PAIR_BLOCK 128 /* bytes of a pair's activation codes per block */

/* y = x @ W.T, W = d * u + m per block of 32 inputs (see native_matmul.c). */
typedef struct {
    int bits, n, k;
    const uint8_t *codes;
    const uint16_t *scale, *offset; /* fp16 [n / 16, k / 32, 16] */
} llmtop_linear;

/* Activations quantized for the matmul: per row, 2k code bytes (per block: 32 high halves, then
 * 32 low halves) and per block the scale s and s * sum(codes); per pair of rows 2q, 2q + 1 the
 * same codes interleaved 4 bytes at a time (128 bytes per block) and the two rows' scales side
 * by side. ``rows`` and ``k`` are what the buffers were sized for; ``nb`` = k / 32. */
typedef struct {
    int rows, k, nb;
    int8_t *xq;
    float *xs, *xss;
    int8_t *xp;
    float *xsp, *xssp;
} llmtop_acts;

/* Quantize blocks [b0, b1) of row r (bf16 values of the whole row at x). */
void llmtop_quantize_blocks(const llmtop_acts *a, int r, const uint16_t *x, int b0, int b1);

/* Interleave blocks [b0, b1) of rows 2q and 2q + 1 (both quantized already) into pair q. */
void llmtop_pack_pair(const llmtop_acts *a, int q, int b0, int b1);

/* Quantize every block of row r and, once both rows of its pair are in, pack the pair (rows are
 * handled in pairs by the callers, so "once both are in" means: r odd). */
void llmtop_quantize_row(const llmtop_acts *a, int r, const uint16_t *x);

/* Output columns [16 g, 16 g + 16) of y = x @ W.T for every row of a (``rows`` of them, quantized
 * and paired): y + r * ldy is row r's column 16 g, bf16. */
void llmtop_matmul_group(const llmtop_linear *w, const llmtop_acts *a, int rows, int g,
                         uint16_t *y, size_t ldy);

/* One query head's attention over ``len`` cached positions: out = softmax(scale q . k) v, in
 * float32; ``scores`` holds ``len`` floats of scratch. The same arithmetic per head as
 * llmtop_decode_attention. */
void llmtop_attend_head(const float *q, const uint16_t *keys, const uint16_t *values, int len,
                        int d, float scale, float *scores, float *out);

/* float32 -> bf16, round to nearest even (as torch). */
static inline uint16_t llmtop_bf16(float x) {
    union { float f; uint32_t u; } v = {x};
    return (uint16_t)((v.u + 0x7FFFu + ((v.u >> 16) & 1u)) >> 16);
}

static inline float llmtop_from_bf16(uint16_t h) {
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}

/* e^x for x <= 0: x = n ln2 + r, |r| <= ln2 / 2, e^r by its Taylor polynomial to r^7
 * (relative error ~2e-8), times 2^n. */
static inline __m512 llmtop_exp_ps(__m512 x) {
    x = _mm512_max_ps(x, _mm512_set1_ps(-104.0f)); /* below: 0 after scalef */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187045e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

#endif
