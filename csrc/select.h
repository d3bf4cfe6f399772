/* select.h: selection without sorting (select.c), shared by the sampler's filters.
 *
 *   z: [n] values, e: [n] weights or NULL (unit weights), bin: [n + FD_VLEN] scratch
 *
 * Compiled once per SIMD level, as the kernels: call FD_FN(fd_select).
 */
#ifndef FD_SELECT_H
#define FD_SELECT_H

#include <stdint.h>

#ifndef FD_HIST_MIN
#define FD_HIST_MIN 256 /* selections over more entries start with histogram rounds */
#endif

/* z, e permuted together; target > 0. The boundary value zb, ranked by z
 * descending: mass(z > zb) < target <= mass(z >= zb); *above = mass(z > zb).
 * With e NULL and target k (1 <= k <= n) that is the k-th largest entry.
 * When rounding leaves the whole mass below target, the smallest value.
 * seed: the pivots' pseudo-random start. */
float FD_FN(fd_select)(float *z, float *e, int64_t n, double target, double *above, int32_t *bin, uint64_t seed);

#endif /* FD_SELECT_H */
