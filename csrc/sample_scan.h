/* sample_scan.h: the passes over a row that sample_scan.c gives the sampler
 * (sampling.c): scan, masses, candidates, top-k/top-p cuts.
 *
 *   x, z: [n] one row's logits   m = max(z)   group: [ng] group maxima
 *   id, cz, ce: [nc + FD_VLEN] candidates (id, logit, mass), id order
 *   sz, se, bin: [nc + FD_VLEN] selection scratch
 *
 * Compiled once per SIMD level, as the kernels: call FD_FN(fd_scan_row), ...
 * Each function's contract stands at its definition.
 */
#ifndef FD_SAMPLE_SCAN_H
#define FD_SAMPLE_SCAN_H

#include "fastdecode.h"
#include "simd.h"

#include <stdint.h>

/* ----------------------------------------------------------------------------
 * Scan: scale, max, group maxima, NaN
 * ---------------------------------------------------------------------------- */

/* dst, src: [n]; group: [n / 64 + 2 FD_VLEN + 2] or NULL. Returns max. */
float FD_FN(fd_scan_row)(float *dst, const float *src, int64_t n, float t, int div, float *group, int64_t *ngroup,
                         int *nan);
/* z: [n]. The first i with z[i] == m. */
int64_t FD_FN(fd_first_equal)(const float *z, int64_t n, float m);
/* z: [n], x: [n]; ids: [nids] */
void FD_FN(fd_penalize)(float *z, const float *x, int64_t n, const int64_t *ids, int64_t nids, float pen);

/* ----------------------------------------------------------------------------
 * Masses
 * ---------------------------------------------------------------------------- */

/* e: [n] or NULL; z: [n]. e = exp(z - m) where z - m >= dmin, else 0; returns the sum. */
double FD_FN(fd_exp_masked)(float *e, const float *z, int64_t n, float m, float dmin);
/* e: [n]. The inverse CDF in index order at u * total. */
int64_t FD_FN(fd_cdf_pick)(const float *e, int64_t n, double u);

/* ----------------------------------------------------------------------------
 * Candidates and cuts
 * ---------------------------------------------------------------------------- */

/* id, cz: [n + FD_VLEN] out; z: [n] */
int64_t FD_FN(fd_collect)(int32_t *id, float *cz, const float *z, int64_t n, float shift, float lo);
/* id, cz, ce (ce may be NULL): [nc] */
int64_t FD_FN(fd_keep_ge)(int32_t *id, float *cz, float *ce, int64_t nc, float shift, float lo);
/* a: [n] (permuted); bin: [n + FD_VLEN] */
float FD_FN(fd_kth_largest)(float *a, int64_t n, int64_t k, int32_t *bin);
/* id, cz, ce: [nc]; sz, se, bin: [nc + FD_VLEN] */
int64_t FD_FN(fd_top_p_cut)(int32_t *id, float *cz, float *ce, int64_t nc, double target, float *sz, float *se,
                            int32_t *bin);
/* group: [ng]; gz, ge, bin: [ng + FD_VLEN] */
float FD_FN(fd_top_p_group_cut)(const float *group, int64_t ng, float m, double target, float *gz, float *ge,
                                int32_t *bin);

#endif /* FD_SAMPLE_SCAN_H */
