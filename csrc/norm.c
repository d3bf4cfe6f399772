/* norm.c: LayerNorm and RMSNorm over the rows of a [rows, n] array.
 *
 * A decode step normalizes one row of a few thousand floats twice per
 * layer; in NumPy that is a dozen ufunc calls (docs/tuning.md), here two
 * passes for the statistics and one to write.
 * Sums are kept in double (FD_SUM_BLOCK, simd.h); the mean is subtracted
 * before the squares are summed (no cancellation of E[x^2] - E[x]^2), and
 * as two floats (hi + lo), so a row whose mean is far from zero loses no
 * more than its own rounding.
 */
#include "fastdecode.h"
#include "simd.h"

#include <math.h>

/* x: [n]. Returns, in double, the sum of ((x - hi) - lo)^2 (square) or of
 * (x - hi) - lo (not square). */
static double row_sum(const float *x, int64_t n, float hi, float lo, int square) {
    vf hv = vf_set1(hi), lv = vf_set1(lo);
    vd acc = vd_zero();
    int64_t i = 0;
    while (i + FD_VLEN <= n) {
        vf block = vf_set1(0.0f);
        for (int j = 0; j < FD_SUM_BLOCK && i + FD_VLEN <= n; j++, i += FD_VLEN) {
            vf v = vf_sub(vf_sub(vf_load(x + i), hv), lv);
            block = square ? vf_fmadd(v, v, block) : vf_add(block, v);
        }
        acc = vd_add_vf(acc, block);
    }
    double s = vd_reduce(acc);
    for (; i < n; i++) {
        float v = (x[i] - hi) - lo;
        s += square ? (double)v * v : v;
    }
    return s;
}

/* out: [rows, n] = (x - mean) / sqrt(var + eps) * w + b (LayerNorm), or
 * x / sqrt(mean(x^2) + eps) * w (rms); x: [rows, n]; w, b: [n] (b may be
 * NULL). out may be x. */
void FD_FN(fd_norm_f32)(float *out, const float *x, const float *w, const float *b, int64_t rows, int64_t n,
                        float eps, int rms) {
    if (n <= 0) return;
    for (int64_t r = 0; r < rows; r++) {
        const float *xr = x + r * n;
        float *o = out + r * n;
        /* For a row far from zero (|mean| >> std): the mean is summed as
         * x - x[0] (small terms, which the float partial sums keep), and
         * subtracted as two floats, hi + lo (x - hi is exact near the mean). */
        double mean = rms ? 0.0 : (double)xr[0] + row_sum(xr, n, xr[0], 0.0f, 0) / (double)n;
        float hi = (float)mean, lo = (float)(mean - (double)hi);
        float inv = (float)(1.0 / sqrt(row_sum(xr, n, hi, lo, 1) / (double)n + (double)eps));
        vf hv = vf_set1(hi), lv = vf_set1(lo), iv = vf_set1(inv);
        int64_t i = 0;
        for (; i + FD_VLEN <= n; i += FD_VLEN) {
            vf y = vf_mul(vf_mul(vf_sub(vf_sub(vf_load(xr + i), hv), lv), iv), vf_load(w + i));
            vf_store(o + i, b ? vf_add(y, vf_load(b + i)) : y);
        }
        for (; i < n; i++) {
            float y = ((xr[i] - hi) - lo) * inv * w[i];
            o[i] = b ? y + b[i] : y;
        }
    }
}

#if FD_ENTRY_POINTS
void fd_norm_f32(float *out, const float *x, const float *w, const float *b, int64_t rows, int64_t n, float eps,
                 int rms) {
    FD_DISPATCH(fd_norm_f32, (out, x, w, b, rows, n, eps, rms));
}
#endif
