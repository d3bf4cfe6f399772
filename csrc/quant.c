/* quant.c: weights in GGUF's block formats (q8_0, q4_0, q4_K, q6_K, bf16,
 * f16): decoding to float32, and out = x W^T + bias with W in blocks.
 *
 * Dimensions: rows = rows of x (decode steps, short prompts: up to 64,
 * taken 8 per pass over W), n_in = weights per row of W (a multiple of the
 * format's block), n_out = rows of W; a row of W is n_in / block blocks
 * (fd_quant_row_bytes), rows one after another.
 * The layouts are GGUF's (src/fastdecode/formats.py draws them).
 *
 * Decoding does exactly the float operations of the gguf package's
 * dequantize_blocks, in its order, so fd_dequantize_rows equals it bit for
 * bit (this file is built with -ffp-contract=off: a fused d*q - m would
 * round once instead of twice). The prefill path decodes tiles with it.
 *
 * The product: q8_0/q4_0/q4_K/q6_K quantize x to int8 blocks once per call
 * and take integer dot products (quant_dot.c); bf16/f16 convert 16 weights
 * at a time in registers and multiply-add in float32, as linear.c does.
 * Each thread takes one contiguous block of weight rows.
 */
#include <stdlib.h>

#include "quant.h"

#define FD_QCHUNK 256 /* weights decoded at a time: one K super-block, eight 32-blocks */
/* Below this many weight bytes one thread does it all (linear.c's reason:
 * waking a sleeping worker costs what one thread reads meanwhile; a polling
 * one answers at once, so the bar drops; docs/tuning.md). */
#define FD_QPAR_MIN (4 << 20)
#define FD_QPAR_MIN_SPIN (1 << 17)

/* ----------------------------------------------------------------------------
 * Decoding: buf[0..n) = weights k..k+n of one row (k a multiple of FD_QCHUNK,
 * n <= FD_QCHUNK, n a multiple of the block). Plain loops the compiler
 * vectorizes for each level.
 * ---------------------------------------------------------------------------- */

/* buf: [n]; row: one row's q8_0 blocks (34 bytes: f16 d, int8 q[32]) */
static void decode_q8_0(float *restrict buf, const uint8_t *restrict row, int64_t k, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = row + (k / 32 + b) * 34;
        const float d = fd_f16_to_f32(blk);
        const int8_t *q = (const int8_t *)(blk + 2);
        for (int i = 0; i < 32; i++)
            buf[32 * b + i] = (float)q[i] * d;
    }
}

/* buf: [n]; row: q4_0 blocks (18 bytes: f16 d, qs[16], weight i low nibble of qs[i], i + 16 high) */
static void decode_q4_0(float *restrict buf, const uint8_t *restrict row, int64_t k, int64_t n) {
    for (int64_t b = 0; b < n / 32; b++) {
        const uint8_t *blk = row + (k / 32 + b) * 18;
        const float d = fd_f16_to_f32(blk);
        const uint8_t *qs = blk + 2;
        for (int i = 0; i < 16; i++) {
            buf[32 * b + i] = d * (float)((int)(qs[i] & 15) - 8);
            buf[32 * b + 16 + i] = d * (float)((int)(qs[i] >> 4) - 8);
        }
    }
}

/* buf: [256]; blk: one q4_K super-block (144 bytes: f16 d, f16 dmin, scales[12], qs[128]) */
static void decode_q4_K(float *restrict buf, const uint8_t *restrict blk) {
    const float d = fd_f16_to_f32(blk), dmin = fd_f16_to_f32(blk + 2);
    const uint8_t *s = blk + 4, *qs = blk + 16;
    for (int j = 0; j < 8; j++) { /* sub-block j: 6-bit scale and min (ggml's get_scale_min_k4) */
        int sc = j < 4 ? s[j] & 63 : (s[j + 4] & 15) | (s[j - 4] >> 6) << 4;
        int mn = j < 4 ? s[j + 4] & 63 : (s[j + 4] >> 4) | (s[j] >> 6) << 4;
        const float dj = d * (float)sc, mj = dmin * (float)mn;
        const uint8_t *q = qs + 32 * (j / 2);
        const int shift = 4 * (j & 1);
        for (int i = 0; i < 32; i++)
            buf[32 * j + i] = dj * (float)((q[i] >> shift) & 15) - mj;
    }
}

