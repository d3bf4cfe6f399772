/* sampling.c: the token sampler, in Hugging Face's order and with its rules
 *
 *     repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw
 *
 * without sorting the vocabulary. Per row:
 *   1. scan: z = penalized(x) / T, max(z), and the max of each group of
 *      64 vectors' lanes (a NaN check rides along);
 *   2. top-k: the k-th largest group max is a lower bound on the k-th
 *      largest logit (k groups reach it), so one compare pass collects a
 *      few candidates, and a selection over them finds the threshold;
 *   3. top-p: S = sum exp(z - max) in one pass. The boundary logit lies
 *      above two cheap bounds: the weighted selection (mass instead of
 *      rank) over the group maxima, which carry at least their own mass,
 *      and L, as the tokens below L = (1-p) S / 2n carry less than
 *      (1-p) S / 2 together. A compare pass collects the tokens above the
 *      higher bound, and a weighted selection over them finds the
 *      boundary; ties there are kept in id order while the mass above
 *      stays below p S;
 *   4. min-p: p_i >= min_p p_max, that is z_i - max >= log(min_p), a plain
 *      threshold on logits (alone, it needs no S: only the tokens above it
 *      are exponentiated);
 *   5. draw: inverse CDF in token-id order over the kept tokens, with the
 *      caller's u in [0, 1): the first token whose cumulative mass exceeds
 *      u * total.
 * The passes over a row and its candidates (scan, masses, compare passes,
 * cuts) live in sample_scan.c; this file keeps the scratch memory, the
 * filters' order and the kernels.
 * Selections (select.c) over many entries start with histogram rounds (buckets of
 * equal width in z, a branch-free pass each) and finish with a three-way
 * quickselect over one bucket.
 * Tokens are ranked by logit (descending), then id (ascending): the same
 * order as by probability, without an exp that could round two logits
 * together. Masses are float32 exp(z - max) summed in double.
 *
 * Rows run in parallel (pool.c), each thread with its own scratch memory,
 * kept between calls. Every entry through vf_exp (tails are padded), so a
 * token's mass never depends on where it sits in an array.
 *
 *   x: [rows, n] logits   params: [rows]   ids, status: [rows]   out: [rows, n]
 *   prev_ids: [n_prev], row r's ids prev_ids[prev_offsets[r] : prev_offsets[r + 1]]
 */
#include "fastdecode.h"
#include "simd.h"
#include "sample_scan.h"

#if FD_HAVE_PTHREADS
#include <pthread.h>
#endif
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define FD_SAMPLE_PAR_MIN (1 << 15) /* elements in all rows worth a parallel region */

/* ----------------------------------------------------------------------------
 * Scratch memory: one block per thread, kept between calls
 *
 * Fresh memory costs a page fault per 4 KiB touched, more than a whole
 * top-k draw at V = 150k, so each thread keeps its block (grown when a row
 * needs more) until it exits: about 30 bytes per vocabulary entry.
 * ---------------------------------------------------------------------------- */

typedef struct {
    float *z;     /* [n] the scaled row, when it is not the input itself */
    float *group; /* [n / 64 + 2 FD_VLEN + 2] group maxima */
    int32_t *id;  /* [n + FD_VLEN] candidate ids, ascending */
    int32_t *bin; /* [n + FD_VLEN] histogram buckets */
    float *cz;    /* [n + FD_VLEN] candidate logits; the whole row's masses on the plain path */
    float *ce;    /* [n + FD_VLEN] candidate masses exp(z - max) */
    float *sz;    /* [n + FD_VLEN] selection copies, permuted */
    float *se;    /* [n + FD_VLEN] */
} scratch;

typedef struct {
    size_t floats; /* capacity */
    float data[];
} scratch_block;

#if FD_HAVE_PTHREADS
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static int scratch_key_ok;

static void scratch_key_create(void) { scratch_key_ok = pthread_key_create(&scratch_key, free) == 0; }

