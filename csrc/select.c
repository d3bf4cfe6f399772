/* select.c: selection without sorting, for the sampler (sampling.c).
 *
 *   z: [n] values (permuted in place), e: [n] weights or NULL (every weight
 *   1), target: the mass (or rank) to reach, ranked by z descending
 *
 * One algorithm serves both questions the sampler asks: the k-th largest
 * logit (top-k: unit weights, target k) and the boundary logit of a mass
 * (top-p: weights exp(z - max), target p S). Large inputs first go through
 * histogram rounds (buckets of equal width in z, a branch-free pass each),
 * then a three-way quickselect finishes over one bucket, then an insertion
 * sort below FD_SELECT_SMALL entries.
 */
#include "fastdecode.h"
#include "simd.h"
#include "select.h"

#include <string.h>

#define FD_SELECT_SMALL 16 /* below this, selection sorts by insertion */

/* ----------------------------------------------------------------------------
 * Histogram rounds
 * ---------------------------------------------------------------------------- */

#define FD_HIST_BINS 2048 /* most buckets in a histogram round; one per 8 entries below that */
#ifndef FD_HIST_MIN
#define FD_HIST_MIN 256 /* selections over more entries start with histogram rounds */
#endif

/* z, e: [n] (permuted; e NULL: every weight 1), n > FD_HIST_MIN; bin:
 * [n + FD_VLEN] scratch. One round of histogram selection: buckets of equal width in z (bucket 0 the
 * largest), the mass of each, the first bucket where the mass from the top
 * reaches target; its entries move to the front. Returns their count (n:
 * no progress) and adds the mass of the buckets above to *acc. Every
 * bucket index comes from the same vector code (the tail padded), so an
 * entry's bucket is the same in both passes that need it. */
static int64_t histogram_round(float *z, float *e, int64_t n, double target, double *acc, int32_t *bin) {
    vf vhi = vf_set1(-INFINITY), vlo = vf_set1(INFINITY);
    int64_t i = 0;
    for (; i + FD_VLEN <= n; i += FD_VLEN) {
        vf v = vf_load(z + i);
        vhi = vf_max(vhi, v);
        vlo = vf_min(vlo, v);
    }
    float hi = vf_reduce_max(vhi), lo = -vf_reduce_max(vf_sub(vf_set1(0.0f), vlo));
    for (; i < n; i++) {
        hi = z[i] > hi ? z[i] : hi;
        lo = z[i] < lo ? z[i] : lo;
    }
    double range = (double)hi - (double)lo;
    if (!(range > 0) || range > 1e30) return n;
    int bins = n / 8 < FD_HIST_BINS ? (int)(n / 8) : FD_HIST_BINS;
    vf hv = vf_set1(hi), sv = vf_set1((float)(bins / range)), top = vf_set1((float)(bins - 1));
    for (i = 0; i < n; i += FD_VLEN) {
        float pad[FD_VLEN];
        const float *src = z + i;
        if (i + FD_VLEN > n) {
            for (int j = 0; j < FD_VLEN; j++) pad[j] = i + j < n ? z[i + j] : hi;
            src = pad;
        }
        vi_store(bin + i, vf_to_int(vf_min(vf_mul(vf_sub(hv, vf_load(src)), sv), top)));
    }
    double mass[FD_HIST_BINS];
    memset(mass, 0, (size_t)bins * sizeof(double));
    if (e)
        for (i = 0; i < n; i++) mass[bin[i]] += e[i];
    else
        for (i = 0; i < n; i++) mass[bin[i]] += 1.0;
    int b = 0, last = 0;
    double a = *acc;
    for (; b < bins; b++) {
        if (mass[b] > 0) last = b;
        if (a + mass[b] >= target) break;
        a += mass[b];
    }
    if (b == bins) { /* rounding kept the total below target: the last bucket */
        b = last;
        a -= mass[b];
    }
    *acc = a;
    int64_t c = 0;
    for (i = 0; i < n; i++)
        if (bin[i] == b) {
            float v = z[i];
            z[i] = z[c], z[c] = v;
            if (e) {
                float w = e[i];
                e[i] = e[c], e[c] = w;
            }
            c++;
        }
    return c;
}

