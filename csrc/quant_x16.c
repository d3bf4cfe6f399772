/* quant_x16.c: block-format weights (q8_0, q4_0, q4_K, q6_K) interleaved
 * 16 rows at a time, the layout the AVX-512 kernels read fastest. Weights
 * are repacked into it at load (src/fastdecode/formats.py:
 * QuantizedTensor.repack); GGUF's layout stays the contract: fd_x16_unpack
 * gives its bytes back exactly.
 *
 * Dimensions: n_out = rows of W, n_in = weights per row
 * (a multiple of the block), nb = n_in / 32 int8 blocks of x, a group = 16
 * rows of W (lane l = row 16 g + l), rows = rows of x (nr <= X16_ROWS a pass).
 *
 * Layout: groups one after another, then the last n_out % 16 rows as GGUF
 * lays them out; a group is its blocks (32 weights, or
 * 256 for the K formats) one after another; block b of a group holds the
 * 16 rows' blocks b, field by field in GGUF's order, each field 16 times
 * its size: 2-byte fields (the f16 scales) as 16 values, row l's at 2 l;
 * the rest in chunks of 64 bytes, chunk k holding bytes 4k .. 4k+3 of the
 * field of each row (row l's at 4 l). fd_x16_index says where each byte
 * goes (quant.h). q8_0's codes are stored plus 128 (uint8). So:
 *   q8_0 (544 bytes): d[16]; codes: 8 chunks
 *   q4_0 (288):       d[16]; qs: 4 chunks (low nibbles: weights 4k.., high: 16+4k..)
 *   q4_K (2304):      d[16]; dmin[16]; scales: 3 chunks; qs: 32 chunks
 *   q6_K (3360):      d[16]; then per half h (1664 bytes): scales 8 h ..
 *                     8 h + 7 (2 chunks), and for k < 8: ql 64 h + 4 k..,
 *                     ql 64 h + 32 + 4 k.., qh 32 h + 4 k.. (3 chunks)
 * Nothing is added: a block of a group is 16 times a row's block bytes.
 *
 * Why: with one weight row per 32-bit lane, 4 bytes of x broadcast to every
 * lane times one chunk give each of 16 rows its next 4 products (VNNI's
 * vpdpbusd: unsigned codes times signed x, summed into int32 lanes), so 32
 * weights of 16 rows cost 8 vpdpbusd, no horizontal sums; the codes'
 * offsets (128, 8, q6_K's 32) and q4_K's mins come off per block of x as
 * -offset * sum(x's int8 block), exact in int32, or one float multiply-add.
 * Without VNNI (AVX-512BW) vpmaddubsw + vpmaddwd make the same sums (q8_0
 * then signed, |w| times x with w's sign, as quant_dot.c). Other levels
 * take each row back out to GGUF's layout and use quant_dot.c.
 */
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#define X16 16 /* rows of W per group */
/* Rows of x per pass over a group of W (runs of 16, 8, 4, 2, 1), and how
 * many blocks ahead a many-row pass prefetches W (docs/batch.md) */
#define X16_ROWS 16
#define X16_AHEAD 4

/* ----------------------------------------------------------------------------
 * GGUF rows <-> groups
 * ---------------------------------------------------------------------------- */

/* x16: the groups; gguf: [n_out, fd_quant_row_bytes(base, n_in)] (the
 * same count of bytes); to_x16: which way */
void FD_FN(fd_x16_convert)(uint8_t *x16, uint8_t *gguf, int fmt, int64_t n_out, int64_t n_in, int to_x16) {
    const int base = fd_x16_base(fmt);
    const int64_t bb = fd_quant_row_bytes(base, n_in) / (n_in / fd_x16_block(fmt)), nblk = n_in / fd_x16_block(fmt);
    const int64_t tail = n_out / X16 * X16 * nblk * bb; /* the last n_out % 16 rows stay as they are */
    for (int64_t i = tail; i < n_out * nblk * bb; i++) {
        if (to_x16) x16[i] = gguf[i];
        else gguf[i] = x16[i];
    }
    for (int64_t g = 0; g < n_out / X16; g++)
        for (int64_t b = 0; b < nblk; b++) {
            uint8_t *blk = x16 + (g * nblk + b) * X16 * bb;
            for (int r = 0; r < X16; r++) {
                uint8_t *row = gguf + ((g * X16 + r) * nblk + b) * bb;
                for (int64_t j = 0; j < bb; j++) {
                    const uint8_t flip = base == FD_FMT_Q8_0 && j >= 2 ? 128 : 0;
                    uint8_t *p = blk + fd_x16_index(base, j, r);
                    if (to_x16) *p = (uint8_t)(row[j] ^ flip);
                    else row[j] = (uint8_t)(*p ^ flip);
                }
            }
        }
}