/* This thread's block (freed when the thread exits); 0 when there is none. */
static int scratch_block_get(scratch_block **b) {
    pthread_once(&scratch_once, scratch_key_create);
    if (!scratch_key_ok) return 0;
    *b = pthread_getspecific(scratch_key);
    return 1;
}
static void scratch_block_set(scratch_block *b) { pthread_setspecific(scratch_key, b); }
#else /* no pthreads: a block per thread all the same (the kernels run with
       * the GIL released), not freed when a thread exits */
static _Thread_local scratch_block *scratch_only;
static int scratch_block_get(scratch_block **b) {
    *b = scratch_only;
    return 1;
}
static void scratch_block_set(scratch_block *b) { scratch_only = b; }
#endif

static int64_t group_capacity(int64_t n) { return n / 64 + 2 * FD_VLEN + 2; }

/* This thread's block, large enough for rows of n; 0 when out of memory. */
static int scratch_get(scratch *s, int64_t n) {
    int64_t len = n + FD_VLEN; /* room for vf_compress's whole-vector stores */
    size_t need = (size_t)len * 7 + (size_t)group_capacity(n);
    scratch_block *b;
    if (!scratch_block_get(&b)) return 0;
    if (!b || b->floats < need) {
        free(b);
        b = malloc(sizeof(scratch_block) + need * sizeof(float));
        if (b) b->floats = need;
        scratch_block_set(b);
        if (!b) return 0;
    }
    float *f = b->data;
    s->z = f;
    s->cz = f + len;
    s->ce = f + 2 * len;
    s->sz = f + 3 * len;
    s->se = f + 4 * len;
    s->id = (int32_t *)(f + 5 * len);
    s->bin = (int32_t *)(f + 6 * len);
    s->group = f + 7 * len;
    return 1;
}

/* The smallest float d with (double)d >= x: float compares then decide
 * exactly as the double compare of the reference does. */
static float float_at_least(double x) {
    float f = (float)x;
    if ((double)f < x) f = nextafterf(f, INFINITY);
    return f;
}

/* ----------------------------------------------------------------------------
 * One row
 * ---------------------------------------------------------------------------- */

typedef struct {
    int64_t *pick; /* the drawn id, or NULL */
    float *out;    /* [n] processed logits or probabilities, or NULL */
    int probs;
} row_result;

/* out: [n]. The kept candidates written into an otherwise filtered row. */
static void write_candidates(float *out, int64_t n, int probs, const int32_t *id, const float *cz,
                             const float *ce, int64_t nc) {
    double w = 0.0;
    for (int64_t i = 0; i < nc; i++) w += ce[i];
    float fill = probs ? 0.0f : -INFINITY;
    for (int64_t i = 0; i < n; i++) out[i] = fill;
    for (int64_t i = 0; i < nc; i++) out[id[i]] = probs ? (float)(ce[i] / w) : cz[i];
}

/* A row after the scan: z: [n] its (penalized, scaled) logits, m = max(z),
 * group: [ng] the scan's group maxima; and the candidates kept so far, in
 * s->id / cz / ce (id order), with their mass. */
typedef struct {
    const float *z;
    int64_t n, ng;
    float m;
    int64_t nc;  /* candidates, once `some` */
    int some;    /* 0: no filter has run, every token is in */
    double mass; /* sum of the candidates' exp(z - m), or the whole row's */
} row_state;

/* Penalty, temperature, scan. Returns 0 or an FD_ROW_ code. */
static int scan_settings(row_state *st, const float *x, int64_t n, const fd_sample_params *p, const int64_t *prev,
                         int64_t nprev, scratch *s) {
    int greedy = p->temperature == 0.0;
    float t = (float)p->temperature, pen = (float)p->penalty;
    int div = !greedy && t != 1.0f;
    const float *z = x, *src = x;
    float *dst = NULL;
    if (pen != 1.0f && nprev > 0) {
        memcpy(s->z, x, (size_t)n * sizeof(float));
        FD_FN(fd_penalize)(s->z, x, n, prev, nprev, pen);
        z = src = dst = s->z;
    } else if (div) {
        z = dst = s->z;
    }
    int nan;
    row_state r = {.z = z, .n = n};
    r.m = FD_FN(fd_scan_row)(dst, src, n, t, div, s->group, &r.ng, &nan);
    *st = r;
    if (nan) return FD_ROW_NAN;
    if (r.m == INFINITY) return FD_ROW_POSINF;
    if (r.m == -INFINITY) return FD_ROW_NEGINF;
    return 0;
}

