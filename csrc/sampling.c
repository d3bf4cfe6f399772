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
 */
#include "fastdecode.h"
#include "simd.h"
#include "select.h"

#if FD_HAVE_PTHREADS
#include <pthread.h>
#endif
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define FD_GROUP (64 * FD_VLEN)   /* elements per top-k group block */
#define FD_CDF_BLOCK (4 * FD_VLEN) /* entries per block of the draw's walk */
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

/* ----------------------------------------------------------------------------
 * Scan: scale, max, group maxima, NaN
 * ---------------------------------------------------------------------------- */

/* One block of vectors: returns the lane-wise max; dst = src / t when div. */
static inline vf scan_block(float *dst, const float *src, int64_t len, vf tv, int div, vi *nan) {
    vf g0 = vf_set1(-INFINITY), g1 = g0;
    int64_t j = 0;
    for (; j + 2 * FD_VLEN <= len; j += 2 * FD_VLEN) {
        vf a = vf_load(src + j), b = vf_load(src + j + FD_VLEN);
        if (div) {
            a = vf_div(a, tv);
            b = vf_div(b, tv);
        }
        if (dst) {
            vf_store(dst + j, a);
            vf_store(dst + j + FD_VLEN, b);
        }
        *nan = vi_nan_track(vi_nan_track(*nan, a), b);
        g0 = vf_max(g0, a);
        g1 = vf_max(g1, b);
    }
    for (; j < len; j += FD_VLEN) {
        vf a = vf_load(src + j);
        if (div) a = vf_div(a, tv);
        if (dst) vf_store(dst + j, a);
        *nan = vi_nan_track(*nan, a);
        g0 = vf_max(g0, a);
    }
    return vf_max(g0, g1);
}

/* dst, src: [n] (dst NULL: read only; dst may be src); group: [group_capacity(n)] or NULL.
 * dst = src / t when div. Returns max; *ngroup = group maxima written;
 * *nan set when any entry is NaN. Groups: each lane of each block of
 * FD_GROUP elements, then the lanes of the last whole vectors, then the
 * scalar tail: a partition of the row, which is all top-k needs. */
static float scan_row(float *dst, const float *src, int64_t n, float t, int div, float *group,
                      int64_t *ngroup, int *nan) {
    vf tv = vf_set1(t), mx = vf_set1(-INFINITY);
    vi nanv = vi_zero();
    int64_t i = 0, g = 0;
    for (; i + FD_GROUP <= n; i += FD_GROUP) {
        vf gm = scan_block(dst ? dst + i : NULL, src + i, FD_GROUP, tv, div, &nanv);
        if (group) vf_store(group + g, gm);
        g += FD_VLEN;
        mx = vf_max(mx, gm);
    }
    int64_t whole = (n - i) / FD_VLEN * FD_VLEN;
    if (whole) {
        vf gm = scan_block(dst ? dst + i : NULL, src + i, whole, tv, div, &nanv);
        if (group) vf_store(group + g, gm);
        g += FD_VLEN;
        mx = vf_max(mx, gm);
        i += whole;
    }
    float m = vf_reduce_max(mx);
    int bad = vi_reduce_max_u32(nanv) > 0x7f800000u;
    if (i < n) {
        float gm = -INFINITY;
        for (; i < n; i++) {
            float v = div ? src[i] / t : src[i];
            if (dst) dst[i] = v;
            bad |= v != v;
            gm = v > gm ? v : gm;
        }
        if (group) group[g] = gm;
        g++;
        m = gm > m ? gm : m;
    }
    *ngroup = g;
    *nan = bad;
    return m;
}

/* z: [n]. The first i with z[i] == m. */
static int64_t first_equal(const float *z, int64_t n, float m) {
    vf mv = vf_set1(m);
    int64_t i = 0;
    for (; i + FD_VLEN <= n; i += FD_VLEN) {
        uint32_t k = vf_mask_eq(vf_load(z + i), mv);
        if (k) return i + __builtin_ctz(k);
    }
    for (; i < n; i++)
        if (z[i] == m) return i;
    return 0;
}