/* ----------------------------------------------------------------------------
 * Three-way quickselect, descending
 * ---------------------------------------------------------------------------- */

/* Pivot: median of three entries at pseudo-random places, so no input
 * order makes the selection quadratic in practice. */
static float pick_pivot(const float *a, int64_t lo, int64_t hi, uint64_t *seed) {
    uint64_t span = (uint64_t)(hi - lo);
    float v[3];
    for (int j = 0; j < 3; j++) {
        *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
        v[j] = a[lo + (int64_t)((*seed >> 33) % span)];
    }
    if (v[0] > v[1]) { float t = v[0]; v[0] = v[1]; v[1] = t; }
    if (v[1] > v[2]) v[1] = v[2];
    return v[0] > v[1] ? v[0] : v[1];
}

/* z, e: [lo, hi) (e NULL: unit weights). Moves entries > pv to [lo, *gt),
 * == pv to [*gt, *lt), < pv to [*lt, hi); *mg, *me: their masses. The one
 * partition loop; `weighted` is a constant at each call, so each caller
 * gets a loop without the test. */
static inline __attribute__((always_inline)) void partition3(float *z, float *e, int64_t lo, int64_t hi, float pv,
                                                             int weighted, int64_t *gt_out, int64_t *lt_out,
                                                             double *mg_out, double *me_out) {
    int64_t gt = lo, i = lo, lt = hi; /* [lo,gt) > pv, [gt,lt) == pv, [lt,hi) < pv */
    double mg = 0.0, me = 0.0;        /* unit weights: counted from gt and lt instead */
    while (i < lt) {
        float v = z[i], w = weighted ? e[i] : 1.0f;
        if (v > pv) {
            z[i] = z[gt], z[gt] = v;
            if (weighted) e[i] = e[gt], e[gt] = w, mg += w;
            gt++, i++;
        } else if (v < pv) {
            lt--;
            z[i] = z[lt], z[lt] = v;
            if (weighted) e[i] = e[lt], e[lt] = w;
        } else {
            i++;
            if (weighted) me += w;
        }
    }
    if (!weighted) mg = (double)(gt - lo), me = (double)(lt - gt);
    *gt_out = gt, *lt_out = lt, *mg_out = mg, *me_out = me;
}

float FD_FN(fd_select)(float *z, float *e, int64_t n, double target, double *above, int32_t *bin, uint64_t seed) {
    double acc = 0.0; /* mass of everything ranked above [lo, hi); stays < target */
    while (n > FD_HIST_MIN) {
        int64_t c = histogram_round(z, e, n, target, &acc, bin);
        if (c == n) break;
        n = c;
    }
    int64_t lo = 0, hi = n;
    seed ^= (uint64_t)n;
    while (hi - lo > FD_SELECT_SMALL) {
        float pv = pick_pivot(z, lo, hi, &seed);
        int64_t gt, lt;
        double mg, me;
        if (e) partition3(z, e, lo, hi, pv, 1, &gt, &lt, &mg, &me);
        else partition3(z, e, lo, hi, pv, 0, &gt, &lt, &mg, &me);
        if (acc + mg >= target) {
            hi = gt;
        } else if (acc + mg + me >= target) {
            *above = acc + mg;
            return pv;
        } else {
            acc += mg + me;
            if (lt == hi) { /* everything counted, target not reached */
                *above = acc - me;
                return pv;
            }
            lo = lt;
        }
    }
    for (int64_t i = lo + 1; i < hi; i++) { /* insertion sort by z, descending */
        float v = z[i], w = e ? e[i] : 1.0f;
        int64_t j = i;
        for (; j > lo && z[j - 1] < v; j--) {
            z[j] = z[j - 1];
            if (e) e[j] = e[j - 1];
        }
        z[j] = v;
        if (e) e[j] = w;
    }
    float last = z[lo];
    double last_above = acc;
    for (int64_t i = lo; i < hi;) { /* walk groups of equal values */
        double m = 0.0;
        int64_t j = i;
        for (; j < hi && z[j] == z[i]; j++) m += e ? e[j] : 1.0;
        if (acc + m >= target) {
            *above = acc;
            return z[i];
        }
        last = z[i], last_above = acc;
        acc += m;
        i = j;
    }
    *above = last_above;
    return last;
}