/* Top-k (1 <= k < n): the k largest, ties at the k-th kept in id order. */
static void filter_top_k(row_state *r, int64_t k, scratch *s) {
    float lo = -INFINITY;
    if (k * 4 <= r->ng) { /* the k-th largest group max: a lower bound with few tokens above */
        memcpy(s->sz, s->group, (size_t)r->ng * sizeof(float));
        lo = FD_FN(fd_kth_largest)(s->sz, r->ng, k, s->bin);
    }
    int64_t nc = FD_FN(fd_collect)(s->id, s->cz, r->z, r->n, 0.0f, lo);
    memcpy(s->sz, s->cz, (size_t)nc * sizeof(float));
    float kth = FD_FN(fd_kth_largest)(s->sz, nc, k, s->bin);
    r->nc = FD_FN(fd_keep_ge)(s->id, s->cz, NULL, nc, 0.0f, kth);
    r->mass = FD_FN(fd_exp_masked)(s->ce, s->cz, r->nc, r->m, -INFINITY);
    r->some = 1;
}

/* Top-p (0 < p < 1) over the candidates, or over the whole row when none. */
static void filter_top_p(row_state *r, double top_p, scratch *s) {
    if (!r->some) {
        r->mass = FD_FN(fd_exp_masked)(NULL, r->z, r->n, r->m, -INFINITY);
        /* below L = (1-p) S / 2n the tokens hold < (1-p) S / 2 together,
         * so the boundary lies above (the 1e-3 covers vf_exp's rounding) */
        float lo = (float)(log((1.0 - top_p) * r->mass / (2.0 * (double)r->n)) - 1e-3);
        float zg = FD_FN(fd_top_p_group_cut)(s->group, r->ng, r->m, top_p * r->mass, s->sz, s->se, s->bin);
        lo = zg - r->m > lo ? zg - r->m : lo;
        r->nc = FD_FN(fd_collect)(s->id, s->cz, r->z, r->n, r->m, lo);
        FD_FN(fd_exp_masked)(s->ce, s->cz, r->nc, r->m, -INFINITY);
        r->some = 1;
    }
    r->nc = FD_FN(fd_top_p_cut)(s->id, s->cz, s->ce, r->nc, top_p * r->mass, s->sz, s->se, s->bin);
}

/* Min-p (dmin = log(min_p) > -inf): z - m >= dmin; alone, a plain threshold that needs no S. */
static void filter_min_p(row_state *r, float dmin, scratch *s) {
    if (!r->some) {
        r->nc = FD_FN(fd_collect)(s->id, s->cz, r->z, r->n, r->m, dmin);
        FD_FN(fd_exp_masked)(s->ce, s->cz, r->nc, r->m, -INFINITY);
        r->some = 1;
        return;
    }
    r->nc = FD_FN(fd_keep_ge)(s->id, s->cz, s->ce, r->nc, r->m, dmin);
}

/* Greedy: the first max. */
static void finish_greedy(row_result res, const row_state *r) {
    int64_t i = FD_FN(fd_first_equal)(r->z, r->n, r->m);
    if (res.pick) *res.pick = i;
    if (res.out) {
        float one = 1.0f, m = r->m;
        write_candidates(res.out, r->n, res.probs, (int32_t[]){(int32_t)i}, &m, &one, 1);
    }
}

/* No filter ran (temperature alone): every token, one pass over the whole row. */
static void finish_whole_row(row_result res, const row_state *r, double u, scratch *s) {
    const int64_t n = r->n;
    if (res.out && !res.probs) {
        memmove(res.out, r->z, (size_t)n * sizeof(float));
        return;
    }
    float *e = res.out ? res.out : s->cz;
    double w = FD_FN(fd_exp_masked)(e, r->z, n, r->m, -INFINITY);
    if (res.out) {
        vf sv = vf_set1((float)(1.0 / w));
        int64_t i = 0;
        for (; i + FD_VLEN <= n; i += FD_VLEN) vf_store(e + i, vf_mul(vf_load(e + i), sv));
        for (; i < n; i++) e[i] = (float)(e[i] / w);
    }
    if (res.pick) *res.pick = FD_FN(fd_cdf_pick)(e, n, u);
}

