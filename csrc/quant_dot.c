/* quant_dot.c: dot products of weight rows in block formats (q8_0, q4_0,
 * q4_K, q6_K) with x quantized to int8, llama.cpp's way.
 *
 * Dimensions: nr = rows of x in one pass (<= FD_QROWS), n_in = weights per
 * row, nb = n_in / 32 blocks of x. Each block of 32 x values becomes
 * q = rint(x * 127 / amax) (int8, round half to even) with d = amax / 127
 * in float32 (q8_0's scheme with a float32 scale); the block's products
 * are then integer sums, exact, and each costs one float multiply-add.
 * Weights stay in their blocks: a weight w = scale * code - offset gives
 * w . x ~= sum over blocks of d_x * (scale * sum(code q) - offset * sum(q)).
 *
 * x86 (avx2 and avx512 levels alike): 32 bytes at a time, unsigned codes
 * times signed x with vpmaddubsw (pairs summed to int16), then vpmaddwd
 * (to int32; by 1, or by q6_K's per-16 scales). Signed codes (q8_0, and
 * q4_0's code - 8) go in as |w| with x carrying w's sign (vpsignb), as
 * llama.cpp does; offsets (q4_K's mins, q6_K's -32) are taken once per
 * block from the sum of x's codes. Two accumulator chains (even and odd
 * blocks) keep the float adds' latency off the critical path. The avx512
 * level takes two blocks per vector (docs/tuning.md); VNNI is not part of
 * it. Portable: the same sums in plain C.
 */
#include "quant.h"

#if defined(FD_LEVEL_avx512) || defined(FD_LEVEL_avx2)
#define FD_QX86 1
#else
#define FD_QX86 0
#endif

/* ----------------------------------------------------------------------------
 * x to int8 blocks
 * ---------------------------------------------------------------------------- */

#if defined(FD_LEVEL_avx512)
#include <immintrin.h>
#endif

/* q: [rows, n_in]; d, ds: [rows, n_in / 32]; s: [rows, n_in / 16]; x: [rows, n_in].
 * A block holding NaN or inf gets d = NaN (q = 0), so the product is NaN. */
void FD_FN(fd_quantize_x)(int8_t *q, float *d, float *ds, int32_t *s, const float *x, int64_t rows, int64_t n_in) {
    const int64_t nb = rows * n_in / FD_QK;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * FD_QK;
#if defined(FD_LEVEL_avx512)
        { /* the C below's values; GCC does not vectorize its loops (~5% of a decode step at B = 16) */
            const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
            const __m512 a0 = _mm512_abs_ps(x0), a1 = _mm512_abs_ps(x1), big = _mm512_set1_ps(3.402823466e38f);
            const int finite = (_mm512_cmp_ps_mask(a0, big, _CMP_LE_OQ) & _mm512_cmp_ps_mask(a1, big, _CMP_LE_OQ)) == 0xFFFF;
            const float amax = finite ? _mm512_reduce_max_ps(_mm512_max_ps(a0, a1)) : 0.0f;
            const __m512 id = _mm512_set1_ps(finite && amax > 0.0f ? 127.0f / amax : 0.0f);
            d[b] = finite ? amax / 127.0f : NAN;
            const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, id)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, id));
            _mm_storeu_si128((__m128i *)(q + b * FD_QK), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(q + b * FD_QK + 16), _mm512_cvtepi32_epi8(q1));
            s[2 * b] = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(_mm512_cvtepi32_epi8(q0)));
            s[2 * b + 1] = _mm512_reduce_add_epi32(_mm512_cvtepi8_epi32(_mm512_cvtepi32_epi8(q1)));
            ds[b] = d[b] * (float)(s[2 * b] + s[2 * b + 1]);
            continue;
        }
#endif
        float amax = 0.0f;
        int finite = 1;
        for (int i = 0; i < FD_QK; i++) {
            float a = fabsf(xb[i]);
            finite &= a <= 3.402823466e38f;
            amax = a > amax ? a : amax;
        }
        const float id = finite && amax > 0.0f ? 127.0f / amax : 0.0f;
        d[b] = finite ? amax / 127.0f : NAN;
        int8_t *qb = q + b * FD_QK;
        for (int i = 0; i < FD_QK; i++)
            qb[i] = (int8_t)nearbyintf(xb[i] * id);
        for (int h = 0; h < 2; h++) {
            int32_t sum = 0;
            for (int i = 0; i < 16; i++)
                sum += qb[16 * h + i];
            s[2 * b + h] = sum;
        }
        ds[b] = d[b] * (float)(s[2 * b] + s[2 * b + 1]);
    }
}

