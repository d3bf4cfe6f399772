/* softmax.c: softmax and log_softmax over the rows of a [rows, n] array.
 *
 * Three passes per row: max; exp(x - max) with the sum kept in double;
 * scale by 1/sum (or, for log_softmax, subtract max, then log(sum)). A long row
 * that would leave cores idle (decode: one row of 50k-150k logits) is split
 * across threads, each pass on its own chunk with a barrier between passes.
 */
#include "fastdecode.h"
#include "simd.h"

#include <math.h>

/* Idle OpenMP workers sleep (backend.py says why), and waking one costs
 * 20-100 us (most in a VM), while one thread softmaxes about 3 elements
 * per ns. So rows are handed out dynamically (the caller's thread starts
 * at once and a late worker only takes what is left), and a single row is
 * split across threads, which makes every thread wait at two barriers,
 * only when it is long enough to repay that. */
#define FD_SOFTMAX_PAR_MIN (1 << 17)   /* elements in all rows */
#define FD_SOFTMAX_SPLIT_MIN (1 << 20) /* elements in one row */
#define FD_MAX_THREADS 256

/* ----------------------------------------------------------------------------
 * Row passes
 * ---------------------------------------------------------------------------- */

/* x: [n]. Returns max(x); sets *nan when any entry is NaN. */
static float row_max(const float *x, int64_t n, int *nan) {
    vf m0 = vf_set1(-INFINITY), m1 = m0, m2 = m0, m3 = m0;
    int bad = 0;
    int64_t i = 0;
    for (; i + 4 * FD_VLEN <= n; i += 4 * FD_VLEN) {
        vf a = vf_load(x + i), b = vf_load(x + i + FD_VLEN);
        vf c = vf_load(x + i + 2 * FD_VLEN), d = vf_load(x + i + 3 * FD_VLEN);
        /* one NaN test for four vectors: the sum is NaN when any lane is,
         * and falsely so only for +inf with -inf, a row undefined anyway */
        bad |= vf_any_nan(vf_add(vf_add(a, b), vf_add(c, d)));
        m0 = vf_max(m0, a);
        m1 = vf_max(m1, b);
        m2 = vf_max(m2, c);
        m3 = vf_max(m3, d);
    }
    float m = vf_reduce_max(vf_max(vf_max(m0, m1), vf_max(m2, m3)));
    for (; i < n; i++) {
        bad |= x[i] != x[i];
        m = x[i] > m ? x[i] : m;
    }
    *nan = bad;
    return m;
}

/* out, x: [n]. Returns sum(exp(x - m)); stores the terms in out when store
 * is set (softmax), not when only the sum is needed (log). The sum is kept
 * in double; each lane first adds FD_SUM_BLOCK terms in float (all in
 * [0, 1], so at most ~8 ulp of relative error per block), which keeps the
 * double conversions off the critical path. */
#define FD_SUM_BLOCK 8
static inline double row_exp_sum(float *out, const float *x, int64_t n, float m, int store) {
    vf mv = vf_set1(m);
    vd acc = vd_zero();
    int64_t i = 0;
    while (i + FD_VLEN <= n) {
        vf block = vf_set1(0.0f);
        for (int j = 0; j < FD_SUM_BLOCK && i + FD_VLEN <= n; j++, i += FD_VLEN) {
            vf e = vf_exp(vf_sub(vf_load(x + i), mv));
            if (store) vf_store(out + i, e);
            block = vf_add(block, e);
        }
        acc = vd_add_vf(acc, block);
    }
    double s = vd_reduce(acc);
    for (; i < n; i++) {
        float e = fd_expf(x[i] - m);
        if (store) out[i] = e;
        s += e;
    }
    return s;
}

/* out: [n] *= s */
static void row_scale(float *out, int64_t n, float s) {
    vf sv = vf_set1(s);
    int64_t i = 0;
    for (; i + FD_VLEN <= n; i += FD_VLEN) vf_store(out + i, vf_mul(vf_load(out + i), sv));
    for (; i < n; i++) out[i] *= s;
}

