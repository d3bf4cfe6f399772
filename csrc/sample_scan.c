/* sample_scan.c: the sampler's passes over a row and its candidates
 * (sampling.c runs them in Hugging Face's order; select.c selects)
 *
 *   x, z: [n] one row's logits (z penalized and scaled)   m = max(z)
 *   group: [ng] group maxima, ng <= n / 64 + 2 FD_VLEN + 2
 *   id, cz, ce: [nc + FD_VLEN] candidates (id, logit, mass exp(z - m)), id order
 *   sz, se, bin: [nc + FD_VLEN] selection scratch
 *
 * Every mass goes through vf_exp (tails are padded), so a token's mass
 * never depends on where it sits in an array.
 */
#include "sample_scan.h"
#include "select.h"

#include <math.h>
#include <string.h>

#define FD_GROUP (64 * FD_VLEN)    /* elements per top-k group block */
#define FD_CDF_BLOCK (4 * FD_VLEN) /* entries per block of the draw's walk */

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

/* dst, src: [n] (dst NULL: read only; dst may be src); group: [n / 64 + 2 FD_VLEN + 2] or NULL.
 * dst = src / t when div. Returns max; *ngroup = group maxima written;
 * *nan set when any entry is NaN. Groups: each lane of each block of
 * FD_GROUP elements, then the lanes of the last whole vectors, then the
 * scalar tail: a partition of the row, which is all top-k needs. */
float FD_FN(fd_scan_row)(float *dst, const float *src, int64_t n, float t, int div, float *group,
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
int64_t FD_FN(fd_first_equal)(const float *z, int64_t n, float m) {
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
void FD_FN(fd_penalize)(float *z, const float *x, int64_t n, const int64_t *ids, int64_t nids, float pen) {
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
double FD_FN(fd_exp_masked)(float *e, const float *z, int64_t n, float m, float dmin) {
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
int64_t FD_FN(fd_cdf_pick)(const float *e, int64_t n, double u) {
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
int64_t FD_FN(fd_collect)(int32_t *id, float *cz, const float *z, int64_t n, float shift, float lo) {
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
int64_t FD_FN(fd_keep_ge)(int32_t *id, float *cz, float *ce, int64_t nc, float shift, float lo) {
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
float FD_FN(fd_kth_largest)(float *a, int64_t n, int64_t k, int32_t *bin) {
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
int64_t FD_FN(fd_top_p_cut)(int32_t *id, float *cz, float *ce, int64_t nc, double target, float *sz, float *se,
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
float FD_FN(fd_top_p_group_cut)(const float *group, int64_t ng, float m, double target, float *gz, float *ge,
                                int32_t *bin) {
    memcpy(gz, group, (size_t)ng * sizeof(float));
    target *= 1.0 + 1e-5;
    if (FD_FN(fd_exp_masked)(ge, gz, ng, m, -INFINITY) < target) return -INFINITY;
    double above;
    return weighted_select(gz, ge, ng, target, &above, bin);
}
