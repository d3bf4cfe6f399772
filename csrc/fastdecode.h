/* fastdecode.h: the C API of fastdecode's kernels.
 *
 * Conventions (llama2.c / llm.c style): plain functions over flat, C-ordered
 * float arrays, output pointer first, shapes in comments. Every function
 * trusts its arguments: fastdecode.ops validates shapes, dtypes, ranges and
 * contiguity once, in Python, before any of these runs.
 *
 * Each kernel exists once per SIMD level (suffix _portable, _avx2, _avx512);
 * the unsuffixed name dispatches on fd_level, chosen at run time in cpu.c.
 */
#ifndef FASTDECODE_H
#define FASTDECODE_H

#include <stdint.h>

#define FD_LEVEL_PORTABLE 0
#define FD_LEVEL_AVX2 1
#define FD_LEVEL_AVX512 2

/* declares name, name_portable, name_avx2, name_avx512 with one signature */
#define FD_LEVELS(ret, name, params) \
    ret name params;                 \
    ret name##_portable params;      \
    ret name##_avx2 params;          \
    ret name##_avx512 params;

/* ---- cpu.c: feature detection, level choice, threads ------------------- */
extern int fd_level;       /* the level in use */
extern int fd_num_threads; /* threads used by every parallel region */
int fd_cpu_max_level(void);     /* best level this CPU and OS support */
int fd_set_level(int level);    /* clamps to fd_cpu_max_level(); returns level in use */
int fd_set_num_threads(int n);  /* n < 1 means 1; returns the count in use */
int fd_openmp_enabled(void);
int fd_openmp_max_threads(void);
const char *fd_build_flags(void);

/* ---- softmax.c --------------------------------------------------------- */
/* out, x: [rows, n]; log != 0 gives log_softmax. Row rules: a NaN or +inf
 * anywhere, or every entry -inf, makes the whole row NaN. May be in place. */
FD_LEVELS(void, fd_softmax_f32, (float *out, const float *x, int64_t rows, int64_t n, int take_log))
/* out, x: [n]. The kernels' exp (simd.h), exposed so tests can measure it. */
FD_LEVELS(void, fd_exp_f32, (float *out, const float *x, int64_t n))

/* ---- attention.c ------------------------------------------------------- */
/* out, q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D]; lengths: [B], Hq % Hkv == 0.
 * Query i of row b sits at position lengths[b] - Tq + i and sees key j when
 * j < lengths[b] and (causal) j <= its position; seeing none gives zeros.
 * Scores are (q . k) * scale. Returns 0, -1 when scratch memory is lacking,
 * -2 when Hq is not a multiple of Hkv > 0. out may be q, never k or v. */
FD_LEVELS(int, fd_attention_f32, (float *out, const float *q, const float *k, const float *v,
                                  const int64_t *lengths, int64_t B, int64_t Hq, int64_t Hkv,
                                  int64_t Tq, int64_t Tk, int64_t D, float scale, int causal))

/* ---- bandwidth.c ------------------------------------------------------- */
/* x: [n]. sum(x), read by fd_num_threads threads: the read-bandwidth probe. */
FD_LEVELS(double, fd_read_sum_f32, (const float *x, int64_t n))

#endif /* FASTDECODE_H */