/* buf: [256]; blk: one q6_K super-block (210 bytes: ql[128], qh[64], int8 scales[16], f16 d) */
static void decode_q6_K(float *restrict buf, const uint8_t *restrict blk) {
    const uint8_t *ql = blk, *qh = blk + 128;
    const int8_t *sc = (const int8_t *)(blk + 192);
    const float d = fd_f16_to_f32(blk + 208);
    float ds[16];
    for (int j = 0; j < 16; j++)
        ds[j] = d * (float)sc[j];
    for (int h = 0; h < 2; h++) /* each half: 128 weights from ql[64h..], qh[32h..] */
        for (int i = 0; i < 128; i += FD_VLEN) { /* FD_VLEN <= 16 weights share a scale */
            const uint8_t *l = ql + 64 * h + i % 64, *u = qh + 32 * h + i % 32;
            const int ls = 4 * (i / 64), us = 2 * (i / 32);
            float *o = buf + 128 * h + i;
#if defined(FD_LEVEL_avx512)
            __m512i lo = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)l)), _mm512_set1_epi32(ls));
            __m512i hi = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)u)), _mm512_set1_epi32(us));
            __m512i q = _mm512_or_si512(_mm512_and_si512(lo, _mm512_set1_epi32(15)),
                                        _mm512_slli_epi32(_mm512_and_si512(hi, _mm512_set1_epi32(3)), 4));
            q = _mm512_sub_epi32(q, _mm512_set1_epi32(32));
            _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_set1_ps(ds[(128 * h + i) / 16]), _mm512_cvtepi32_ps(q)));
#elif defined(FD_LEVEL_avx2)
            __m256i lo = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)l)), _mm256_set1_epi32(ls));
            __m256i hi = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)u)), _mm256_set1_epi32(us));
            __m256i q = _mm256_or_si256(_mm256_and_si256(lo, _mm256_set1_epi32(15)),
                                        _mm256_slli_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(3)), 4));
            q = _mm256_sub_epi32(q, _mm256_set1_epi32(32));
            _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_set1_ps(ds[(128 * h + i) / 16]), _mm256_cvtepi32_ps(q)));
#else
            o[0] = ds[(128 * h + i) / 16] * (float)((((l[0] >> ls) & 15) | ((u[0] >> us) & 3) << 4) - 32);
#endif
        }
}

/* 16 weights (or FD_VLEN) from 16-bit storage at p, as float32 */
static inline vf load16(const uint8_t *p, int bf16) {
#if defined(FD_LEVEL_avx512)
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    return bf16 ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)) : _mm512_cvtph_ps(h);
#elif defined(FD_LEVEL_avx2)
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    return bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)) : _mm256_cvtph_ps(h);
#else
    return bf16 ? fd_f32_from_bits((uint32_t)(p[0] | p[1] << 8) << 16) : fd_f16_to_f32(p);
#endif
}

/* buf: [n]; row: n_in 16-bit values (bf16 != 0: bfloat16, else float16) */
static void decode_16(float *restrict buf, const uint8_t *restrict row, int64_t k, int64_t n, int bf16) {
    const uint8_t *p = row + 2 * k;
    int64_t i = 0;
#if FD_VLEN > 1
    for (; i + FD_VLEN <= n; i += FD_VLEN)
        vf_store(buf + i, load16(p + 2 * i, bf16));
#endif
    for (; i < n; i++)
        buf[i] = bf16 ? fd_f32_from_bits((uint32_t)((const uint16_t *)p)[i] << 16) : fd_f16_to_f32(p + 2 * i);
}

/* buf: [n] = weights k..k+n of row (format fmt) */
static void decode(float *restrict buf, const uint8_t *restrict row, int fmt, int64_t k, int64_t n) {
    switch (fmt) {
    case FD_FMT_Q8_0: decode_q8_0(buf, row, k, n); break;
    case FD_FMT_Q4_0: decode_q4_0(buf, row, k, n); break;
    case FD_FMT_Q4_K: decode_q4_K(buf, row + k / 256 * 144); break;
    case FD_FMT_Q6_K: decode_q6_K(buf, row + k / 256 * 210); break;
    default: decode_16(buf, row, k, n, fmt == FD_FMT_BF16); break;
    }
}