/* out: [n_in] = row r of w ([n_out, row bytes] in format fmt: GGUF's
 * layout, or x16) decoded, as fd_dequantize_rows: an embedding lookup. An
 * x16 row is gathered block by block (no allocation: a step calls this per
 * token). */
void FD_FN(fd_lookup_row)(float *out, const uint8_t *w, int fmt, int64_t r, int64_t n_out, int64_t n_in) {
    const int x16 = fd_fmt_x16(fmt), base = x16 ? fd_x16_base(fmt) : fmt;
    const int64_t rb = fd_quant_row_bytes(fmt, n_in);
    if (!x16 || r >= n_out / X16 * X16) {
        FD_FN(fd_dequantize_rows)(out, w + r * rb, base, 1, n_in);
        return;
    }
    const int64_t blk = fd_x16_block(fmt), nblk = n_in / blk, bb = rb / nblk;
    const uint8_t *grp = w + r / X16 * X16 * rb;
    uint8_t one[210]; /* one block of the row: at most q6_K's 210 bytes */
    for (int64_t b = 0; b < nblk; b++) {
        fd_x16_block_of(one, grp + b * X16 * bb, base, bb, (int)(r % X16));
        FD_FN(fd_dequantize_rows)(out + b * blk, one, base, 1, blk);
    }
}

#if FD_ENTRY_POINTS
void fd_x16_rows(uint8_t *gguf, const uint8_t *x16, int fmt, const int64_t *ids, int64_t n, int64_t n_out,
                 int64_t n_in) {
    const int64_t rb = fd_quant_row_bytes(fmt, n_in);
    for (int64_t i = 0; i < n; i++) {
        if (ids[i] >= n_out / X16 * X16) memcpy(gguf + i * rb, x16 + ids[i] * rb, (size_t)rb);
        else fd_x16_row(gguf + i * rb, x16 + ids[i] / X16 * X16 * rb, fmt, (int)(ids[i] % X16), n_in);
    }
}

void fd_x16_pack(uint8_t *x16, const uint8_t *gguf, int fmt, int64_t n_out, int64_t n_in) {
    fd_x16_convert_portable(x16, (uint8_t *)gguf, fmt, n_out, n_in, 1); /* reads gguf only */
}

void fd_x16_unpack(uint8_t *gguf, const uint8_t *x16, int fmt, int64_t n_out, int64_t n_in) {
    fd_x16_convert_portable((uint8_t *)x16, gguf, fmt, n_out, n_in, 0); /* reads x16 only */
}
#endif

/* ----------------------------------------------------------------------------
 * AVX-512: one group of 16 rows against nr rows of x: acc [nr, 16] = W_g . x[r]
 * ---------------------------------------------------------------------------- */
#if defined(FD_LEVEL_avx512)
#include <immintrin.h>

static inline __m512i bcast4(const int8_t *p) { /* x[p .. p+3] in every 32-bit lane */
    int32_t v;
    memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

static inline __m512i load64(const uint8_t *p) { return _mm512_loadu_si512(p); }

/* lo, hi: the low and the high nibbles of v's bytes */
static inline void nibbles(__m512i *lo, __m512i *hi, __m512i v) {
    *lo = _mm512_and_si512(v, _mm512_set1_epi8(15));
    *hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), _mm512_set1_epi8(15));
}

/* the 16 rows' 2-byte field at p (f16) as floats */
static inline __m512 scales16(const uint8_t *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }

/* sum of x's int8 values b*32 + 16h .. +16 of row r (h = 0, 1) or the whole block (h = 2) */
static inline int32_t xsum(const fd_qx *x, int64_t r, int64_t b, int h) {
    const int32_t *s = x->s + r * 2 * (x->n_in / 32) + 2 * b;
    return h == 2 ? s[0] + s[1] : s[h];
}

