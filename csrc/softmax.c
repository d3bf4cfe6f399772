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
#include <stdatomic.h>

/* Waking an idle worker costs more than a short row: rows are handed out
 * dynamically (the caller starts at once, a late worker takes what is
 * left), and one row is split across threads (two barriers) only when long
 * enough to repay that (docs/tuning.md). */
#define FD_SOFTMAX_PAR_MIN (1 << 17)   /* elements in all rows */
#define FD_SOFTMAX_SPLIT_MIN (1 << 20) /* elements in one row */

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

/* ----------------------------------------------------------------------------
 * Threads
 * ---------------------------------------------------------------------------- */

typedef struct {
    float *out;
    const float *x;
    int64_t rows, n, chunk;
    int take_log;
    atomic_llong next; /* rows: the first row nobody has taken */
    /* one row split into parts (fd_part_range): */
    int parts;
    float m;
    double s;
    float part_max[FD_MAX_PARTS];
    int part_nan[FD_MAX_PARTS];
    double part_sum[FD_MAX_PARTS];
} softmax_job;

/* Many rows: handed out `chunk` at a time (the caller's thread starts at
 * once, and a late worker only takes what is left). */
static void rows_part(void *ctx, int t, int nt) {
    softmax_job *j = ctx;
    (void)t, (void)nt;
    for (int64_t r0; (r0 = atomic_fetch_add(&j->next, j->chunk)) < j->rows;) {
        int64_t r1 = r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows;
        for (int64_t r = r0; r < r1; r++) softmax_row(j->out + r * j->n, j->x + r * j->n, j->n, j->take_log);
    }
}

/* One row in j->parts parts, each pass a job of its own. */
static void part_range(const softmax_job *j, int part, int64_t *lo, int64_t *hi) {
    fd_part_range(j->n, j->parts, part, 64, lo, hi);
}

static void split_max(void *ctx, int t, int nt) {
    softmax_job *j = ctx;
    for (int part = t; part < j->parts; part += nt) {
        int64_t lo, hi;
        part_range(j, part, &lo, &hi);
        j->part_max[part] = row_max(j->x + lo, hi - lo, &j->part_nan[part]);
    }
}

static void split_exp_sum(void *ctx, int t, int nt) {
    softmax_job *j = ctx;
    for (int part = t; part < j->parts; part += nt) {
        int64_t lo, hi;
        part_range(j, part, &lo, &hi);
        j->part_sum[part] = row_exp_sum(j->out + lo, j->x + lo, hi - lo, j->m, !j->take_log);
    }
}

static void split_finish(void *ctx, int t, int nt) {
    softmax_job *j = ctx;
    for (int part = t; part < j->parts; part += nt) {
        int64_t lo, hi;
        part_range(j, part, &lo, &hi);
        if (j->s != j->s) row_fill(j->out + lo, hi - lo, NAN); /* undefined row */
        else row_finish(j->out + lo, j->x + lo, hi - lo, j->m, j->s, j->take_log);
    }
}

static void softmax_row_split(softmax_job *j, int nt) {
    fd_parallel(split_max, j, nt);
    float m = -INFINITY;
    int nan = 0;
    for (int part = 0; part < j->parts; part++) {
        m = j->part_max[part] > m ? j->part_max[part] : m;
        nan |= j->part_nan[part];
    }
    j->m = m;
    if (row_undefined(m, nan)) {
        j->s = NAN;
    } else {
        fd_parallel(split_exp_sum, j, nt);
        double s = 0.0;
        for (int part = 0; part < j->parts; part++) s += j->part_sum[part];
        j->s = s;
    }
    fd_parallel(split_finish, j, nt);
}

/* ----------------------------------------------------------------------------
 * Kernel
 * ---------------------------------------------------------------------------- */

/* out, x: [rows, n] */
void FD_FN(fd_softmax_f32)(float *out, const float *x, int64_t rows, int64_t n, int take_log) {
    int nt = fd_threads();
    nt = nt < FD_MAX_PARTS ? nt : FD_MAX_PARTS;
    if (nt > 1 && rows < nt && n >= FD_SOFTMAX_SPLIT_MIN) {
        softmax_job j = {.n = n, .take_log = take_log, .parts = nt};
        for (int64_t r = 0; r < rows; r++) {
            j.out = out + r * n, j.x = x + r * n;
            softmax_row_split(&j, nt);
        }
        return;
    }
    if (nt > 1 && rows > 1 && rows * n >= FD_SOFTMAX_PAR_MIN) {
        softmax_job j = {.out = out, .x = x, .rows = rows, .n = n, .take_log = take_log};
        j.chunk = rows / (4 * (int64_t)nt) > 0 ? rows / (4 * (int64_t)nt) : 1;
        atomic_init(&j.next, 0);
        fd_parallel(rows_part, &j, rows < nt ? (int)rows : nt);
        return;
    }
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
