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
