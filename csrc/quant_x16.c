/* quant_x16.c: q8_0 and q4_0 weights interleaved 16 rows at a time, the
 * layout the AVX-512 kernels read fastest. Weights are repacked into it at
 * load (src/fastdecode/formats.py: QuantizedTensor.repack); GGUF's layout
 * stays the contract: fd_x16_unpack gives its bytes back exactly.
 *
 * Dimensions: n_out = rows of W (a multiple of 16), n_in = weights per row
 * (a multiple of 32), nb = n_in / 32 blocks per row, a group = 16 rows of W
 * (lane r = row 16 g + r), rows = rows of x (nr <= FD_QROWS per pass).
 *
 * Layout: groups one after another; a group is its nb blocks one after
 * another; block b of a group holds the 16 rows' blocks b:
 *   bytes [0, 32): the 16 float16 scales, row r's at 2 r;
 *   then chunks of 64 bytes, chunk k holding 4 bytes of each row (row r's at 4 r):
 *     q8_0: 8 chunks: codes 4k .. 4k+3 of the row, each plus 128 (uint8);
 *     q4_0: 4 chunks: qs[4k .. 4k+3] of the row (low nibbles: weights
 *           4k .. 4k+3, high nibbles: weights 16+4k .. 16+4k+3; offset 8).
 * A block of a group is 16 times a row's block bytes: nothing is added.
 *
 * Why: with one weight row per 32-bit lane, 4 bytes of x broadcast to every
 * lane times one chunk give each of 16 rows its next 4 products (VNNI's
 * vpdpbusd: unsigned weights times signed x, summed into the int32 lanes),
 * so a block costs 8 vpdpbusd for 16 rows, no horizontal sums, and one
 * float multiply-add per row of x; the codes' offset comes off once per
 * block as -offset * sum(x's int8 block), exact in int32. Without VNNI
 * (AVX-512BW only) vpmaddubsw + vpmaddwd do the same sums (q8_0 then
 * signed, |w| times x with w's sign, as quant_dot.c). Other levels: the
 * same integer sums in plain C.
 */
#include "quant.h"

#define X16 16 /* rows of W per group */

static inline int x16_base(int fmt) { return fmt == FD_FMT_Q8_0_X16 ? FD_FMT_Q8_0 : FD_FMT_Q4_0; }
static inline int64_t block_bytes(int fmt) { return x16_base(fmt) == FD_FMT_Q8_0 ? 34 : 18; }

/* ----------------------------------------------------------------------------
 * GGUF rows <-> groups (plain C, once per load; the entry points only)
 * ---------------------------------------------------------------------------- */
#if FD_ENTRY_POINTS
/* x16: the group layout; gguf: [n_out, fd_quant_row_bytes(base, n_in)];
 * both n_out * n_in / 32 * block bytes. to_x16: which way. */
static void x16_convert(uint8_t *x16, uint8_t *gguf, int fmt, int64_t n_out, int64_t n_in, int to_x16) {
    const int64_t bb = block_bytes(fmt), nb = n_in / 32, gb = X16 * bb, codes = bb - 2;
    const uint8_t flip = fmt == FD_FMT_Q8_0_X16 ? 128 : 0;
    for (int64_t g = 0; g < n_out / X16; g++)
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *blk = x16 + (g * nb + b) * gb;
            for (int r = 0; r < X16; r++) {
                uint8_t *row = gguf + ((g * X16 + r) * nb + b) * bb;
                for (int i = 0; i < 2; i++) {
                    if (to_x16) blk[2 * r + i] = row[i];
                    else row[i] = blk[2 * r + i];
                }
                for (int64_t k = 0; k < codes / 4; k++)
                    for (int i = 0; i < 4; i++) {
                        uint8_t *p = blk + 32 + 64 * k + 4 * r + i, *q = row + 2 + 4 * k + i;
                        if (to_x16) *p = (uint8_t)(*q ^ flip);
                        else *q = (uint8_t)(*p ^ flip);
                    }
            }
        }
}

void fd_x16_pack(uint8_t *x16, const uint8_t *gguf, int fmt, int64_t n_out, int64_t n_in) {
    x16_convert(x16, (uint8_t *)gguf, fmt, n_out, n_in, 1); /* reads gguf only */
}

void fd_x16_unpack(uint8_t *gguf, const uint8_t *x16, int fmt, int64_t n_out, int64_t n_in) {
    x16_convert((uint8_t *)x16, gguf, fmt, n_out, n_in, 0); /* reads x16 only */
}
#endif

/* out: [16 * groups, n_in] = the weights of `groups` groups, bit for bit
 * quant.c's decoding of the same GGUF blocks (float(code) * d; d * (nibble - 8)) */