/* Each kernel is written once for both instruction sets: DOT(acc, u, xv)
 * adds to acc's int32 lanes the 4 products of u's bytes (unsigned codes)
 * and xv's (signed x); Q8 says whether q8_0's codes need the signed path
 * (no VNNI: no offset then). */
#define GROUP_Q8_Q4(DOT, Q8SIGNED)                                                                         \
    const int64_t nb = x->n_in / 32, q8 = fmt == FD_FMT_Q8_0_X16, gb = q8 ? 544 : 288;                    \
    const int32_t off = q8 ? (Q8SIGNED ? 0 : -128) : -8;                                                    \
    __m512 a[X16_ROWS];                                                                                     \
    for (int64_t r = 0; r < nr; r++) a[r] = _mm512_setzero_ps();                                           \
    for (int64_t b = 0; b < nb; b++) {                                                                      \
        const uint8_t *blk = grp + b * gb;                                                                  \
        const __m512 d = scales16(blk);                                                                     \
        if (nr >= 4) /* many rows: a stream too slow for the hardware prefetcher to run ahead */           \
            for (int i = 0; i < gb; i += 64) _mm_prefetch((const char *)blk + X16_AHEAD * gb + i, _MM_HINT_T0); \
        __m512i c[8]; /* c[k] meets x 4k .. 4k+3 (q4_0: high nibbles from 16) */                           \
        if (q8) {                                                                                           \
            for (int k = 0; k < 8; k++) c[k] = load64(blk + 32 + 64 * k);                                  \
        } else {                                                                                            \
            for (int k = 0; k < 4; k++) nibbles(&c[k], &c[4 + k], load64(blk + 32 + 64 * k));              \
        }                                                                                                   \
        _Pragma("GCC unroll 16") /* nr constant: the accumulators in registers */                          \
        for (int64_t r = 0; r < nr; r++) {                                                                  \
            const int8_t *xq = x->q + r * x->n_in + 32 * b;                                                 \
            __m512i s0 = _mm512_set1_epi32(off * xsum(x, r, b, 2)), s1 = _mm512_setzero_si512();           \
            for (int k = 0; k < 8; k += 2) {                                                                \
                s0 = DOT(s0, c[k], bcast4(xq + 4 * k));                                                     \
                s1 = DOT(s1, c[k + 1], bcast4(xq + 4 * k + 4));                                             \
            }                                                                                               \
            const __m512 p = _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1));                                  \
            a[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x->d[r * nb + b])), p, a[r]);           \
        }                                                                                                   \
    }                                                                                                       \
    for (int64_t r = 0; r < nr; r++) _mm512_storeu_ps(acc + 16 * r, a[r]);

/* q4_K: sub-block j (32 weights, x block 8 sb + j): w = d sc_j code - dmin m_j.
 * The 6-bit scales and mins (ggml's get_scale_min_k4) are decoded for the
 * 16 lanes once per super-block, to floats d sc_j and dmin m_j. */
