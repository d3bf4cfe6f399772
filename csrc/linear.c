/* linear.c: out = x W^T + bias for the few rows of x in a decode step.
 *
 * A decode step reads every weight once, so a projection is a stream of W
 * through the cores and its speed is the memory's. W is [n_out, n_in]
 * (torch's Linear layout): each output is the dot product of one contiguous
 * weight row with x, and each thread takes one contiguous block of rows, so
 * every thread reads a single sequential stream (the bandwidth probe's
 * pattern, faster than a BLAS gemv here: docs/tuning.md). Up to FD_LINEAR_ROWS rows of x share one pass over W; more
 * rows (a prefill) are compute-bound, and the C backend hands them to
 * NumPy's matmul (BLAS sgemm) instead.
 *
 * Sums are float, four (one row) or two (several rows) chains per row, as
 * BLAS keeps them: a dot of a few thousand terms loses ~1e-6 relative, far
 * below what float32 weights carry, and double chains would halve the
 * arithmetic rate of a kernel that needs every cycle to keep up with memory.
 */
#include "fastdecode.h"
#include "simd.h"

#define FD_LINEAR_ROWS 8
/* Below this many weight elements one thread does it all: waking sleeping
 * workers costs more than they save; polling ones (generate()'s decode
 * steps) answer at once, so the bar is lower (docs/tuning.md). */
#define FD_LINEAR_PAR_MIN (1 << 20)
#define FD_LINEAR_PAR_MIN_SPIN (1 << 17)

/* ----------------------------------------------------------------------------
 * Dot products of one weight row
 * ---------------------------------------------------------------------------- */

/* w, x: [n]. Returns w . x. */
static float dot1(const float *w, const float *x, int64_t n) {
    vf a0 = vf_set1(0.0f), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 4 * FD_VLEN <= n; i += 4 * FD_VLEN) {
        a0 = vf_fmadd(vf_load(w + i), vf_load(x + i), a0);
        a1 = vf_fmadd(vf_load(w + i + FD_VLEN), vf_load(x + i + FD_VLEN), a1);
        a2 = vf_fmadd(vf_load(w + i + 2 * FD_VLEN), vf_load(x + i + 2 * FD_VLEN), a2);
        a3 = vf_fmadd(vf_load(w + i + 3 * FD_VLEN), vf_load(x + i + 3 * FD_VLEN), a3);
    }
    for (; i + FD_VLEN <= n; i += FD_VLEN)
        a0 = vf_fmadd(vf_load(w + i), vf_load(x + i), a0);
    float s = vf_reduce_add(vf_add(vf_add(a0, a1), vf_add(a2, a3)));
    for (; i < n; i++)
        s += w[i] * x[i];
    return s;
}

/* acc: [rows] = w . x[r]; w: [n]; x: [rows, n], rows <= FD_LINEAR_ROWS.
 * Each vector of w is loaded once and used for every row. */
static void dot_rows(float *acc, const float *w, const float *x, int64_t rows, int64_t n) {
    vf a[FD_LINEAR_ROWS], b[FD_LINEAR_ROWS];
    for (int64_t r = 0; r < rows; r++)
        a[r] = b[r] = vf_set1(0.0f);
    int64_t i = 0;
    for (; i + 2 * FD_VLEN <= n; i += 2 * FD_VLEN) {
        vf w0 = vf_load(w + i), w1 = vf_load(w + i + FD_VLEN);
        for (int64_t r = 0; r < rows; r++) {
            a[r] = vf_fmadd(w0, vf_load(x + r * n + i), a[r]);
            b[r] = vf_fmadd(w1, vf_load(x + r * n + i + FD_VLEN), b[r]);
        }
    }
    for (int64_t r = 0; r < rows; r++) {
        float s = vf_reduce_add(vf_add(a[r], b[r]));
        for (int64_t j = i; j < n; j++)
            s += w[j] * x[r * n + j];
        acc[r] = s;
    }
}

/* ----------------------------------------------------------------------------
 * The kernel
 * ---------------------------------------------------------------------------- */

/* Output columns [lo, hi) of out: [rows, n_out]. Many rows (a prefill
 * chunk) take FD_LINEAR_OBLK weight rows at a time through every group of
 * FD_LINEAR_ROWS rows, so W comes from memory once and from L2 after. */
#define FD_LINEAR_OBLK 16
void FD_FN(fd_linear_cols_f32)(float *out, const float *x, const float *w, const float *bias, int64_t rows,
                               int64_t n_in, int64_t n_out, int64_t lo, int64_t hi) {
    for (int64_t o0 = lo; o0 < hi; o0 += FD_LINEAR_OBLK) {
        const int64_t o1 = o0 + FD_LINEAR_OBLK < hi ? o0 + FD_LINEAR_OBLK : hi;
        for (int64_t r0 = 0; r0 < rows; r0 += FD_LINEAR_ROWS) {
            int64_t nr = rows - r0 < FD_LINEAR_ROWS ? rows - r0 : FD_LINEAR_ROWS;
            const float *xs = x + r0 * n_in;
            float *ys = out + r0 * n_out;
            for (int64_t o = o0; o < o1; o++) {
                const float *wo = w + o * n_in;
                float b = bias ? bias[o] : 0.0f;
                if (nr == 1) {
                    ys[o] = dot1(wo, xs, n_in) + b;
                } else {
                    float acc[FD_LINEAR_ROWS];
                    dot_rows(acc, wo, xs, nr, n_in);
                    for (int64_t r = 0; r < nr; r++)
                        ys[r * n_out + o] = acc[r] + b;
                }
            }
        }
    }
}