/* z: [n] (a copy of x), x: [n]; ids: [nids]. Each seen id once, from the
 * original logit, so repeated ids change nothing more. Ids outside [0, n)
 * are skipped (values are never trusted: fastdecode.h). */
static void penalize(float *z, const float *x, int64_t n, const int64_t *ids, int64_t nids, float pen) {
    for (int64_t j = 0; j < nids; j++) {
        int64_t t = ids[j];
        if ((uint64_t)t >= (uint64_t)n) continue;
        float v = x[t];
        z[t] = v < 0 ? v * pen : v / pen;
    }
}

/* ----------------------------------------------------------------------------
 * Masses
 * ---------------------------------------------------------------------------- */

/* e: [n] or NULL; z: [n]. e = exp(z - m) where z - m >= dmin, else 0;
 * returns the sum in double. The tail goes through vf_exp too, padded. */
static double exp_masked(float *e, const float *z, int64_t n, float m, float dmin) {
    vf mv = vf_set1(m), lo = vf_set1(dmin), zero = vf_set1(0.0f);
    vd acc = vd_zero();
    int64_t i = 0;
    while (i + FD_VLEN <= n) {
        vf block = zero;
        for (int j = 0; j < FD_SUM_BLOCK && i + FD_VLEN <= n; j++, i += FD_VLEN) {
            vf d = vf_sub(vf_load(z + i), mv);
            vf v = vf_where_ge(d, lo, vf_exp(d), zero);
            if (e) vf_store(e + i, v);
            block = vf_add(block, v);
        }
        acc = vd_add_vf(acc, block);
    }
    if (i < n) {
        float pad[FD_VLEN];
        for (int j = 0; j < FD_VLEN; j++) pad[j] = i + j < n ? z[i + j] : -INFINITY;
        vf d = vf_sub(vf_load(pad), mv);
        vf v = vf_where_ge(d, lo, vf_exp(d), zero);
        vf_store(pad, v);
        if (e)
            for (int j = 0; i + j < n; j++) e[i + j] = pad[j];
        acc = vd_add_vf(acc, v);
    }
    return vd_reduce(acc);
}

static inline float block_sum(const float *e) { /* FD_CDF_BLOCK entries */
    vf a = vf_add(vf_load(e), vf_load(e + FD_VLEN));
    vf b = vf_add(vf_load(e + 2 * FD_VLEN), vf_load(e + 3 * FD_VLEN));
    return vf_reduce_add(vf_add(a, b));
}

/* e: [n] masses (n >= 1, some > 0). The inverse CDF in index order: the
 * first i whose cumulative mass exceeds u * total. Block sums are
 * recomputed, not stored: the same code gives the same sums both times. */
static int64_t cdf_pick(const float *e, int64_t n, double u) {
    int64_t nb = n / FD_CDF_BLOCK, i;
    double total = 0.0;
    for (int64_t b = 0; b < nb; b++) total += block_sum(e + b * FD_CDF_BLOCK);
    for (i = nb * FD_CDF_BLOCK; i < n; i++) total += e[i];
    double target = u * total, cum = 0.0;
    for (int64_t b = 0; b < nb; b++) {
        double s = block_sum(e + b * FD_CDF_BLOCK);
        if (cum + s > target) {
            double c = cum;
            for (i = b * FD_CDF_BLOCK; i < (b + 1) * FD_CDF_BLOCK; i++) {
                c += e[i];
                if (c > target) return i;
            }
        }
        cum += s;
    }
    for (i = nb * FD_CDF_BLOCK; i < n; i++) {
        cum += e[i];
        if (cum > target) return i;
    }
    for (i = n - 1; i > 0; i--) /* u * total rounded past the end: the last token with mass */
        if (e[i] > 0) return i;
    return 0;
}

/* ----------------------------------------------------------------------------
 * Candidates: (id, logit, mass) in id order
 * ---------------------------------------------------------------------------- */