/* x: [n]; prev: [nprev]. Returns 0 or an FD_ROW_ code. Filters run in
 * Hugging Face's order; each after the first works on the candidates. */
static int run_row(row_result res, const float *x, int64_t n, const fd_sample_params *p, const int64_t *prev,
                   int64_t nprev, scratch *s) {
    row_state r;
    int code = scan_settings(&r, x, n, p, prev, nprev, s);
    if (code) return code;
    if (p->temperature == 0.0) {
        finish_greedy(res, &r);
        return 0;
    }
    if (p->top_k >= 1.0 && p->top_k < (double)n) filter_top_k(&r, (int64_t)p->top_k, s);
    if (p->top_p > 0.0 && p->top_p < 1.0) filter_top_p(&r, p->top_p, s);
    if (p->min_p > 0.0) filter_min_p(&r, float_at_least(log(p->min_p < 1.0 ? p->min_p : 1.0)), s);
    if (!r.some) {
        finish_whole_row(res, &r, p->u, s);
        return 0;
    }
    if (res.out) write_candidates(res.out, n, res.probs, s->id, s->cz, s->ce, r.nc);
    if (res.pick) *res.pick = s->id[FD_FN(fd_cdf_pick)(s->ce, r.nc, p->u)];
    return 0;
}

/* ----------------------------------------------------------------------------
 * Kernels
 * ---------------------------------------------------------------------------- */

typedef struct {
    int64_t *ids, *status;
    float *out;
    int probs;
    const float *x;
    int64_t rows, n;
    const fd_sample_params *params;
    const int64_t *prev_ids, *prev_offsets;
    int64_t n_prev;
    atomic_llong next;  /* the next row nobody has taken */
    atomic_llong bad;   /* rows that could not be sampled */
    atomic_int nomem;
} rows_job;

/* Rows are handed out one at a time: a row with top-p costs more than a greedy one. */
static void rows_part(void *ctx, int t, int nt) {
    rows_job *j = ctx;
    const int64_t n = j->n;
    (void)t, (void)nt;
    scratch s;
    if (!scratch_get(&s, n)) {
        atomic_store(&j->nomem, 1);
        return;
    }
    int64_t bad = 0;
    for (int64_t r; (r = atomic_fetch_add(&j->next, 1)) < j->rows;) {
        const int64_t *prev = NULL;
        int64_t nprev = 0;
        if (j->prev_ids && j->prev_offsets) { /* offsets clamped: values are never trusted */
            int64_t a = j->prev_offsets[r] < 0 ? 0 : j->prev_offsets[r];
            int64_t b = j->prev_offsets[r + 1] < j->n_prev ? j->prev_offsets[r + 1] : j->n_prev;
            prev = j->prev_ids + a;
            nprev = b > a ? b - a : 0;
        }
        int64_t pick = 0;
        row_result res = {j->ids ? &pick : NULL, j->out ? j->out + r * n : NULL, j->probs};
        int code = run_row(res, j->x + r * n, n, j->params + r, prev, nprev, &s);
        if (j->ids) j->ids[r] = code ? code : pick;
        if (j->status) j->status[r] = code;
        bad += code != 0;
    }
    atomic_fetch_add(&j->bad, bad);
}

/* The rows of one call: ids (draws) or status, out (process) as given. */
static int64_t run_rows(int64_t *ids, int64_t *status, float *out, int probs, const float *x, int64_t rows,
                        int64_t n, const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                        const int64_t *prev_offsets) {
    rows_job j = {.ids = ids, .status = status, .out = out, .probs = probs, .x = x, .rows = rows, .n = n,
                  .params = params, .prev_ids = prev_ids, .prev_offsets = prev_offsets, .n_prev = n_prev};
    atomic_init(&j.next, 0);
    atomic_init(&j.bad, 0);
    atomic_init(&j.nomem, 0);
    int nt = fd_threads();
    nt = nt < rows ? nt : (int)rows;
    fd_parallel(rows_part, &j, nt < 1 || rows * n < FD_SAMPLE_PAR_MIN ? 1 : nt);
    return atomic_load(&j.nomem) ? -1 : atomic_load(&j.bad);
}