/* out: [rows, n_in]; w: [rows, row_bytes] */
void FD_FN(fd_dequantize_rows)(float *out, const uint8_t *w, int fmt, int64_t rows, int64_t n_in) {
    if (fd_fmt_x16(fmt)) { /* each row back to GGUF's layout, decoded as such (no memory: NaN) */
        const int base = fd_x16_base(fmt);
        const int64_t rb = fd_quant_row_bytes(base, n_in);
        uint8_t *row = malloc((size_t)rb + 1);
        for (int64_t r = 0; r < rows; r++) {
            const int tail = r >= rows / 16 * 16; /* past the last whole group: GGUF's layout */
            if (row && !tail) fd_x16_row(row, w + r / 16 * 16 * rb, fmt, (int)(r % 16), n_in);
            const uint8_t *src = tail ? w + r * rb : row;
            for (int64_t k = 0; k < n_in; k += FD_QCHUNK)
                if (src) decode(out + r * n_in + k, src, base, k, n_in - k < FD_QCHUNK ? n_in - k : FD_QCHUNK);
                else for (int64_t i = k; i < n_in && i < k + FD_QCHUNK; i++) out[r * n_in + i] = NAN;
        }
        free(row);
        return;
    }
    const int64_t rb = fd_quant_row_bytes(fmt, n_in);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t k = 0; k < n_in; k += FD_QCHUNK)
            decode(out + r * n_in + k, w + r * rb, fmt, k, n_in - k < FD_QCHUNK ? n_in - k : FD_QCHUNK);
}

/* ----------------------------------------------------------------------------
 * The product
 * ---------------------------------------------------------------------------- */

/* acc: [nr] = row . x[r]; row: [n_in] bf16 or f16; x: [nr, n_in], nr <= FD_QROWS */
static void dot_16(float *acc, const uint8_t *row, int bf16, const float *x, int64_t nr, int64_t n_in) {
    vf a[FD_QROWS], b[FD_QROWS];
    for (int64_t r = 0; r < nr; r++)
        a[r] = b[r] = vf_set1(0.0f);
    int64_t i = 0;
    if (nr == 1) { /* one row: four chains */
        vf c = vf_set1(0.0f), e = c;
        for (; i + 4 * FD_VLEN <= n_in; i += 4 * FD_VLEN) {
            a[0] = vf_fmadd(load16(row + 2 * i, bf16), vf_load(x + i), a[0]);
            b[0] = vf_fmadd(load16(row + 2 * (i + FD_VLEN), bf16), vf_load(x + i + FD_VLEN), b[0]);
            c = vf_fmadd(load16(row + 2 * (i + 2 * FD_VLEN), bf16), vf_load(x + i + 2 * FD_VLEN), c);
            e = vf_fmadd(load16(row + 2 * (i + 3 * FD_VLEN), bf16), vf_load(x + i + 3 * FD_VLEN), e);
        }
        a[0] = vf_add(a[0], c);
        b[0] = vf_add(b[0], e);
    }
    for (; i + 2 * FD_VLEN <= n_in; i += 2 * FD_VLEN) {
        vf w0 = load16(row + 2 * i, bf16), w1 = load16(row + 2 * (i + FD_VLEN), bf16);
        for (int64_t r = 0; r < nr; r++) {
            a[r] = vf_fmadd(w0, vf_load(x + r * n_in + i), a[r]);
            b[r] = vf_fmadd(w1, vf_load(x + r * n_in + i + FD_VLEN), b[r]);
        }
    }
    for (int64_t r = 0; r < nr; r++) {
        float s = vf_reduce_add(vf_add(a[r], b[r]));
        for (int64_t j = i; j < n_in; j++) {
            float w;
            decode_16(&w, row, j, 1, bf16);
            s += w * x[r * n_in + j];
        }
        acc[r] = s;
    }
}

typedef struct {
    float *out;
    const float *x, *bias;
    const uint8_t *w;
    int fmt;
    int64_t rows, n_in, n_out, row_bytes;
    fd_qx xq; /* x in int8 blocks (block formats) */
} quant_job;

/* Output columns [lo, hi) of out: [rows, n_out], on the calling thread;
 * xq: x in int8 blocks (block formats; fd_quantize_x), x: float32 (16-bit
 * formats). A share of fd_linear_quant's job, or of a caller's (model.c). */