#define GROUP_Q4_K(DOT)                                                                                    \
    const int64_t nb = x->n_in / 32;                                                                        \
    __m512 a[X16_ROWS];                                                                                     \
    for (int64_t r = 0; r < nr; r++) a[r] = _mm512_setzero_ps();                                           \
    for (int64_t sb = 0; sb < nb / 8; sb++) {                                                               \
        const uint8_t *blk = grp + sb * 2304, *qs = blk + 256;                                              \
        const __m512 d = scales16(blk), dmin = scales16(blk + 32);                                          \
        const __m512i A = load64(blk + 64), B = load64(blk + 128), C = load64(blk + 192), m6 = _mm512_set1_epi32(63); \
        __m512 dsc[8], dm[8];                                                                               \
        for (int i = 0; i < 4; i++) {                                                                      \
            const __m512i a8 = _mm512_srli_epi32(A, 8 * i), b8 = _mm512_srli_epi32(B, 8 * i),             \
                          c8 = _mm512_srli_epi32(C, 8 * i), m4 = _mm512_set1_epi32(15);                     \
            const __m512i hi_a = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(a8, 6), _mm512_set1_epi32(3)), 4); \
            const __m512i hi_b = _mm512_slli_epi32(_mm512_and_si512(_mm512_srli_epi32(b8, 6), _mm512_set1_epi32(3)), 4); \
            dsc[i] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_and_si512(a8, m6)));                      \
            dm[i] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(_mm512_and_si512(b8, m6)));                    \
            dsc[4 + i] = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_or_si512(_mm512_and_si512(c8, m4), hi_a))); \
            dm[4 + i] = _mm512_mul_ps(dmin, _mm512_cvtepi32_ps(                                           \
                _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi32(c8, 4), m4), hi_b)));                    \
        }                                                                                                   \
        for (int p = 0; p < 4; p++) { /* sub-blocks 2p (low nibbles) and 2p + 1 (high) */                  \
            __m512i lo[8], hi[8];                                                                           \
            for (int k = 0; k < 8; k++) nibbles(&lo[k], &hi[k], load64(qs + 64 * (8 * p + k)));           \
            for (int64_t r = 0; r < nr; r++) {                                                              \
                const int64_t b0 = 8 * sb + 2 * p;                                                          \
                const int8_t *x0 = x->q + r * x->n_in + 32 * b0, *x1 = x0 + 32;                             \
                __m512i s0 = _mm512_setzero_si512(), s1 = s0, t0 = s0, t1 = s0;                             \
                for (int k = 0; k < 8; k += 2) {                                                            \
                    s0 = DOT(s0, lo[k], bcast4(x0 + 4 * k));                                                \
                    s1 = DOT(s1, lo[k + 1], bcast4(x0 + 4 * k + 4));                                        \
                    t0 = DOT(t0, hi[k], bcast4(x1 + 4 * k));                                                \
                    t1 = DOT(t1, hi[k + 1], bcast4(x1 + 4 * k + 4));                                        \
                }                                                                                           \
                const float dx0 = x->d[r * nb + b0], dx1 = x->d[r * nb + b0 + 1];                           \
                __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(dsc[2 * p], _mm512_set1_ps(dx0)),                 \
                                           _mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)), a[r]);             \
                v = _mm512_fmadd_ps(_mm512_mul_ps(dsc[2 * p + 1], _mm512_set1_ps(dx1)),                    \
                                    _mm512_cvtepi32_ps(_mm512_add_epi32(t0, t1)), v);                       \
                v = _mm512_fnmadd_ps(dm[2 * p], _mm512_set1_ps(x->ds[r * nb + b0]), v);                    \
                a[r] = _mm512_fnmadd_ps(dm[2 * p + 1], _mm512_set1_ps(x->ds[r * nb + b0 + 1]), v);         \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    for (int64_t r = 0; r < nr; r++) _mm512_storeu_ps(acc + 16 * r, a[r]);

/* q6_K, half h of a super-block (128 weights, x blocks 8 sb + 4 h + s,
 * s < 4) at p: chunk k (< 8) of L0 (ql bytes 64 h + 4 k ..), L1 (ql
 * 64 h + 32 + 4 k ..) and H (qh 32 h + 4 k ..) hold, for the 16 rows, 4
 * weights of each quarter s: low 4 bits in L0's (s = 0, 2) or L1's (s = 1,
 * 3) low (s < 2) or high nibbles, high 2 bits at bit 2 s of H. The four
 * codes of a chunk cost two shifts, an and and a ternlog each. */
static inline __attribute__((always_inline)) void q6K_codes(__m512i c[4], const uint8_t *p, int k) {
    const __m512i L0 = load64(p + 128 + 192 * k), L1 = load64(p + 192 + 192 * k), H = load64(p + 256 + 192 * k);
    const __m512i m4 = _mm512_set1_epi8(15), m30 = _mm512_set1_epi8(0x30);
    c[0] = _mm512_ternarylogic_epi32(L0, m4, _mm512_and_si512(_mm512_slli_epi16(H, 4), m30), 0xEA); /* A & B | C */
    c[1] = _mm512_ternarylogic_epi32(L1, m4, _mm512_and_si512(_mm512_slli_epi16(H, 2), m30), 0xEA);
    c[2] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(L0, 4), m4, _mm512_and_si512(H, m30), 0xEA);
    c[3] = _mm512_ternarylogic_epi32(_mm512_srli_epi16(L1, 4), m4, _mm512_and_si512(_mm512_srli_epi16(H, 2), m30), 0xEA);
}