/* id, cz: [n + FD_VLEN] out; z: [n]. Appends every i with z[i] - shift >= lo; returns the count. */
static int64_t collect(int32_t *id, float *cz, const float *z, int64_t n, float shift, float lo) {
    vf sv = vf_set1(shift), lv = vf_set1(lo);
    int64_t c = 0, i = 0;
    for (; i + 4 * FD_VLEN <= n; i += 4 * FD_VLEN) {
        vf a = vf_load(z + i), b = vf_load(z + i + FD_VLEN);
        vf d = vf_load(z + i + 2 * FD_VLEN), e = vf_load(z + i + 3 * FD_VLEN);
        uint32_t ka = vf_mask_ge(vf_sub(a, sv), lv), kb = vf_mask_ge(vf_sub(b, sv), lv);
        uint32_t kd = vf_mask_ge(vf_sub(d, sv), lv), ke = vf_mask_ge(vf_sub(e, sv), lv);
        if (!(ka | kb | kd | ke)) continue; /* the common case: nothing here */
        c += vf_compress(cz + c, id + c, (int32_t)i, a, ka);
        c += vf_compress(cz + c, id + c, (int32_t)(i + FD_VLEN), b, kb);
        c += vf_compress(cz + c, id + c, (int32_t)(i + 2 * FD_VLEN), d, kd);
        c += vf_compress(cz + c, id + c, (int32_t)(i + 3 * FD_VLEN), e, ke);
    }
    for (; i < n; i++)
        if (z[i] - shift >= lo) {
            id[c] = (int32_t)i;
            cz[c++] = z[i];
        }
    return c;
}

/* id, cz, ce (ce may be NULL): [nc]. Keeps the entries with cz - shift >= lo, in order. */
static int64_t keep_ge(int32_t *id, float *cz, float *ce, int64_t nc, float shift, float lo) {
    int64_t c = 0;
    for (int64_t i = 0; i < nc; i++) { /* without a branch, as in top_p_cut */
        float v = cz[i];
        id[c] = id[i], cz[c] = v;
        if (ce) ce[c] = ce[i];
        c += v - shift >= lo;
    }
    return c;
}

/* ----------------------------------------------------------------------------
 * Selection (select.c): the k-th largest logit, the boundary of a mass
 * ---------------------------------------------------------------------------- */

/* a: [n] (permuted), 1 <= k <= n; bin: [n + FD_VLEN] scratch. The k-th largest entry. */
static float kth_largest(float *a, int64_t n, int64_t k, int32_t *bin) {
    double above;
    return FD_FN(fd_select)(a, NULL, n, (double)k, &above, bin, 0x9E3779B97F4A7C15ull);
}

/* z, e: [n] (permuted together), target > 0: fd_select's boundary logit. */
static float weighted_select(float *z, float *e, int64_t n, double target, double *above, int32_t *bin) {
    return FD_FN(fd_select)(z, e, n, target, above, bin, 0xD1B54A32D192ED03ull);
}

/* ----------------------------------------------------------------------------
 * Filters over the candidates
 * ---------------------------------------------------------------------------- */

/* id, cz, ce: [nc] in id order, sz, se, bin: [nc + FD_VLEN] scratch. Keeps the tokens
 * whose mass ranked strictly above stays below target = p * S. */
static int64_t top_p_cut(int32_t *id, float *cz, float *ce, int64_t nc, double target, float *sz, float *se,
                         int32_t *bin) {
    memcpy(sz, cz, (size_t)nc * sizeof(float));
    memcpy(se, ce, (size_t)nc * sizeof(float));
    double above;
    float zb = weighted_select(sz, se, nc, target, &above, bin);
    int64_t c = 0;
    for (int64_t i = 0; i < nc; i++) { /* compaction without a branch: keeping is a coin flip */
        float v = cz[i], w = ce[i];
        int keep = v > zb;
        if (v == zb && above < target) { /* a tie at the boundary: id order decides */
            keep = 1;
            above += w;
        }
        id[c] = id[i], cz[c] = v, ce[c] = w;
        c += keep;
    }
    return c;
}

/* group: [ng] the scan's group maxima; gz, ge, bin: [ng + FD_VLEN] scratch. A lower
 * bound on top-p's boundary logit: each group whose max is >= zg holds at
 * least its max's mass, so once those reach target (with a margin for
 * rounding) the kept tokens all lie at or above zg. -inf when they never do
 * (a flat row), and L's cut is all there is. */