void FD_FN(fd_x16_decode)(float *out, const uint8_t *w, int fmt, int64_t groups, int64_t n_in) {
    const int64_t bb = block_bytes(fmt), nb = n_in / 32, gb = X16 * bb;
    for (int64_t g = 0; g < groups; g++)
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + (g * nb + b) * gb;
            for (int r = 0; r < X16; r++) {
                float *o = out + (g * X16 + r) * n_in + 32 * b;
                const float d = fd_f16_to_f32(blk + 2 * r);
                for (int k = 0; k < (bb - 2) / 4; k++)
                    for (int i = 0; i < 4; i++) {
                        const uint8_t c = blk[32 + 64 * k + 4 * r + i];
                        if (fmt == FD_FMT_Q8_0_X16) {
                            o[4 * k + i] = (float)(int8_t)(c ^ 128) * d;
                        } else {
                            o[4 * k + i] = d * (float)((int)(c & 15) - 8);
                            o[16 + 4 * k + i] = d * (float)((int)(c >> 4) - 8);
                        }
                    }
            }
        }
}

/* ----------------------------------------------------------------------------
 * One group of 16 rows against nr rows of x: acc [nr, 16] = W_g . x[r]
 * ---------------------------------------------------------------------------- */

/* sum of x's int8 block b of row r (two 16-sums) */
static inline int32_t xsum(const fd_qx *x, int64_t r, int64_t b) {
    const int32_t *s = x->s + r * 2 * (x->n_in / 32) + 2 * b;
    return s[0] + s[1];
}

#if defined(FD_LEVEL_avx512)
#include <immintrin.h>

static inline __m512i bcast4(const int8_t *p) { /* x[p .. p+3] in every 32-bit lane */
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

/* The group kernel, written once for both instruction sets: DOT(acc, u, xv)
 * adds to acc's int32 lanes the 4 products of u's bytes (unsigned weights)
 * and xv's (signed x). */
#define X16_GROUP(DOT, OFF)                                                                                \
    const int64_t nb = x->n_in / 32, q8 = fmt == FD_FMT_Q8_0_X16, gb = q8 ? 544 : 288;                    \
    const int32_t off = (OFF);                                                                              \
    __m512 a[FD_QROWS];                                                                                     \
    for (int64_t r = 0; r < nr; r++) a[r] = _mm512_setzero_ps();                                           \
    for (int64_t b = 0; b < nb; b++) {                                                                      \
        const uint8_t *blk = grp + b * gb;                                                                  \
        const __m512 d = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk));                        \
        __m512i c[8];                                                                                       \
        if (q8) {                                                                                           \
            for (int k = 0; k < 8; k++) c[k] = _mm512_loadu_si512(blk + 32 + 64 * k);                      \
        } else {                                                                                            \
            const __m512i lo4 = _mm512_set1_epi8(15);                                                      \
            for (int k = 0; k < 4; k++) {                                                                  \
                const __m512i v = _mm512_loadu_si512(blk + 32 + 64 * k);                                    \
                c[k] = _mm512_and_si512(v, lo4);                                                           \
                c[4 + k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);                                 \
            }                                                                                               \
        }                                                                                                   \
        for (int64_t r = 0; r < nr; r++) {                                                                  \
            const int8_t *xq = x->q + r * x->n_in + 32 * b;                                                 \
            __m512i s0 = _mm512_set1_epi32(off * xsum(x, r, b)), s1 = _mm512_setzero_si512();              \
            for (int k = 0; k < 8; k += 2) { /* c[k] meets x 4k .. 4k+3 (q4_0: high nibbles from 16) */   \
                s0 = DOT(s0, c[k], bcast4(xq + 4 * k));                                                     \
                s1 = DOT(s1, c[k + 1], bcast4(xq + 4 * k + 4));                                             \
            }                                                                                               \
            const __m512 p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));                                  \
            a[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x->d[r * nb + b])), p, a[r]);           \
        }                                                                                                   \
    }                                                                                                       \
    for (int64_t r = 0; r < nr; r++) _mm512_storeu_ps(acc + 16 * r, a[r]);

#define DOT_VNNI(acc, u, xv) _mm512_dpbusd_epi32(acc, u, xv)
__attribute__((target("avx512vnni"))) static inline __attribute__((always_inline)) void
group_vnni(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) {
    X16_GROUP(DOT_VNNI, q8 ? -128 : -8)
}

/* Without VNNI: vpmaddubsw sums byte pairs to int16, which q4_0's codes
 * (< 16) never saturate; q8_0's (code + 128, up to 255) could, so they go
 * back to signed and in as |w| with x carrying w's sign (offset then 0). */
static inline __m512i dot_bw(__m512i acc, __m512i u, __m512i xv, int q8) {
    if (q8) {
        const __m512i w = _mm512_xor_si512(u, _mm512_set1_epi8((char)0x80));
        xv = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(w), _mm512_setzero_si512(), xv);
        u = _mm512_abs_epi8(w);
    }
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, xv), _mm512_set1_epi16(1)));
}
static inline __attribute__((always_inline)) void group_bw(float *acc, const uint8_t *grp, int fmt,
                                                              const fd_qx *x, int64_t nr) {
#define DOT_BW(acc, u, xv) dot_bw(acc, u, xv, (int)q8)
    X16_GROUP(DOT_BW, q8 ? 0 : -8) /* q8_0's signed products need no offset */
#undef DOT_BW
}
#endif

