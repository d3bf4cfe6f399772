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
    double part_sum[FD_MAX_PARTS];
} read_job;

/* One contiguous slice (fd_part_range, whole cache lines) per thread asked for. */
static void read_part(void *ctx, int t, int nt) {
    read_job *j = ctx;
    for (int part = t; part < j->parts; part += nt) {
        int64_t lo, hi;
        fd_part_range(j->n, j->parts, part, 16, &lo, &hi);
        j->part_sum[part] = sum_part(j->x + lo, hi - lo);
    }
}

double FD_FN(fd_read_sum_f32)(const float *x, int64_t n) {
    int nt = fd_threads();
    read_job j = {.x = x, .n = n, .parts = nt < FD_MAX_PARTS ? nt : FD_MAX_PARTS};
    fd_parallel(read_part, &j, j.parts);
    double total = 0.0;
    for (int part = 0; part < j.parts; part++) total += j.part_sum[part];
    return total;
}

#if FD_ENTRY_POINTS
double fd_read_sum_f32(const float *x, int64_t n) { return FD_DISPATCH(fd_read_sum_f32, (x, n)); }
#endif