/* ----------------------------------------------------------------------------
 * x86 helpers: 32 codes at a time
 * ---------------------------------------------------------------------------- */
#if FD_QX86
#include <immintrin.h>

/* u: 32 unsigned codes (< 128 or q8_0's |w|), s: 32 int8. 8 int32 sums of 4 products. */
static inline __m256i dot_u8s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_add_ps(a, _mm_movehl_ps(a, a));
    return _mm_cvtss_f32(_mm_add_ss(a, _mm_movehdup_ps(a)));
}

static inline __m256i load32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
#endif

/* ----------------------------------------------------------------------------
 * One row per format. acc[r] = sum of the row's weights times x[r].
 * ---------------------------------------------------------------------------- */

/* ----------------------------------------------------------------------------
 * q8_0 and q4_0 on x86: blocks of 32 signed codes and one f16 scale
 * ---------------------------------------------------------------------------- */
#if FD_QX86
typedef __m256i (*codes_fn)(const uint8_t *blk); /* the 32 signed codes of one block */

static inline __m256i codes_q8_0(const uint8_t *blk) { return load32(blk + 2); }

static inline __m256i codes_q4_0(const uint8_t *blk) { /* nibbles: code i low of qs[i], i + 16 high; minus 8 */
    const __m128i qs = _mm_loadu_si128((const __m128i *)(blk + 2));
    const __m256i nib = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(qs, 4), qs), _mm256_set1_epi8(15));
    return _mm256_sub_epi8(nib, _mm256_set1_epi8(8));
}

/* acc: [nr]; row: nb blocks of `bytes` (f16 d, then codes). Signed codes go
 * in as |w| with x carrying w's sign. avx512: two blocks per 512-bit vector
 * (half the instructions; one scale per 256-bit half), a last odd block at
 * 256 bits; avx2: one block per vector, two accumulator chains. */
static inline __attribute__((always_inline)) void dot_signed(float *acc, const uint8_t *row, const fd_qx *x,
                                                             int64_t nr, int64_t bytes, codes_fn codes) {
    const int64_t nb = x->n_in / 32;
    __m256 a0[FD_QROWS], a1[FD_QROWS];
    for (int64_t r = 0; r < nr; r++) a0[r] = a1[r] = _mm256_setzero_ps();
    int64_t b = 0;
#if defined(FD_LEVEL_avx512)
    __m512 a[FD_QROWS];
    for (int64_t r = 0; r < nr; r++) a[r] = _mm512_setzero_ps();
    for (; b + 2 <= nb; b += 2) {
        const uint8_t *b0 = row + b * bytes, *b1 = b0 + bytes;
        const __m512i w = _mm512_inserti64x4(_mm512_castsi256_si512(codes(b0)), codes(b1), 1);
        const __m512i aw = _mm512_abs_epi8(w);
        const __mmask64 neg = _mm512_movepi8_mask(w);
        const float d0 = fd_f16_to_f32(b0), d1 = fd_f16_to_f32(b1);
        for (int64_t r = 0; r < nr; r++) {
            const __m512i xv = _mm512_loadu_si512(x->q + r * x->n_in + 32 * b);
            const __m512i xs = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv); /* w's sign */
            const __m512 p = _mm512_cvtepi32_ps(_mm512_madd_epi16(_mm512_maddubs_epi16(aw, xs), _mm512_set1_epi16(1)));
            const __m512 sc = _mm512_insertf32x8(_mm512_set1_ps(d0 * x->d[r * nb + b]),
                                                 _mm256_set1_ps(d1 * x->d[r * nb + b + 1]), 1);
            a[r] = _mm512_fmadd_ps(sc, p, a[r]);
        }
    }
#endif
    for (; b < nb; b++) {
        const uint8_t *blk = row + b * bytes;
        const __m256i w = codes(blk), aw = _mm256_abs_epi8(w);
        const float dw = fd_f16_to_f32(blk);
        __m256 *c = b & 1 ? a1 : a0;
        for (int64_t r = 0; r < nr; r++) {
            const __m256i xs = _mm256_sign_epi8(load32(x->q + r * x->n_in + 32 * b), w); /* w's sign */
            const __m256 p = _mm256_cvtepi32_ps(dot_u8s8(aw, xs));
            c[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x->d[r * nb + b]), p, c[r]);
        }
    }
    for (int64_t r = 0; r < nr; r++) {
        acc[r] = hsum8(_mm256_add_ps(a0[r], a1[r]));
#if defined(FD_LEVEL_avx512)
        acc[r] += _mm512_reduce_add_ps(a[r]);
#endif
    }
}
#endif