/* q6_K: w = d sc_j (code - 32), sub-block j = 8 h + 2 s (+1 for chunks
 * k >= 4). The super-block is read once, in address order (a layout whose
 * fields lie apart, as GGUF's ql, qh, scales, read at 8-10 GB/s from DRAM
 * on Zen 4 against 23-25 in order: docs/performance-formats.md). One row
 * of x meets the codes as they are made; more rows read them back from
 * cs[] (L1). */
#define GROUP_Q6_K(DOT)                                                                                    \
    const int64_t nb = x->n_in / 32;                                                                        \
    __m512 a[X16_ROWS];                                                                                     \
    for (int64_t r = 0; r < nr; r++) a[r] = _mm512_setzero_ps();                                           \
    for (int64_t sb = 0; sb < nb / 8; sb++) {                                                               \
        const uint8_t *blk = grp + sb * 3360;                                                               \
        const __m512 d = scales16(blk);                                                                     \
        for (int h = 0; h < 2; h++) {                                                                       \
            const int64_t b0 = 8 * sb + 4 * h;                                                              \
            const uint8_t *p = blk + 32 + 1664 * h;                                                         \
            const __m512i S0 = load64(p), S1 = load64(p + 64);                                              \
            __m512i u[X16_ROWS][4][2]; /* [r][s][k >= 4]: int32 sums */                                     \
            __m512i cs[8][4]; /* [k][s]: the codes, for rows after the first */                            \
            for (int64_t r = 0; r < nr; r++)                                                               \
                for (int s = 0; s < 4; s++) {                                                               \
                    u[r][s][0] = _mm512_set1_epi32(-32 * xsum(x, r, b0 + s, 0));                           \
                    u[r][s][1] = _mm512_set1_epi32(-32 * xsum(x, r, b0 + s, 1));                           \
                }                                                                                           \
            _Pragma("GCC unroll 8")                                                                         \
            for (int k = 0; k < 8; k++) {                                                                   \
                q6K_codes(cs[k], p, k);                                                                     \
                const int8_t *x0 = x->q + 32 * b0 + 4 * k;                                                  \
                for (int s = 0; s < 4; s++) u[0][s][k >= 4] = DOT(u[0][s][k >= 4], cs[k][s], bcast4(x0 + 32 * s)); \
            }                                                                                               \
            for (int64_t r = 1; r < nr; r++)                                                                \
                for (int k = 0; k < 8; k++) {                                                               \
                    const int8_t *xr = x->q + r * x->n_in + 32 * b0 + 4 * k;                                \
                    for (int s = 0; s < 4; s++) u[r][s][k >= 4] = DOT(u[r][s][k >= 4], cs[k][s], bcast4(xr + 32 * s)); \
                }                                                                                           \
            _Pragma("GCC unroll 4")                                                                         \
            for (int s = 0; s < 4; s++) { /* int8 scales of sub-blocks 8 h + 2 s, +1: bytes 2 (s % 2) of S[s / 2] */ \
                const __m512i S = s < 2 ? S0 : S1;                                                          \
                const __m512i sc0 = _mm512_srai_epi32(_mm512_slli_epi32(S, 24 - 16 * (s % 2)), 24);       \
                const __m512i sc1 = _mm512_srai_epi32(_mm512_slli_epi32(S, 16 - 16 * (s % 2)), 24);       \
                for (int64_t r = 0; r < nr; r++) {                                                          \
                    const __m512i t = _mm512_add_epi32(_mm512_mullo_epi32(sc0, u[r][s][0]),                \
                                                       _mm512_mullo_epi32(sc1, u[r][s][1]));               \
                    a[r] = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_set1_ps(x->d[r * nb + b0 + s])),        \
                                           _mm512_cvtepi32_ps(t), a[r]);                                    \
                }                                                                                           \
            }                                                                                               \
        }                                                                                                   \
    }                                                                                                       \
    for (int64_t r = 0; r < nr; r++) _mm512_storeu_ps(acc + 16 * r, a[r]);