/* ids: [rows]; x: [rows, n]; params: [rows]; prev_ids: [n_prev] */
int64_t FD_FN(fd_sample_f32)(int64_t *ids, const float *x, int64_t rows, int64_t n, const fd_sample_params *params,
                             const int64_t *prev_ids, int64_t n_prev, const int64_t *prev_offsets) {
    return run_rows(ids, NULL, NULL, 0, x, rows, n, params, prev_ids, n_prev, prev_offsets);
}

/* out: [rows, n]; status: [rows]; x: [rows, n]; params: [rows]; prev_ids: [n_prev] */
int64_t FD_FN(fd_process_logits_f32)(float *out, int64_t *status, const float *x, int64_t rows, int64_t n,
                                     const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                                     const int64_t *prev_offsets, int probs) {
    return run_rows(NULL, status, out, probs, x, rows, n, params, prev_ids, n_prev, prev_offsets);
}

/* ids: [rows]; x: [rows, n] */
int64_t FD_FN(fd_argmax_f32)(int64_t *ids, const float *x, int64_t rows, int64_t n) {
    int64_t bad = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        int nan;
        int64_t ng;
        float m = FD_FN(fd_scan_row)(NULL, xr, n, 1.0f, 0, NULL, &ng, &nan);
        int code = nan ? FD_ROW_NAN : m == INFINITY ? FD_ROW_POSINF : m == -INFINITY ? FD_ROW_NEGINF : 0;
        ids[r] = code ? code : FD_FN(fd_first_equal)(xr, n, m);
        bad += code != 0;
    }
    return bad;
}

/* out, x: [rows, n] (out may be x); penalty: [rows]; prev_ids: [n_prev] */
int64_t FD_FN(fd_repetition_penalty_f32)(float *out, const float *x, int64_t rows, int64_t n, const double *penalty,
                                         const int64_t *prev_ids, int64_t n_prev, const int64_t *prev_offsets) {
    float *copy = NULL;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        if (o == xr) { /* in place: read the originals from a copy, so a repeated id counts once */
            if (!copy && !(copy = malloc((size_t)n * sizeof(float)))) return -1;
            memcpy(copy, xr, (size_t)n * sizeof(float));
            xr = copy;
        } else {
            memcpy(o, xr, (size_t)n * sizeof(float));
        }
        int64_t a = prev_offsets[r] < 0 ? 0 : prev_offsets[r];
        int64_t b = prev_offsets[r + 1] < n_prev ? prev_offsets[r + 1] : n_prev;
        if (b > a) FD_FN(fd_penalize)(o, xr, n, prev_ids + a, b - a, (float)penalty[r]);
    }
    free(copy);
    return 0;
}

#if FD_ENTRY_POINTS
int64_t fd_sample_f32(int64_t *ids, const float *x, int64_t rows, int64_t n, const fd_sample_params *params,
                      const int64_t *prev_ids, int64_t n_prev, const int64_t *prev_offsets) {
    return FD_DISPATCH(fd_sample_f32, (ids, x, rows, n, params, prev_ids, n_prev, prev_offsets));
}
int64_t fd_process_logits_f32(float *out, int64_t *status, const float *x, int64_t rows, int64_t n,
                              const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                              const int64_t *prev_offsets, int probs) {
    return FD_DISPATCH(fd_process_logits_f32, (out, status, x, rows, n, params, prev_ids, n_prev, prev_offsets, probs));
}
int64_t fd_argmax_f32(int64_t *ids, const float *x, int64_t rows, int64_t n) {
    return FD_DISPATCH(fd_argmax_f32, (ids, x, rows, n));
}
int64_t fd_repetition_penalty_f32(float *out, const float *x, int64_t rows, int64_t n, const double *penalty,
                                  const int64_t *prev_ids, int64_t n_prev, const int64_t *prev_offsets) {
    return FD_DISPATCH(fd_repetition_penalty_f32, (out, x, rows, n, penalty, prev_ids, n_prev, prev_offsets));
}
#endif