/* ----------------------------------------------------------------------------
 * Many rows (a prefill chunk, a large batch): register tiles
 *
 * dot_rows above loads a vector of x for every multiply-add and so runs at
 * the loads' rate. A tile of TILE_R rows of x by TILE_C rows of W holds
 * TILE_R x TILE_C sums in registers: each vector loaded feeds TILE_C (or
 * TILE_R) multiply-adds, and the arithmetic units set the pace, as in a
 * BLAS sgemm. The TILE_C rows of W stay in L1 while every group of TILE_R
 * rows of x passes (a 64-token chunk of x stays in L2).
 * ---------------------------------------------------------------------------- */
#if FD_VLEN >= 16
#define TILE_R 4 /* 24 sums + 4 x + 1 w of the 32 zmm registers */
#define TILE_C 6
#else
#define TILE_R 2 /* 8 sums + 2 x + 1 w of the 16 ymm registers */
#define TILE_C 4
#endif
_Static_assert(TILE_C <= FD_GEMM_WROWS, "fd_gemm_cols' wbuf holds FD_GEMM_WROWS rows");

/* out[r * ldo + c] = x[r] . w[c] + bias[c] for r < nr <= TILE_R, c < nc <= TILE_C;
 * x: [nr, k]; w: [nc, k]; bias: [nc] or NULL */
static inline __attribute__((always_inline)) void tile(float *out, int64_t ldo, const float *x, const float *w,
                                                       const float *bias, int64_t k, int nr, int nc) {
    vf acc[TILE_R][TILE_C];
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) acc[r][c] = vf_set1(0.0f);
    int64_t i = 0;
    for (; i + FD_VLEN <= k; i += FD_VLEN) {
        vf xv[TILE_R];
        for (int r = 0; r < nr; r++) xv[r] = vf_load(x + r * k + i);
        for (int c = 0; c < nc; c++) {
            const vf wv = vf_load(w + c * k + i);
            for (int r = 0; r < nr; r++) acc[r][c] = vf_fmadd(xv[r], wv, acc[r][c]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) {
            float s = vf_reduce_add(acc[r][c]);
            for (int64_t j = i; j < k; j++) s += x[r * k + j] * w[c * k + j];
            out[r * ldo + c] = s + (bias ? bias[c] : 0.0f);
        }
}

/* Output columns [lo, hi) of out [rows, n_out] = x [rows, n_in] W^T + bias,
 * on the calling thread. w: [n_out, n_in] float32 (fmt FD_FMT_F32) or
 * [n_out, fd_quant_row_bytes(fmt, n_in)] in a GGUF-layout format, whose
 * rows are decoded TILE_C at a time into wbuf [FD_GEMM_WROWS, n_in]. */
void FD_FN(fd_gemm_cols)(float *out, const float *x, const void *w, int fmt, const float *bias, int64_t rows,
                         int64_t n_in, int64_t n_out, int64_t lo, int64_t hi, float *wbuf) {
    const int64_t rb = fmt == FD_FMT_F32 ? n_in * (int64_t)sizeof(float) : fd_quant_row_bytes(fmt, n_in);
    for (int64_t o = lo; o < hi; o += TILE_C) {
        const int nc = hi - o < TILE_C ? (int)(hi - o) : TILE_C;
        const uint8_t *wo = (const uint8_t *)w + o * rb;
        const float *wc = (const float *)wo;
        if (fmt != FD_FMT_F32) {
            FD_FN(fd_dequantize_rows)(wbuf, wo, fmt, nc, n_in);
            wc = wbuf;
        }
        const float *bc = bias ? bias + o : NULL;
        int64_t r = 0;
        if (nc == TILE_C) /* whole tiles: every count a constant, every sum a register */
            for (; r + TILE_R <= rows; r += TILE_R) tile(out + r * n_out + o, n_out, x + r * n_in, wc, bc, n_in, TILE_R, TILE_C);
        for (; r < rows; r += TILE_R)
            tile(out + r * n_out + o, n_out, x + r * n_in, wc, bc, n_in, rows - r < TILE_R ? (int)(rows - r) : TILE_R, nc);
    }
}

typedef struct {
    float *out;
    const float *x, *w, *bias;
    int64_t rows, n_in, n_out;
} linear_job;

/* Share t of nt: one contiguous block of weight rows, for every row of x. */
static void linear_part(void *ctx, int t, int nt) {
    const linear_job *j = ctx;
    FD_FN(fd_linear_cols_f32)(j->out, j->x, j->w, j->bias, j->rows, j->n_in, j->n_out, j->n_out * t / nt,
                              j->n_out * (t + 1) / nt);
}

/* out: [rows, n_out]; x: [rows, n_in]; w: [n_out, n_in]; bias: [n_out] or NULL */
void FD_FN(fd_linear_f32)(float *out, const float *x, const float *w, const float *bias, int64_t rows,
                          int64_t n_in, int64_t n_out) {
    linear_job job = {out, x, w, bias, rows, n_in, n_out};
    int64_t par_min = fd_get_spin_ns() > 0 ? FD_LINEAR_PAR_MIN_SPIN : FD_LINEAR_PAR_MIN;
    int nt = n_out * n_in >= par_min ? fd_threads() : 1;
    if (nt > n_out) nt = (int)n_out;
    fd_parallel_reading(linear_part, &job, nt, w);
}

#if FD_ENTRY_POINTS
void fd_linear_f32(float *out, const float *x, const float *w, const float *bias, int64_t rows, int64_t n_in,
                   int64_t n_out) {
    FD_DISPATCH(fd_linear_f32, (out, x, w, bias, rows, n_in, n_out));
}
#endif
