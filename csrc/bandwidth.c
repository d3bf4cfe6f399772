/* bandwidth.c: the machine's read bandwidth, measured by summing a large
 * array with every thread (fastdecode.benchmarks.bandwidth.read_gbps). The
 * sum is returned so that no compiler can drop the reads. */
#include "fastdecode.h"
#include "simd.h"

/* x: [n]. Returns sum(x): four vector chains (loads, not adds, set the
 * pace), folded into a double every FD_READ_BLOCK floats so that sums of
 * billions of elements stay exact enough to check. */
#define FD_READ_BLOCK 4096
static double sum_part(const float *x, int64_t n) {
    double s = 0.0;
    int64_t i = 0;
    while (i + 4 * FD_VLEN <= n) {
        vf a0 = vf_set1(0.0f), a1 = a0, a2 = a0, a3 = a0;
        int64_t stop = i + FD_READ_BLOCK < n ? i + FD_READ_BLOCK : n;
        for (; i + 4 * FD_VLEN <= stop; i += 4 * FD_VLEN) {
            a0 = vf_add(a0, vf_load(x + i));
            a1 = vf_add(a1, vf_load(x + i + FD_VLEN));
            a2 = vf_add(a2, vf_load(x + i + 2 * FD_VLEN));
            a3 = vf_add(a3, vf_load(x + i + 3 * FD_VLEN));
        }
        s += vf_reduce_add(vf_add(vf_add(a0, a1), vf_add(a2, a3)));
    }
    for (; i < n; i++) s += x[i];
    return s;
}

typedef struct {
    const float *x;
    int64_t n;
    int parts;
    double part_sum[256];
} read_job;

/* Part p of the array: a contiguous slice, whole cache lines. Share t of nt
 * sums parts t, t + nt, ... (nt is fewer than the parts when the pool is busy). */
static void read_part(void *ctx, int t, int nt) {
    read_job *j = ctx;
    int64_t chunk = ((j->n + j->parts - 1) / j->parts + 15) & ~(int64_t)15;
    for (int part = t; part < j->parts; part += nt) {
        int64_t lo = part * chunk < j->n ? part * chunk : j->n, hi = lo + chunk < j->n ? lo + chunk : j->n;
        j->part_sum[part] = sum_part(j->x + lo, hi - lo);
    }
}

double FD_FN(fd_read_sum_f32)(const float *x, int64_t n) {
    read_job j = {x, n, fd_num_threads < 256 ? fd_num_threads : 256};
    fd_parallel(read_part, &j, j.parts);
    double total = 0.0;
    for (int part = 0; part < j.parts; part++) total += j.part_sum[part];
    return total;
}

#if FD_ENTRY_POINTS
double fd_read_sum_f32(const float *x, int64_t n) { return FD_DISPATCH(fd_read_sum_f32, (x, n)); }
#endif
