/* quant.h: what quant.c and quant_dot.c share (one SIMD level each; the
 * FD_FN suffix keeps the levels apart). Not part of the C API. */
#ifndef FD_QUANT_H
#define FD_QUANT_H

#include "fastdecode.h"
#include "simd.h"

#define FD_QROWS 8 /* rows of x per pass over W, as linear.c */
#define FD_QK 32   /* x is quantized in blocks of this many values */

static inline float fd_f32_from_bits(uint32_t b) {
    float f;
    memcpy(&f, &b, 4);
    return f;
}

/* p: 2 bytes, little-endian IEEE float16. Exact (F16C's vcvtph2ps where
 * the level has it; the portable form gives NumPy's bits for NaN too). */
static inline float fd_f16_to_f32(const uint8_t *p) {
    uint16_t h = (uint16_t)(p[0] | p[1] << 8);
#if defined(FD_LEVEL_avx512) || defined(FD_LEVEL_avx2)
    return _cvtsh_ss(h);
#endif
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    if (e == 0x1f) return fd_f32_from_bits(sign | 0x7f800000u | m << 13);
    if (e) return fd_f32_from_bits(sign | (e + 112) << 23 | m << 13);
    float sub = (float)m * 0x1p-24f; /* subnormal: exact */
    return sign ? -sub : sub;
}

/* x quantized to int8 in blocks of FD_QK, as the integer dot products take it. */
typedef struct {
    const int8_t *q;   /* [rows, n_in] */
    const float *d;    /* [rows, n_in / FD_QK]: x ~= q * d, block by block */
    const float *ds;   /* [rows, n_in / FD_QK]: d * sum(q) of each block */
    const int32_t *s;  /* [rows, n_in / 16]: sums of q over each 16 */
    int64_t n_in;
} fd_qx;

/* q: [rows, n_in], d, ds: [rows, n_in / 32], s: [rows, n_in / 16]; x: [rows, n_in], n_in % 32 == 0 */
void FD_FN(fd_quantize_x)(int8_t *q, float *d, float *ds, int32_t *s, const float *x, int64_t rows, int64_t n_in);
/* acc: [nr] = row . x[r] for r < nr <= FD_QROWS; row: one weight row of format fmt (q8_0, q4_0, q4_K, q6_K) */
void FD_FN(fd_dot_blocks)(float *acc, const uint8_t *row, int fmt, const fd_qx *x, int64_t nr);

/* out: [rows, n_out], its columns [lo, hi) only; x: [rows, n_in] float32
 * (16-bit formats), xq: x in int8 blocks (block formats); w: [n_out,
 * fd_quant_row_bytes(fmt, n_in)]; bias: [n_out] or NULL */
void FD_FN(fd_linear_quant_cols)(float *out, const float *x, const fd_qx *xq, const uint8_t *w, const float *bias,
                                 int fmt, int64_t rows, int64_t n_in, int64_t n_out, int64_t lo, int64_t hi);

/* x16 formats (quant_x16.c): the layout, the product, rows back to GGUF's */
static inline int fd_x16_base(int fmt) { return fmt - FD_FMT_Q8_0_X16; }
static inline int64_t fd_x16_block(int fmt) { return fd_x16_base(fmt) >= FD_FMT_Q4_K ? 256 : 32; }
/* where byte j of row r's block (GGUF's layout) lies in its group's block:
 * 2-byte fields (the f16 scales: q4_K's first two, q6_K's d, put first)
 * as 16 values; every other byte in 4-byte lanes of 64-byte chunks (q6_K's
 * in the order its kernel reads them: quant_x16.c) */
static inline int64_t fd_x16_index(int base, int64_t j, int r) {
    int64_t o, w = 4;
    if (base == FD_FMT_Q6_K) { /* d; then per half h: scales, and per k ql 4 k.., ql 32 + 4 k.., qh 4 k.. */
        if (j >= 208) return 2 * r + j - 208;
        const int64_t h = j < 128 ? j / 64 : j < 192 ? (j - 128) / 32 : (j - 192) / 8;
        const int64_t at = j < 128 ? 128 + 192 * (j % 32 / 4) + 64 * (j % 64 / 32)
                           : j < 192 ? 256 + 192 * (j % 32 / 4) : 64 * ((j - 192) % 8 / 4);
        return 32 + 1664 * h + at + 4 * r + j % 4;
    } else {
        const int64_t lead = base == FD_FMT_Q4_K ? 4 : 2; /* bytes of leading f16 fields */
        o = j < lead ? j / 2 * 2 : lead, w = j < lead ? 2 : 4;
    }
    return 16 * o + (j - o) / w * 16 * w + w * r + (j - o) % w;
}
/* blk: [bb] = lane l's block of the group's block at g16 (16 bb bytes), in GGUF's layout */
static inline void fd_x16_block_of(uint8_t *blk, const uint8_t *g16, int base, int64_t bb, int l) {
    for (int64_t j = 0; j < bb; j++)
        blk[j] = (uint8_t)(g16[fd_x16_index(base, j, l)] ^ (base == FD_FMT_Q8_0 && j >= 2 ? 128 : 0));
}
/* row: [fd_quant_row_bytes(base, n_in)] = row l of the group grp, in GGUF's layout */
static inline void fd_x16_row(uint8_t *row, const uint8_t *grp, int fmt, int l, int64_t n_in) {
    const int base = fd_x16_base(fmt);
    const int64_t nblk = n_in / fd_x16_block(fmt), bb = fd_quant_row_bytes(base, n_in) / nblk;
    for (int64_t b = 0; b < nblk; b++) fd_x16_block_of(row + b * bb, grp + b * 16 * bb, base, bb, l);
}
/* x16 <-> gguf ([n_out, row bytes] each), to_x16 saying which way */
void FD_FN(fd_x16_convert)(uint8_t *x16, uint8_t *gguf, int fmt, int64_t n_out, int64_t n_in, int to_x16);
/* out[:, lo:hi] of [rows, n_out] (lo, hi multiples of 16); xq: x in int8 blocks; w: the groups */
void FD_FN(fd_x16_cols)(float *out, const fd_qx *xq, const uint8_t *w, const float *bias, int fmt, int64_t rows,
                        int64_t n_in, int64_t n_out, int64_t lo, int64_t hi);
/* out: [n_in] = row r (< n_out) of w ([n_out, row bytes], GGUF's layout or x16) decoded */
void FD_FN(fd_lookup_row)(float *out, const uint8_t *w, int fmt, int64_t r, int64_t n_out, int64_t n_in);
/* the block formats, whose products take x in int8 blocks */
static inline int fd_fmt_blocks(int fmt) { return (fmt >= FD_FMT_Q8_0 && fmt <= FD_FMT_Q6_K) || fmt >= FD_FMT_Q8_0_X16; }
static inline int fd_fmt_x16(int fmt) { return fmt >= FD_FMT_Q8_0_X16; }
/* share t of nt of n rows of W, on multiples of 16 (x16 groups; the MLP's
 * gate/up partners stay in one share) */
static inline int64_t fd_split16(int64_t n, int t, int nt) { return t >= nt ? n : n / 16 * t / nt * 16; }

#endif /* FD_QUANT_H */