#define DOT_VNNI(acc, u, xv) _mm512_dpbusd_epi32(acc, u, xv)
#define VNNI_FN __attribute__((target("avx512vnni"))) static inline __attribute__((always_inline)) void
VNNI_FN q8q4_vnni(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) { GROUP_Q8_Q4(DOT_VNNI, 0) }
VNNI_FN q4K_vnni(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) { (void)fmt; GROUP_Q4_K(DOT_VNNI) }
VNNI_FN q6K_vnni(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) { (void)fmt; GROUP_Q6_K(DOT_VNNI) }

/* Without VNNI: vpmaddubsw sums byte pairs to int16, which codes below 64
 * never saturate; q8_0's (code + 128, up to 255) could, so they go back to
 * signed and in as |w| with x carrying w's sign. */
static inline __m512i dot_bw(__m512i acc, __m512i u, __m512i xv) {
    return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, xv), _mm512_set1_epi16(1)));
}
static inline __m512i dot_bw_signed(__m512i acc, __m512i u, __m512i xv) {
    const __m512i w = _mm512_xor_si512(u, _mm512_set1_epi8((char)0x80));
    xv = _mm512_mask_sub_epi8(xv, _mm512_movepi8_mask(w), _mm512_setzero_si512(), xv);
    return dot_bw(acc, _mm512_abs_epi8(w), xv);
}
#define DOT_BW(acc, u, xv) (q8 ? dot_bw_signed(acc, u, xv) : dot_bw(acc, u, xv))
#define BW_FN static inline __attribute__((always_inline)) void
BW_FN q8q4_bw(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) { GROUP_Q8_Q4(DOT_BW, 1) }
BW_FN q4K_bw(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) { (void)fmt; GROUP_Q4_K(dot_bw) }
BW_FN q6K_bw(float *acc, const uint8_t *grp, int fmt, const fd_qx *x, int64_t nr) { (void)fmt; GROUP_Q6_K(dot_bw) }
#endif

/* ----------------------------------------------------------------------------
 * out[:, lo:hi] of out [rows, n_out] = x W^T + bias, W in groups
 * ---------------------------------------------------------------------------- */

static inline __attribute__((always_inline)) void store_group(float *out, const float *acc, const float *bias,
                                                              int64_t r0, int64_t nr, int64_t n_out, int64_t g) {
    for (int64_t r = 0; r < nr; r++)
        for (int l = 0; l < X16; l++)
            out[(r0 + r) * n_out + g * X16 + l] = acc[16 * r + l] + (bias ? bias[g * X16 + l] : 0.0f);
}

/* x's rows r0 .. r0 + nr as a fd_qx of their own */
static inline fd_qx rows_of(const fd_qx *xq, int64_t r0) {
    const int64_t nb = xq->n_in / FD_QK;
    return (fd_qx){xq->q + r0 * xq->n_in, xq->d + r0 * nb, xq->ds + r0 * nb, xq->s + r0 * 2 * nb, xq->n_in};
}

/* All rows of x against groups g0 .. g1 with GROUP as the kernel: each
 * group meets every row while it is in L1/L2 (read from memory once per
 * call, however many rows), in runs of 16, 8, 4, 2, 1 rows, each run a
 * constant count so that its accumulators stay in registers. */
#define X16_RUN(GROUP, N)                                                                                   \
    if (rows - r0 >= N) {                                                                                   \
        const fd_qx part = rows_of(xq, r0);                                                                 \
        GROUP(acc, w + g * gbytes, fmt, &part, N);                                                          \
        store_group(out, acc, bias, r0, N, n_out, g);                                                       \
        r0 += N;                                                                                            \
        continue;                                                                                           \
    }
#define X16_PASS(NAME, ATTR, GROUP)                                                                         \
    ATTR static void NAME(float *out, const fd_qx *xq, const uint8_t *w, const float *bias, int fmt,        \
                          int64_t rows, int64_t n_out, int64_t g0, int64_t g1, int64_t gbytes) {            \
        for (int64_t g = g0; g < g1; g++) {                                                                 \
            float acc[X16_ROWS * X16];                                                                      \
            for (int64_t r0 = 0; r0 < rows;) {                                                              \
                _Static_assert(X16_ROWS == 16, "the runs below");                                           \
                X16_RUN(GROUP, 16) X16_RUN(GROUP, 8) X16_RUN(GROUP, 4) X16_RUN(GROUP, 2) X16_RUN(GROUP, 1)  \
            }                                                                                               \
        }                                                                                                   \
    }