/* q8_0 blocks: 34 bytes, f16 d, int8 code[32]; w = d * code */
static inline __attribute__((always_inline)) void dot_q8_0(float *acc, const uint8_t *row, const fd_qx *x, int64_t nr) {
#if FD_QX86
    dot_signed(acc, row, x, nr, 34, codes_q8_0);
#else
    const int64_t nb = x->n_in / 32;
    for (int64_t r = 0; r < nr; r++) {
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 34;
            const int8_t *xq = x->q + r * x->n_in + 32 * b;
            int32_t p = 0;
            for (int i = 0; i < 32; i++) p += (int8_t)blk[2 + i] * xq[i];
            sum += fd_f16_to_f32(blk) * x->d[r * nb + b] * (float)p;
        }
        acc[r] = sum;
    }
#endif
}

/* q4_0 blocks: 18 bytes, f16 d, qs[16] (code i low nibble of qs[i], i + 16 high); w = d * (code - 8) */
static inline __attribute__((always_inline)) void dot_q4_0(float *acc, const uint8_t *row, const fd_qx *x, int64_t nr) {
#if FD_QX86
    dot_signed(acc, row, x, nr, 18, codes_q4_0);
#else
    const int64_t nb = x->n_in / 32;
    for (int64_t r = 0; r < nr; r++) {
        float sum = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * 18;
            const int8_t *xq = x->q + r * x->n_in + 32 * b;
            int32_t p = 0;
            for (int i = 0; i < 16; i++)
                p += ((blk[2 + i] & 15) - 8) * xq[i] + ((blk[2 + i] >> 4) - 8) * xq[16 + i];
            sum += fd_f16_to_f32(blk) * x->d[r * nb + b] * (float)p;
        }
        acc[r] = sum;
    }
#endif
}

/* q4_K super-blocks: 144 bytes, f16 d, f16 dmin, scales[12], qs[128];
 * sub-block j (32 weights): w = d sc_j code - dmin m_j */
static inline __attribute__((always_inline)) void dot_q4_K(float *acc, const uint8_t *row, const fd_qx *x, int64_t nr) {
    const int64_t nb = x->n_in / 32;
    float corr[2][FD_QROWS] = {{0}};
#if FD_QX86
    __m256 a[2][FD_QROWS]; /* two chains: even and odd 32-weight blocks */
    for (int64_t r = 0; r < nr; r++) a[0][r] = a[1][r] = _mm256_setzero_ps();
#else
    float a[2][FD_QROWS] = {{0}};
#endif
    for (int64_t sb = 0; sb < nb / 8; sb++) {
        const uint8_t *blk = row + sb * 144, *s = blk + 4, *qs = blk + 16;
        const float d = fd_f16_to_f32(blk), dmin = fd_f16_to_f32(blk + 2);
#pragma GCC unroll 8 /* so that the chain, j & 1, is known */
        for (int j = 0; j < 8; j++) {
            const int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
            const int mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
            const float ds = d * (float)sc, dm = dmin * (float)mn;
            const int64_t b = 8 * sb + j;
#if FD_QX86
            const __m256i raw = load32(qs + 32 * (j / 2));
            const __m256i w = _mm256_and_si256(j & 1 ? _mm256_srli_epi16(raw, 4) : raw, _mm256_set1_epi8(15));
#endif
            for (int64_t r = 0; r < nr; r++) {
                const float dx = x->d[r * nb + b];
                const int8_t *xq = x->q + r * x->n_in + 32 * b;
#if FD_QX86
                __m256 p = _mm256_cvtepi32_ps(dot_u8s8(w, load32(xq)));
                a[j & 1][r] = _mm256_fmadd_ps(_mm256_set1_ps(ds * dx), p, a[j & 1][r]);
#else
                int32_t p = 0;
                for (int i = 0; i < 32; i++) p += ((qs[32 * (j / 2) + i] >> (4 * (j & 1))) & 15) * xq[i];
                a[j & 1][r] += ds * dx * (float)p;
#endif
                corr[j & 1][r] -= dm * x->ds[r * nb + b];
            }
        }
    }
#if FD_QX86
    for (int64_t r = 0; r < nr; r++) acc[r] = hsum8(_mm256_add_ps(a[0][r], a[1][r])) + corr[0][r] + corr[1][r];
#else
    for (int64_t r = 0; r < nr; r++) acc[r] = a[0][r] + a[1][r] + corr[0][r] + corr[1][r];
#endif
}