#if !defined(FD_LEVEL_avx512)
/* acc: [nr, 16]; grp: one group's nb blocks; plain C */
static inline void group_scalar(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) {
    const int64_t nb = x->n_in / 32, q8 = fmt == FD_FMT_Q8_0_X16, gb = q8 ? 544 : 288;
    const int32_t off = q8 ? -128 : -8;
    for (int64_t i = 0; i < nr * X16; i++) acc[i] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *blk = grp + b * gb;
        for (int64_t r = 0; r < nr; r++) {
            const int8_t *xq = x->q + r * x->n_in + 32 * b;
            const int32_t base = off * xsum(x, r, b);
            for (int l = 0; l < X16; l++) {
                int32_t s = base;
                for (int k = 0; k < (q8 ? 8 : 4); k++)
                    for (int i = 0; i < 4; i++) {
                        const int c = blk[32 + 64 * k + 4 * l + i];
                        if (q8) s += c * xq[4 * k + i];
                        else s += (c & 15) * xq[4 * k + i] + (c >> 4) * xq[16 + 4 * k + i];
                    }
                acc[r * X16 + l] += fd_f16_to_f32(blk + 2 * l) * x->d[r * nb + b] * (float)s;
            }
        }
    }
}
#endif

/* ----------------------------------------------------------------------------
 * out[:, lo:hi] of out [rows, n_out] = x W^T + bias, W in groups
 * ---------------------------------------------------------------------------- */

/* out rows r0 .. r0 + nr, columns of groups g0 .. g1; part: those rows of x */
static inline __attribute__((always_inline)) void store_group(float *out, const float *acc, const float *bias,
                                                              int64_t r0, int64_t nr, int64_t n_out, int64_t g) {
    for (int64_t r = 0; r < nr; r++)
        for (int l = 0; l < X16; l++)
            out[(r0 + r) * n_out + g * X16 + l] = acc[16 * r + l] + (bias ? bias[g * X16 + l] : 0.0f);
}

/* One pass of nr rows of x over groups g0 .. g1, with GROUP as the group
 * kernel (one row of x gets its own copy, nr a constant: its accumulators
 * then stay in registers). */
#define X16_PASS(NAME, ATTR, GROUP)                                                                          \
    ATTR static void NAME(float *out, const fd_qx *part, const uint8_t *w, const float *bias, int fmt,       \
                          int64_t r0, int64_t nr, int64_t n_out, int64_t g0, int64_t g1, int64_t gbytes) {   \
        for (int64_t g = g0; g < g1; g++) {                                                                 \
            float acc[FD_QROWS * X16];                                                                      \
            if (nr == 1) GROUP(acc, w + g * gbytes, fmt, part, 1);                                          \
            else GROUP(acc, w + g * gbytes, fmt, part, nr);                                                 \
            store_group(out, acc, bias, r0, nr, n_out, g);                                                  \
        }                                                                                                   \
    }
#if defined(FD_LEVEL_avx512)
X16_PASS(pass_vnni, __attribute__((target("avx512vnni"))), group_vnni)
X16_PASS(pass_bw, , group_bw)
#else
X16_PASS(pass_scalar, , group_scalar)
#endif

/* lo, hi: the groups from the first row at or after each (callers split on
 * multiples of 16: fd_split16) */
void FD_FN(fd_x16_cols)(float *out, const fd_qx *xq, const uint8_t *w, const float *bias, int fmt, int64_t rows,
                        int64_t n_in, int64_t n_out, int64_t lo, int64_t hi) {
    const int64_t nb = n_in / FD_QK, gbytes = nb * X16 * block_bytes(fmt);
    const int64_t g0 = (lo + X16 - 1) / X16, g1 = (hi + X16 - 1) / X16 < n_out / X16 ? (hi + X16 - 1) / X16 : n_out / X16;
    for (int64_t r0 = 0; r0 < rows; r0 += FD_QROWS) {
        const int64_t nr = rows - r0 < FD_QROWS ? rows - r0 : FD_QROWS;
        const fd_qx part = {xq->q + r0 * n_in, xq->d + r0 * nb, xq->ds + r0 * nb, xq->s + r0 * 2 * nb, n_in};
#if defined(FD_LEVEL_avx512)
        if (fd_vnni_enabled()) pass_vnni(out, &part, w, bias, fmt, r0, nr, n_out, g0, g1, gbytes);
        else pass_bw(out, &part, w, bias, fmt, r0, nr, n_out, g0, g1, gbytes);
#else
        pass_scalar(out, &part, w, bias, fmt, r0, nr, n_out, g0, g1, gbytes);
#endif
    }
}
