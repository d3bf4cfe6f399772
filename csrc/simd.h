/* simd.h: one small vector vocabulary, mapped onto the SIMD level this
 * translation unit is compiled for. Every kernel file is compiled three
 * times (portable, avx2, avx512; see CMakeLists.txt) and FD_FN() gives each
 * copy's symbols their own suffix, so cpu.c can choose one at run time.
 *
 * vf is a vector of FD_VLEN floats. The portable level is plain scalar C
 * (FD_VLEN 1): the same kernel source then reads as the reference loop.
 */
#ifndef FD_SIMD_H
#define FD_SIMD_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define FD_CAT2(a, b) a##_##b
#define FD_CAT(a, b) FD_CAT2(a, b)

#if defined(FD_LEVEL_avx512)
#define FD_LEVEL avx512
#elif defined(FD_LEVEL_avx2)
#define FD_LEVEL avx2
#else
#define FD_LEVEL portable
#endif
#define FD_FN(name) FD_CAT(name, FD_LEVEL)

/* Long sums are kept in double (vd); each lane first adds FD_SUM_BLOCK
 * vectors in float, which keeps the double conversions (vd_add_vf) off the
 * critical path. */
#define FD_SUM_BLOCK 8

/* ------------------------------------------------------------------------
 * Vector vocabulary
 * ------------------------------------------------------------------------ */
#if defined(FD_LEVEL_avx512)
#include <immintrin.h>
#define FD_VLEN 16
typedef __m512 vf;
typedef __m512i vi;
static inline vf vf_load(const float *p) { return _mm512_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm512_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm512_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm512_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm512_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm512_mul_ps(a, b); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
static inline vf vf_fnmadd(vf a, vf b, vf c) { return _mm512_fnmadd_ps(a, b, c); } /* c - a*b */
static inline vf vf_max(vf a, vf b) { return _mm512_max_ps(a, b); }
static inline vf vf_min(vf a, vf b) { return _mm512_min_ps(a, b); }
static inline vf vf_round(vf a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vi vf_to_int(vf a) { return _mm512_cvtps_epi32(a); }
static inline void vi_store(int32_t *p, vi a) { _mm512_storeu_si512(p, a); }
static inline vf vf_from_bits(vi a) { return _mm512_castsi512_ps(a); }
static inline vi vi_add_shift23(vi n) { return _mm512_slli_epi32(_mm512_add_epi32(n, _mm512_set1_epi32(127)), 23); }
static inline float vf_reduce_max(vf v) { return _mm512_reduce_max_ps(v); }
static inline float vf_reduce_add(vf v) { return _mm512_reduce_add_ps(v); }
/* lanes where a is below lim are set to zero */
static inline vf vf_zero_below(vf a, vf x, float lim) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(lim), _CMP_GE_OQ), a);
}
/* nonzero if any lane is NaN */
static inline int vf_any_nan(vf a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q) != 0; }
static inline vf vf_div(vf a, vf b) { return _mm512_div_ps(a, b); }
/* bit i set where lane i of a >= b (false for NaN) / a == b */
static inline uint32_t vf_mask_ge(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
static inline uint32_t vf_mask_eq(vf a, vf b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
/* Packs the lanes of v selected by k to the front of out, and base + lane
 * of each to idx; writes FD_VLEN entries to each (room needed), returns
 * how many were packed. Register compress, then a plain store: the memory
 * form of vcompressps is microcoded and slow on some CPUs. */
static inline int vf_compress(float *out, int32_t *idx, int32_t base, vf v, uint32_t k) {
    const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    _mm512_storeu_ps(out, _mm512_maskz_compress_ps((__mmask16)k, v));
    _mm512_storeu_si512(idx, _mm512_maskz_compress_epi32((__mmask16)k, _mm512_add_epi32(_mm512_set1_epi32(base), lane)));
    return __builtin_popcount(k);
}
/* x >= lim ? a : b, lane by lane */
static inline vf vf_where_ge(vf x, vf lim, vf a, vf b) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, lim, _CMP_GE_OQ), b, a);
}
/* NaN tracking in integer lanes: vi_nan_track keeps the largest |x| bit
 * pattern seen; vi_reduce_max_u32 above 0x7f800000 means a NaN was there. */