/* out, x: [n]. out = (x - m) - ls; subtracting m first keeps log(sum)
 * from vanishing into a huge m (log_softmax of [1e30, 1e30] is -log 2). */
static void row_shift(float *out, const float *x, int64_t n, float m, float ls) {
    vf mv = vf_set1(m), lv = vf_set1(ls);
    int64_t i = 0;
    for (; i + FD_VLEN <= n; i += FD_VLEN) vf_store(out + i, vf_sub(vf_sub(vf_load(x + i), mv), lv));
    for (; i < n; i++) out[i] = (x[i] - m) - ls;
}

static void row_fill(float *out, int64_t n, float v) {
    for (int64_t i = 0; i < n; i++) out[i] = v;
}

/* NaN, +inf, or nothing but -inf: the row has no defined softmax. */
static int row_undefined(float m, int nan) { return nan || m == INFINITY || m == -INFINITY; }

/* out = the finishing pass over [n] given the row's max m and sum s */
static void row_finish(float *out, const float *x, int64_t n, float m, double s, int take_log) {
    if (take_log) row_shift(out, x, n, m, (float)log(s));
    else row_scale(out, n, (float)(1.0 / s));
}

/* A row longer than L2 can hold twice (x and out) pays for every pass
 * over it, so long rows take the max and the exponentials block by block
 * while the block is in L1: each block's terms are taken against the
 * running max, and the sum (and, for softmax, the block's stored terms) is
 * rescaled when the max grows. That reads x from memory once instead of
 * twice. FD_BLOCK_ROW_MIN: where it starts paying; FD_ROW_BLOCKS bounds the
 * per-block maxima kept on the stack (longer rows use the three passes). */
#define FD_ROW_BLOCK 2048
#define FD_ROW_BLOCKS 1024
#define FD_BLOCK_ROW_MIN (1 << 16)

static void softmax_row_blocked(float *out, const float *x, int64_t n, int take_log) {
    float block_max[FD_ROW_BLOCKS]; /* the running max each block's terms were taken against */
    int64_t nb = (n + FD_ROW_BLOCK - 1) / FD_ROW_BLOCK;
    float m = -INFINITY;
    double s = 0.0;
    int nan = 0;
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * FD_ROW_BLOCK, len = n - lo < FD_ROW_BLOCK ? n - lo : FD_ROW_BLOCK;
        int bnan;
        float bm = row_max(x + lo, len, &bnan);
        nan |= bnan;
        if (bm > m) {
            if (m > -INFINITY) s *= exp((double)m - (double)bm);
            m = bm;
        }
        block_max[b] = m;
        if (m == -INFINITY || m == INFINITY || nan) { /* nothing to add yet, or undefined anyway */
            if (!take_log) row_fill(out + lo, len, 0.0f);
            continue;
        }
        s += row_exp_sum(out + lo, x + lo, len, m, !take_log);
    }
    if (row_undefined(m, nan)) {
        row_fill(out, n, NAN);
        return;
    }
    if (take_log) {
        row_shift(out, x, n, m, (float)log(s));
        return;
    }
    for (int64_t b = 0; b < nb; b++) {
        int64_t lo = b * FD_ROW_BLOCK, len = n - lo < FD_ROW_BLOCK ? n - lo : FD_ROW_BLOCK;
        double rescale = block_max[b] == -INFINITY ? 0.0 : exp((double)block_max[b] - (double)m);
        row_scale(out + lo, len, (float)(rescale / s));
    }
}