static float top_p_group_cut(const float *group, int64_t ng, float m, double target, float *gz, float *ge,
                             int32_t *bin) {
    memcpy(gz, group, (size_t)ng * sizeof(float));
    target *= 1.0 + 1e-5;
    if (exp_masked(ge, gz, ng, m, -INFINITY) < target) return -INFINITY;
    double above;
    return weighted_select(gz, ge, ng, target, &above, bin);
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
        penalize(s->z, x, n, prev, nprev, pen);
        z = src = dst = s->z;
    } else if (div) {
        z = dst = s->z;
    }
    int nan;
    row_state r = {.z = z, .n = n};
    r.m = scan_row(dst, src, n, t, div, s->group, &r.ng, &nan);
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
        lo = kth_largest(s->sz, r->ng, k, s->bin);
    }
    int64_t nc = collect(s->id, s->cz, r->z, r->n, 0.0f, lo);
    memcpy(s->sz, s->cz, (size_t)nc * sizeof(float));
    float kth = kth_largest(s->sz, nc, k, s->bin);
    r->nc = keep_ge(s->id, s->cz, NULL, nc, 0.0f, kth);
    r->mass = exp_masked(s->ce, s->cz, r->nc, r->m, -INFINITY);
    r->some = 1;
}

/* Top-p (0 < p < 1) over the candidates, or over the whole row when none. */
static void filter_top_p(row_state *r, double top_p, scratch *s) {
    if (!r->some) {
        r->mass = exp_masked(NULL, r->z, r->n, r->m, -INFINITY);
        /* below L = (1-p) S / 2n the tokens hold < (1-p) S / 2 together,
         * so the boundary lies above (the 1e-3 covers vf_exp's rounding) */
        float lo = (float)(log((1.0 - top_p) * r->mass / (2.0 * (double)r->n)) - 1e-3);
        float zg = top_p_group_cut(s->group, r->ng, r->m, top_p * r->mass, s->sz, s->se, s->bin);
        lo = zg - r->m > lo ? zg - r->m : lo;
        r->nc = collect(s->id, s->cz, r->z, r->n, r->m, lo);
        exp_masked(s->ce, s->cz, r->nc, r->m, -INFINITY);
        r->some = 1;
    }
    r->nc = top_p_cut(s->id, s->cz, s->ce, r->nc, top_p * r->mass, s->sz, s->se, s->bin);
}

/* Min-p (dmin = log(min_p) > -inf): z - m >= dmin; alone, a plain threshold that needs no S. */
static void filter_min_p(row_state *r, float dmin, scratch *s) {
    if (!r->some) {
        r->nc = collect(s->id, s->cz, r->z, r->n, r->m, dmin);
        exp_masked(s->ce, s->cz, r->nc, r->m, -INFINITY);
        r->some = 1;
        return;
    }
    r->nc = keep_ge(s->id, s->cz, s->ce, r->nc, r->m, dmin);
}

/* Greedy: the first max. */
static void finish_greedy(row_result res, const row_state *r) {
    int64_t i = first_equal(r->z, r->n, r->m);
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
    double w = exp_masked(e, r->z, n, r->m, -INFINITY);
    if (res.out) {
        vf sv = vf_set1((float)(1.0 / w));
        int64_t i = 0;
        for (; i + FD_VLEN <= n; i += FD_VLEN) vf_store(e + i, vf_mul(vf_load(e + i), sv));
        for (; i < n; i++) e[i] = (float)(e[i] / w);
    }
    if (res.pick) *res.pick = cdf_pick(e, n, u);
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
    if (res.pick) *res.pick = s->id[cdf_pick(s->ce, r.nc, p->u)];
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
        float m = scan_row(NULL, xr, n, 1.0f, 0, NULL, &ng, &nan);
        int code = nan ? FD_ROW_NAN : m == INFINITY ? FD_ROW_POSINF : m == -INFINITY ? FD_ROW_NEGINF : 0;
        ids[r] = code ? code : first_equal(xr, n, m);
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
        if (b > a) penalize(o, xr, n, prev_ids + a, b - a, (float)penalty[r]);
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