/* q6_K super-blocks: 210 bytes, ql[128], qh[64], int8 scales[16], f16 d;
 * sub-block j (16 weights): w = d sc_j (code - 32). Quarter s of half h
 * (32 weights, x block 8 sb + 4 h + s): low 4 bits in the nibble s / 2 of
 * ql[64 h + 32 (s % 2) ..], high 2 bits at bit 2 s of qh[32 h ..]. */
static inline __attribute__((always_inline)) void dot_q6_K(float *acc, const uint8_t *row, const fd_qx *x, int64_t nr) {
    const int64_t nb = x->n_in / 32;
    float corr[2][FD_QROWS] = {{0}};
#if FD_QX86
    __m256 a[2][FD_QROWS]; /* two chains: even and odd 32-weight blocks */
    for (int64_t r = 0; r < nr; r++) a[0][r] = a[1][r] = _mm256_setzero_ps();
#else
    float a[2][FD_QROWS] = {{0}};
#endif
    for (int64_t sb = 0; sb < nb / 8; sb++) {
        const uint8_t *blk = row + sb * 210, *ql = blk, *qh = blk + 128;
        const int8_t *sc = (const int8_t *)(blk + 192);
        const float d = fd_f16_to_f32(blk + 208);
#pragma GCC unroll 8 /* so that the chain, q & 1, is known */
        for (int q = 0; q < 8; q++) {
            const int h = q / 4, s = q % 4, j = 8 * h + 2 * s; /* sub-blocks j, j + 1 */
            const int64_t b = 8 * sb + q;
#if FD_QX86
            __m256i lo = load32(ql + 64 * h + 32 * (s % 2));
            lo = _mm256_and_si256(s / 2 ? _mm256_srli_epi16(lo, 4) : lo, _mm256_set1_epi8(15));
            __m256i hi = _mm256_srlv_epi32(load32(qh + 32 * h), _mm256_set1_epi32(2 * s)); /* any lane width: masked */
            hi = _mm256_slli_epi16(_mm256_and_si256(hi, _mm256_set1_epi8(3)), 4);
            const __m256i w = _mm256_or_si256(lo, hi);
            const __m256i scv = _mm256_set_m128i(_mm_set1_epi16(sc[j + 1]), _mm_set1_epi16(sc[j]));
#endif
            for (int64_t r = 0; r < nr; r++) {
                const float ddx = d * x->d[r * nb + b];
                const int8_t *xq = x->q + r * x->n_in + 32 * b;
                const int32_t *xs = x->s + r * 2 * nb + 2 * b;
#if FD_QX86
                __m256i p16 = _mm256_maddubs_epi16(w, load32(xq));
                __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, scv));
                a[q & 1][r] = _mm256_fmadd_ps(_mm256_set1_ps(ddx), p, a[q & 1][r]);
#else
                int32_t p = 0;
                for (int i = 0; i < 32; i++) {
                    int lo = (ql[64 * h + 32 * (s % 2) + i] >> (4 * (s / 2))) & 15;
                    int hi = (qh[32 * h + i] >> (2 * s)) & 3;
                    p += sc[j + i / 16] * (lo | hi << 4) * xq[i];
                }
                a[q & 1][r] += ddx * (float)p;
#endif
                corr[q & 1][r] -= ddx * (float)(32 * (sc[j] * xs[0] + sc[j + 1] * xs[1]));
            }
        }
    }
#if FD_QX86
    for (int64_t r = 0; r < nr; r++) acc[r] = hsum8(_mm256_add_ps(a[0][r], a[1][r])) + corr[0][r] + corr[1][r];
#else
    for (int64_t r = 0; r < nr; r++) acc[r] = a[0][r] + a[1][r] + corr[0][r] + corr[1][r];
#endif
}

/* one row of x (a decode step at batch 1) gets its own copy, nr a
 * constant: its accumulators then live in registers */
#define FD_DOT(fn) (nr == 1 ? fn(acc, row, x, 1) : fn(acc, row, x, nr))

void FD_FN(fd_dot_blocks)(float *acc, const uint8_t *row, int fmt, const fd_qx *x, int64_t nr) {
    switch (fmt) {
    case FD_FMT_Q8_0: FD_DOT(dot_q8_0); break;
    case FD_FMT_Q4_0: FD_DOT(dot_q4_0); break;
    case FD_FMT_Q4_K: FD_DOT(dot_q4_K); break;
    default: FD_DOT(dot_q6_K); break;
    }
}