void FD_FN(fd_linear_quant_cols)(float *out, const float *x, const fd_qx *xq, const uint8_t *w, const float *bias,
                                 int fmt, int64_t rows, int64_t n_in, int64_t n_out, int64_t lo, int64_t hi) {
    if (fd_fmt_x16(fmt)) {
        FD_FN(fd_x16_cols)(out, xq, w, bias, fmt, rows, n_in, n_out, lo, hi);
        return;
    }
    const int64_t nb = n_in / FD_QK, row_bytes = fd_quant_row_bytes(fmt, n_in);
    const int blocks = fd_fmt_blocks(fmt);
    for (int64_t r0 = 0; r0 < rows; r0 += FD_QROWS) { /* each group of rows streams W once */
        const int64_t nr = rows - r0 < FD_QROWS ? rows - r0 : FD_QROWS;
        fd_qx part = {0};
        if (blocks) part = (fd_qx){xq->q + r0 * n_in, xq->d + r0 * nb, xq->ds + r0 * nb, xq->s + r0 * 2 * nb, n_in};
        float *ys = out + r0 * n_out;
        for (int64_t o = lo; o < hi; o++) {
            float acc[FD_QROWS];
            const uint8_t *row = w + o * row_bytes;
            if (blocks)
                FD_FN(fd_dot_blocks)(acc, row, fmt, &part, nr);
            else
                dot_16(acc, row, fmt == FD_FMT_BF16, x + r0 * n_in, nr, n_in);
            const float b = bias ? bias[o] : 0.0f;
            for (int64_t r = 0; r < nr; r++)
                ys[r * n_out + o] = acc[r] + b;
        }
    }
}

/* Share t of nt: one contiguous block of weight rows, for every row of x. */
static void quant_part(void *ctx, int t, int nt) {
    const quant_job *j = ctx;
    FD_FN(fd_linear_quant_cols)(j->out, j->x, &j->xq, j->w, j->bias, j->fmt, j->rows, j->n_in, j->n_out,
                                fd_split16(j->n_out, t, nt), fd_split16(j->n_out, t + 1, nt));
}

/* out: [rows, n_out]; x: [rows, n_in]; w: [n_out, row_bytes]; bias: [n_out] or NULL.
 * Returns 0, or -1 when the int8 copy of x could not be allocated. */
int FD_FN(fd_linear_quant)(float *out, const float *x, const uint8_t *w, const float *bias, int fmt, int64_t rows,
                           int64_t n_in, int64_t n_out) {
    quant_job job = {out, x, bias, w, fmt, rows, n_in, n_out, fd_quant_row_bytes(fmt, n_in), {0}};
    void *scratch = NULL;
    if (fd_fmt_blocks(fmt)) { /* q [rows, n_in] int8, d, ds [rows, nb] float, s [rows, 2 nb] int32 */
        const int64_t nb = rows * n_in / FD_QK;
        scratch = malloc((size_t)(nb * (FD_QK + 4 + 4 + 8)));
        if (!scratch) return -1;
        float *d = scratch, *ds = d + nb;
        int32_t *s = (int32_t *)(ds + nb);
        int8_t *q = (int8_t *)(s + 2 * nb);
        FD_FN(fd_quantize_x)(q, d, ds, s, x, rows, n_in);
        job.xq = (fd_qx){q, d, ds, s, n_in};
    }
    const int64_t par_min = fd_get_spin_ns() > 0 ? FD_QPAR_MIN_SPIN : FD_QPAR_MIN;
    int nt = n_out * job.row_bytes >= par_min ? fd_num_threads : 1;
    if (nt > n_out) nt = (int)n_out;
    fd_parallel_reading(quant_part, &job, nt, w);
    free(scratch);
    return 0;
}

#if FD_ENTRY_POINTS
int fd_linear_quant(float *out, const float *x, const uint8_t *w, const float *bias, int fmt, int64_t rows,
                    int64_t n_in, int64_t n_out) {
    return FD_DISPATCH(fd_linear_quant, (out, x, w, bias, fmt, rows, n_in, n_out));
}
void fd_dequantize_rows(float *out, const uint8_t *w, int fmt, int64_t rows, int64_t n_in) {
    FD_DISPATCH(fd_dequantize_rows, (out, w, fmt, rows, n_in));
}
#endif