static inline vi vi_zero(void) { return _mm512_setzero_si512(); }
static inline vi vi_nan_track(vi acc, vf x) {
    return _mm512_max_epu32(acc, _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(0x7fffffff)));
}
static inline uint32_t vi_reduce_max_u32(vi a) { return _mm512_reduce_max_epu32(a); }
/* vd: a double accumulator wide enough to take one vf */
typedef struct { __m512d lo, hi; } vd;
static inline vd vd_zero(void) { vd a = {_mm512_setzero_pd(), _mm512_setzero_pd()}; return a; }
static inline vd vd_add_vf(vd a, vf v) {
    a.lo = _mm512_add_pd(a.lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    a.hi = _mm512_add_pd(a.hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
    return a;
}
static inline double vd_reduce(vd a) { return _mm512_reduce_add_pd(_mm512_add_pd(a.lo, a.hi)); }
/* a: FD_VLEN vectors. Lane i of the result is the sum of a[i]'s lanes: 16
 * horizontal sums for 46 shuffles and adds, instead of 16 reductions. */
static inline vf vf_transpose_sum(const vf *a) {
    vf x[8], h[4];
    for (int i = 0; i < 8; i++) /* 256-bit fold: x[i] = [a[i] folded | a[i + 8] folded] */
        x[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[i], a[i + 8], 0x44), _mm512_shuffle_f32x4(a[i], a[i + 8], 0xEE));
    for (int i = 0; i < 4; i++) /* pairwise sums within 128-bit lanes (hadd) */
        h[i] = _mm512_add_ps(_mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0x88), _mm512_shuffle_ps(x[2 * i], x[2 * i + 1], 0xDD));
    vf h0 = _mm512_add_ps(_mm512_shuffle_ps(h[0], h[1], 0x88), _mm512_shuffle_ps(h[0], h[1], 0xDD));
    vf h1 = _mm512_add_ps(_mm512_shuffle_ps(h[2], h[3], 0x88), _mm512_shuffle_ps(h[2], h[3], 0xDD));
    /* h0's 128-bit lanes hold quarter sums of a[0..3] (lanes 0, 1) and a[8..11] (2, 3); h1 of a[4..7], a[12..15] */
    vf s = _mm512_add_ps(_mm512_shuffle_f32x4(h0, h1, 0x88), _mm512_shuffle_f32x4(h0, h1, 0xDD));
    return _mm512_shuffle_f32x4(s, s, 0xD8); /* [a0-3, a8-11, a4-7, a12-15] -> in order */
}