static void softmax_row(float *out, const float *x, int64_t n, int take_log) {
    if (n >= FD_BLOCK_ROW_MIN && n <= (int64_t)FD_ROW_BLOCK * FD_ROW_BLOCKS) {
        softmax_row_blocked(out, x, n, take_log);
        return;
    }
    int nan;
    float m = row_max(x, n, &nan);
    if (row_undefined(m, nan)) {
        row_fill(out, n, NAN);
        return;
    }
    double s = row_exp_sum(out, x, n, m, !take_log);
    row_finish(out, x, n, m, s, take_log);
}

#ifdef _OPENMP
/* One row, split into nt chunks: every pass runs on all threads. */
static void softmax_row_split(float *out, const float *x, int64_t n, int take_log, int nt) {
    float part_max[FD_MAX_THREADS];
    int part_nan[FD_MAX_THREADS];
    double part_sum[FD_MAX_THREADS];
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), T = omp_get_num_threads();
        /* chunks are whole multiples of 64 floats: a cache line each side */
        int64_t chunk = ((n + T - 1) / T + 63) & ~(int64_t)63;
        int64_t lo = t * chunk < n ? t * chunk : n;
        int64_t hi = lo + chunk < n ? lo + chunk : n;
        part_max[t] = row_max(x + lo, hi - lo, &part_nan[t]);
#pragma omp barrier
        float m = -INFINITY;
        int nan = 0;
        for (int j = 0; j < T; j++) {
            m = part_max[j] > m ? part_max[j] : m;
            nan |= part_nan[j];
        }
        if (row_undefined(m, nan)) {
            row_fill(out + lo, hi - lo, NAN);
        } else {
            part_sum[t] = row_exp_sum(out + lo, x + lo, hi - lo, m, !take_log);
#pragma omp barrier
            double s = 0.0;
            for (int j = 0; j < T; j++) s += part_sum[j];
            row_finish(out + lo, x + lo, hi - lo, m, s, take_log);
        }
    }
}
#endif

/* ----------------------------------------------------------------------------
 * Kernel
 * ---------------------------------------------------------------------------- */

/* out, x: [rows, n] */
void FD_FN(fd_softmax_f32)(float *out, const float *x, int64_t rows, int64_t n, int take_log) {
#ifdef _OPENMP
    int nt = fd_num_threads < FD_MAX_THREADS ? fd_num_threads : FD_MAX_THREADS;
    if (nt > 1 && rows < nt && n >= FD_SOFTMAX_SPLIT_MIN) {
        for (int64_t r = 0; r < rows; r++) softmax_row_split(out + r * n, x + r * n, n, take_log, nt);
        return;
    }
    if (nt > 1 && rows > 1 && rows * n >= FD_SOFTMAX_PAR_MIN) {
        int64_t chunk = rows / (4 * (int64_t)nt) > 0 ? rows / (4 * (int64_t)nt) : 1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, chunk)
        for (int64_t r = 0; r < rows; r++) softmax_row(out + r * n, x + r * n, n, take_log);
        return;
    }
#endif
    for (int64_t r = 0; r < rows; r++) softmax_row(out + r * n, x + r * n, n, take_log);
}

#if FD_ENTRY_POINTS
void fd_softmax_f32(float *out, const float *x, int64_t rows, int64_t n, int take_log) {
    FD_DISPATCH(fd_softmax_f32, (out, x, rows, n, take_log));
}
#endif

/* ----------------------------------------------------------------------------
 * The vectorized exp on its own, so tests can measure its error in ulp.
 * ---------------------------------------------------------------------------- */

/* out, x: [n] */
void FD_FN(fd_exp_f32)(float *out, const float *x, int64_t n) {
    int64_t i = 0;
    for (; i + FD_VLEN <= n; i += FD_VLEN) vf_store(out + i, vf_exp(vf_load(x + i)));
    for (; i < n; i++) out[i] = fd_expf(x[i]);
}

#if FD_ENTRY_POINTS
void fd_exp_f32(float *out, const float *x, int64_t n) { FD_DISPATCH(fd_exp_f32, (out, x, n)); }
#endif