#if defined(FD_LEVEL_avx512)
#define VNNI_ATTR __attribute__((target("avx512vnni")))
X16_PASS(pass_q8q4_vnni, VNNI_ATTR, q8q4_vnni)
X16_PASS(pass_q4K_vnni, VNNI_ATTR, q4K_vnni)
X16_PASS(pass_q6K_vnni, VNNI_ATTR, q6K_vnni)
X16_PASS(pass_q8q4_bw, , q8q4_bw)
X16_PASS(pass_q4K_bw, , q4K_bw)
X16_PASS(pass_q6K_bw, , q6K_bw)
#endif

/* Columns lo .. hi: the groups from the first row at or after lo (callers
 * split on multiples of 16: fd_split16), then the tail rows (past the last
 * whole group, in GGUF's layout) in lo .. hi, with quant_dot.c. Levels
 * below avx512 take each row of a group back to GGUF's layout (row: [row
 * bytes] scratch) and use quant_dot.c too; without the scratch (no memory)
 * those columns are NaN. */
void FD_FN(fd_x16_cols)(float *out, const fd_qx *xq, const uint8_t *w, const float *bias, int fmt, int64_t rows,
                        int64_t n_in, int64_t n_out, int64_t lo, int64_t hi) {
    const int base = fd_x16_base(fmt);
    const int64_t rb = fd_quant_row_bytes(base, n_in), gbytes = X16 * rb;
    const int64_t g0 = (lo + X16 - 1) / X16, g1 = (hi + X16 - 1) / X16 < n_out / X16 ? (hi + X16 - 1) / X16 : n_out / X16;
    const int64_t t0 = lo > n_out / X16 * X16 ? lo : n_out / X16 * X16; /* the tail rows in lo .. hi */
#if defined(FD_LEVEL_avx512)
    const int vnni = fd_vnni_enabled();
    if (base == FD_FMT_Q4_K) (vnni ? pass_q4K_vnni : pass_q4K_bw)(out, xq, w, bias, fmt, rows, n_out, g0, g1, gbytes);
    else if (base == FD_FMT_Q6_K) (vnni ? pass_q6K_vnni : pass_q6K_bw)(out, xq, w, bias, fmt, rows, n_out, g0, g1, gbytes);
    else (vnni ? pass_q8q4_vnni : pass_q8q4_bw)(out, xq, w, bias, fmt, rows, n_out, g0, g1, gbytes);
#else
    uint8_t *row = malloc((size_t)(gbytes / X16 + 1));
#endif
    for (int64_t r0 = 0; r0 < rows; r0 += FD_QROWS) {
        const int64_t nr = rows - r0 < FD_QROWS ? rows - r0 : FD_QROWS;
        const fd_qx part = rows_of(xq, r0);
#if !defined(FD_LEVEL_avx512)
        for (int64_t g = g0; g < g1; g++)
            for (int l = 0; l < X16; l++) {
                float acc[FD_QROWS];
                if (row) {
                    fd_x16_row(row, w + g * gbytes, fmt, l, n_in);
                    FD_FN(fd_dot_blocks)(acc, row, base, &part, nr);
                }
                for (int64_t r = 0; r < nr; r++)
                    out[(r0 + r) * n_out + g * X16 + l] = row ? acc[r] + (bias ? bias[g * X16 + l] : 0.0f) : NAN;
            }
#endif
        for (int64_t o = t0; o < hi; o++) {
            float acc[FD_QROWS];
            FD_FN(fd_dot_blocks)(acc, w + o * rb, base, &part, nr);
            for (int64_t r = 0; r < nr; r++)
                out[(r0 + r) * n_out + o] = acc[r] + (bias ? bias[o] : 0.0f);
        }
    }
#if !defined(FD_LEVEL_avx512)
    free(row);
#endif
}