#elif defined(FD_LEVEL_avx2)
#include <immintrin.h>
#define FD_VLEN 8
typedef __m256 vf;
typedef __m256i vi;
static inline vf vf_load(const float *p) { return _mm256_loadu_ps(p); }
static inline void vf_store(float *p, vf v) { _mm256_storeu_ps(p, v); }
static inline vf vf_set1(float x) { return _mm256_set1_ps(x); }
static inline vf vf_add(vf a, vf b) { return _mm256_add_ps(a, b); }
static inline vf vf_sub(vf a, vf b) { return _mm256_sub_ps(a, b); }
static inline vf vf_mul(vf a, vf b) { return _mm256_mul_ps(a, b); }
static inline vf vf_fmadd(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
static inline vf vf_fnmadd(vf a, vf b, vf c) { return _mm256_fnmadd_ps(a, b, c); }
static inline vf vf_max(vf a, vf b) { return _mm256_max_ps(a, b); }
static inline vf vf_min(vf a, vf b) { return _mm256_min_ps(a, b); }
static inline vf vf_round(vf a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
static inline vi vf_to_int(vf a) { return _mm256_cvtps_epi32(a); }
static inline void vi_store(int32_t *p, vi a) { _mm256_storeu_si256((__m256i *)p, a); }
static inline vf vf_from_bits(vi a) { return _mm256_castsi256_ps(a); }
static inline vi vi_add_shift23(vi n) { return _mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23); }
static inline float vf_reduce_max(vf v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}
static inline float vf_reduce_add(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline vf vf_zero_below(vf a, vf x, float lim) {
    return _mm256_and_ps(a, _mm256_cmp_ps(x, _mm256_set1_ps(lim), _CMP_GE_OQ));
}
static inline int vf_any_nan(vf a) { return _mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_UNORD_Q)) != 0; }
static inline vf vf_div(vf a, vf b) { return _mm256_div_ps(a, b); }
static inline uint32_t vf_mask_ge(vf a, vf b) { return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GE_OQ)); }
static inline uint32_t vf_mask_eq(vf a, vf b) { return (uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_EQ_OQ)); }
static inline int vf_compress(float *out, int32_t *idx, int32_t base, vf v, uint32_t k) {
    float lanes[8];
    int c = 0;
    _mm256_storeu_ps(lanes, v);
    for (; k; k &= k - 1) {
        int j = __builtin_ctz(k);
        out[c] = lanes[j];
        idx[c++] = base + j;
    }
    return c;
}
static inline vf vf_where_ge(vf x, vf lim, vf a, vf b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, lim, _CMP_GE_OQ)); }
static inline vi vi_zero(void) { return _mm256_setzero_si256(); }
static inline vi vi_nan_track(vi acc, vf x) {
    return _mm256_max_epu32(acc, _mm256_and_si256(_mm256_castps_si256(x), _mm256_set1_epi32(0x7fffffff)));
}
static inline uint32_t vi_reduce_max_u32(vi a) {
    __m128i m = _mm_max_epu32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
    m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
    return (uint32_t)_mm_cvtsi128_si32(m);
}
typedef struct { __m256d lo, hi; } vd;
static inline vd vd_zero(void) { vd a = {_mm256_setzero_pd(), _mm256_setzero_pd()}; return a; }
static inline vd vd_add_vf(vd a, vf v) {
    a.lo = _mm256_add_pd(a.lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a.hi = _mm256_add_pd(a.hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
    return a;
}
static inline double vd_reduce(vd a) {
    __m256d s = _mm256_add_pd(a.lo, a.hi);
    __m128d t = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(t, _mm_unpackhi_pd(t, t)));
}
/* a: FD_VLEN vectors. Lane i of the result is the sum of a[i]'s lanes. */
static inline vf vf_transpose_sum(const vf *a) {
    vf h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
    vf h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
    vf lo = _mm256_hadd_ps(h01, h23), hi = _mm256_hadd_ps(h45, h67); /* per 128-bit half */
    return _mm256_add_ps(_mm256_permute2f128_ps(lo, hi, 0x20), _mm256_permute2f128_ps(lo, hi, 0x31));
}

#else /* portable: one lane, plain C */
#define FD_VLEN 1
typedef float vf;
typedef int32_t vi;
static inline vf vf_load(const float *p) { return *p; }
static inline void vf_store(float *p, vf v) { *p = v; }
static inline vf vf_set1(float x) { return x; }
static inline vf vf_add(vf a, vf b) { return a + b; }
static inline vf vf_sub(vf a, vf b) { return a - b; }
static inline vf vf_mul(vf a, vf b) { return a * b; }
static inline vf vf_fmadd(vf a, vf b, vf c) { return a * b + c; }
static inline vf vf_fnmadd(vf a, vf b, vf c) { return c - a * b; }
/* same NaN rule as the x86 max/min: the second operand when unordered */
static inline vf vf_max(vf a, vf b) { return a > b ? a : b; }
static inline vf vf_min(vf a, vf b) { return a < b ? a : b; }
static inline vf vf_round(vf a) { return nearbyintf(a); }
static inline vi vf_to_int(vf a) { return (vi)a; }
static inline void vi_store(int32_t *p, vi a) { *p = a; }
static inline vf vf_from_bits(vi a) { float f; memcpy(&f, &a, 4); return f; }
static inline vi vi_add_shift23(vi n) { return (vi)((uint32_t)(n + 127) << 23); }
static inline float vf_reduce_max(vf v) { return v; }
static inline float vf_reduce_add(vf v) { return v; }
static inline vf vf_zero_below(vf a, vf x, float lim) { return x >= lim ? a : 0.0f; }
static inline int vf_any_nan(vf a) { return a != a; }
static inline vf vf_div(vf a, vf b) { return a / b; }
static inline uint32_t vf_mask_ge(vf a, vf b) { return a >= b; }
static inline uint32_t vf_mask_eq(vf a, vf b) { return a == b; }
static inline int vf_compress(float *out, int32_t *idx, int32_t base, vf v, uint32_t k) {
    *out = v;
    *idx = base;
    return (int)(k & 1);
}
static inline vf vf_where_ge(vf x, vf lim, vf a, vf b) { return x >= lim ? a : b; }
static inline vi vi_zero(void) { return 0; }
static inline vi vi_nan_track(vi acc, vf x) {
    uint32_t bits;
    memcpy(&bits, &x, 4);
    bits &= 0x7fffffffu;
    return (uint32_t)acc > bits ? acc : (vi)bits;
}
static inline uint32_t vi_reduce_max_u32(vi a) { return (uint32_t)a; }
typedef double vd;
static inline vd vd_zero(void) { return 0.0; }
static inline vd vd_add_vf(vd a, vf v) { return a + (double)v; }
static inline double vd_reduce(vd a) { return a; }
static inline vf vf_transpose_sum(const vf *a) { return a[0]; }
#endif

/* ------------------------------------------------------------------------
 * exp(x) for float, vectorized.
 * Cody-Waite range reduction x = n*ln2 + r, |r| <= ln2/2, then a degree-6
 * polynomial for e^r (Cephes' expf coefficients), then scaling by 2^n
 * built in the exponent bits (AVX-512 uses a table form, below). Inputs are clamped to
 * [-87.3, 88.37] so 2^n stays a normal float; results for x < -87.3 are
 * flushed to +0 (exp(-87.3) is 1.2e-38: nothing a softmax can see), -inf
 * gives exactly 0. NaN is clamped away, so kernels test for NaN themselves.
 * Error against float64 exp on [-87.3, 88.37]: at most 1.26 ulp (portable),
 * 1.23 ulp (AVX2) and 1.69 ulp (AVX-512's table form), measured by
 * tests/test_softmax.py::test_exp_ulp.
 * ------------------------------------------------------------------------ */
#define FD_EXP_LO (-87.3f)
#define FD_EXP_HI (88.37f) /* 2^n with n <= 127 stays a normal float */

#if defined(FD_LEVEL_avx512)
/* AVX-512: x = (16q + j) ln2/16 + r with |r| <= ln2/32, so
 * e^x = 2^q * 2^(j/16) * e^r: 2^(j/16) comes from a 16-entry table held in
 * one register (vpermps picks by the low 4 bits of n = 16q + j), e^r from a
 * degree-3 Taylor polynomial (truncation r^4/24 < 1e-8), and 2^q from
 * scalef, which floors n/16 itself and underflows to +0 below 2^-149.
 * Four fewer operations than the Cephes form below. */
static inline vf vf_exp(vf x) {
    const __m512 table = _mm512_set_ps(
        1.9152065515518188f, 1.8340080976486206f, 1.7562521696090698f, 1.6817928552627563f,
        1.610490322113037f, 1.5422108173370361f, 1.4768261909484863f, 1.4142135381698608f,
        1.3542555570602417f, 1.2968395948410034f, 1.2418577671051025f, 1.1892070770263672f,
        1.1387885808944702f, 1.0905077457427979f, 1.0442737340927124f, 1.0f);
    vf xc = vf_min(vf_max(x, vf_set1(-104.0f)), vf_set1(FD_EXP_HI)); /* -inf: keep r finite */
    vf n = vf_round(vf_mul(xc, vf_set1(23.083120654223414f)));      /* 16 / ln 2 */
    vf r = vf_fnmadd(n, vf_set1(0.693359375f / 16), xc);              /* ln2/16, split in two */
    r = vf_fnmadd(n, vf_set1(-2.12194440e-4f / 16), r);
    vf t = _mm512_permutexvar_ps(_mm512_cvtps_epi32(n), table);
    vf p = vf_fmadd(vf_fmadd(vf_fmadd(vf_set1(1.0f / 6), r, vf_set1(0.5f)), r, vf_set1(1.0f)), r, vf_set1(1.0f));
    return _mm512_scalef_ps(vf_mul(t, p), vf_mul(n, vf_set1(1.0f / 16)));
}
#else
static inline vf vf_exp(vf x) {
    const vf log2e = vf_set1(1.44269504088896341f);
    const vf ln2_hi = vf_set1(0.693359375f);
    const vf ln2_lo = vf_set1(-2.12194440e-4f);
    vf xc = vf_min(vf_max(x, vf_set1(FD_EXP_LO)), vf_set1(FD_EXP_HI));
    vf n = vf_round(vf_mul(xc, log2e));
    vf r = vf_fnmadd(n, ln2_hi, xc);
    r = vf_fnmadd(n, ln2_lo, r);
    vf p = vf_set1(1.9875691500e-4f);
    p = vf_fmadd(p, r, vf_set1(1.3981999507e-3f));
    p = vf_fmadd(p, r, vf_set1(8.3334519073e-3f));
    p = vf_fmadd(p, r, vf_set1(4.1665795894e-2f));
    p = vf_fmadd(p, r, vf_set1(1.6666665459e-1f));
    p = vf_fmadd(p, r, vf_set1(5.0000001201e-1f));
    vf r2 = vf_mul(r, r);
    p = vf_fmadd(p, r2, vf_add(r, vf_set1(1.0f)));
    vf scale = vf_from_bits(vi_add_shift23(vf_to_int(n)));
    return vf_zero_below(vf_mul(p, scale), x, FD_EXP_LO);
}
#endif

/* The same function on one float, for the scalar tails: identical results
 * to a vector lane, up to fused vs separate multiply-add. */
static inline float fd_expf(float x) {
    float xc = x > FD_EXP_LO ? x : FD_EXP_LO; /* NaN clamps to LO, as in vf_exp */
    xc = xc < FD_EXP_HI ? xc : FD_EXP_HI;
    float n = nearbyintf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + (r + 1.0f);
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, 4);
    return x >= FD_EXP_LO ? p * scale : 0.0f;
}

/* Body of an unsuffixed entry point: call the copy for the level in use.
 * An expression, so non-void kernels can `return FD_DISPATCH(...)`. */
#if FD_HAVE_X86_LEVELS
#define FD_DISPATCH(name, args) (fd_dispatch_level() >= 2   ? name##_avx512 args \
                                 : fd_dispatch_level() == 1 ? name##_avx2 args   \
                                                            : name##_portable args)
static inline int fd_dispatch_level(void) { return atomic_load_explicit(&fd_level, memory_order_relaxed); }
#else
#define FD_DISPATCH(name, args) (name##_portable args)
#endif
/* The entry points are compiled once, with the portable copy. */
#if defined(FD_LEVEL_avx512) || defined(FD_LEVEL_avx2)
#define FD_ENTRY_POINTS 0
#else
#define FD_ENTRY_POINTS 1
#endif

#endif /* FD_SIMD_H */
