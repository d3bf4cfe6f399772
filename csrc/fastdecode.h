/* fastdecode.h: the C API of fastdecode's kernels.
 *
 * Conventions (llama2.c / llm.c style): plain functions over flat, C-ordered
 * float arrays, output pointer first, shapes in comments.
 *
 * THE TRUST RULE. C trusts its caller for exactly this: each pointer is the
 * start of a C-contiguous buffer of the element type and the shape its
 * comment gives in terms of the size arguments (NULL only where the comment
 * allows it, or where that shape is empty), and distinct buffers do not
 * overlap unless the comment says so ("may be in place"). The Cython
 * wrappers in src/fastdecode/_native.pyx guarantee it for every call,
 * whoever calls them. Nothing else is trusted: values inside the buffers
 * (token ids, offsets, lengths, sampler settings, NaN and infinities) can be
 * anything, and no value makes a kernel read or write outside its buffers.
 * Checking what values mean for the user (a top_k below 0, an id past the
 * vocabulary) is fastdecode.ops' job, once, in Python.
 *
 * Each kernel exists once per SIMD level (suffix _portable, _avx2, _avx512);
 * the unsuffixed name dispatches on fd_level, chosen at run time in cpu.c.
 */
#ifndef FASTDECODE_H
#define FASTDECODE_H

#include <stdatomic.h>
#include <stddef.h>
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

/* ---- cpu.c: feature detection, level choice ---------------------------- */
extern atomic_int fd_level;     /* the level in use (-1 before fd_set_level) */
int fd_get_level(void);
int fd_cpu_max_level(void);     /* best level this CPU and OS support */
int fd_set_level(int level);    /* clamps to fd_cpu_max_level(); returns level in use */
const char *fd_build_flags(void);
/* AVX-512 VNNI (vpdpbusd) in the avx512 level's int8 kernels: on when the
 * CPU has it and the level is avx512; fd_set_vnni(0) turns it off (tests),
 * fd_set_vnni(1) back on where the CPU allows. Returns the setting in use. */
extern atomic_int fd_vnni;
int fd_set_vnni(int on);
static inline int fd_vnni_enabled(void) { return atomic_load_explicit(&fd_vnni, memory_order_relaxed); }

/* ---- pool.c: the worker threads ---------------------------------------- */
#define FD_MAX_THREADS 256     /* the caller and at most 255 workers */
extern atomic_int fd_num_threads; /* threads every parallel kernel may use, the caller's included */
static inline int fd_threads(void) { return atomic_load_explicit(&fd_num_threads, memory_order_relaxed); }
/* n clamped to [1, FD_MAX_THREADS] (1 without threads); returns the count in use */
int fd_set_num_threads(int n);
/* A job's share t of nt (0 <= t < nt); share 0 runs on the caller. */
typedef void (*fd_task)(void *ctx, int t, int nt);
/* Runs fn(ctx, t, nt') for t < nt' on the caller and the pool's workers and
 * returns when all are done; nt' <= nt (1 when the pool is busy with
 * another caller's job or no thread can be started). */
void fd_parallel(fd_task fn, void *ctx, int nt);
/* fd_parallel for a job that streams the weight at `reading`: when that
 * weight is in the decode order, idle workers then read ahead in the next. */
void fd_parallel_reading(fd_task fn, void *ctx, int nt, const void *reading);
/* weights: [n] start addresses, bytes: [n] sizes, in the order a decode step
 * reads them (n = 0 clears it). The caller keeps them alive until replaced. */
void fd_set_weight_order(const void *const *weights, const int64_t *bytes, int n);
/* A barrier for the nt shares of one job (model.c: a whole decode step in
 * one job). Zero-initialized; every share passes the same nt. */
typedef struct {
    _Atomic int count, gen;
} fd_barrier;
void fd_barrier_wait(fd_barrier *b, int nt);
void fd_set_spin_ns(long long ns); /* how long idle workers poll before sleeping */
long long fd_get_spin_ns(void);
int fd_threads_supported(void);
/* Jobs taken by workers since the process started: a job of nt threads
 * wakes nt - 1 workers and no others (tests check it). */
long long fd_pool_worker_jobs(void);

/* A job cut into a fixed number of parts (at most FD_MAX_PARTS) gives the
 * same result whatever team runs it: share t of nt takes parts t, t + nt,
 * ... (nt is smaller than asked when the pool is busy). Part `part` of
 * `parts` over [0, n): [*lo, *hi), its length a multiple of `align`
 * elements (a cache line or more), the last part shorter. */
#define FD_MAX_PARTS 256
static inline void fd_part_range(int64_t n, int parts, int part, int64_t align, int64_t *lo, int64_t *hi) {
    int64_t len = ((n + parts - 1) / parts + align - 1) / align * align;
    *lo = part * len < n ? part * len : n;
    *hi = *lo + len < n ? *lo + len : n;
}

/* ---- softmax.c --------------------------------------------------------- */
/* out, x: [rows, n]; log != 0 gives log_softmax. Row rules: a NaN or +inf
 * anywhere, or every entry -inf, makes the whole row NaN. May be in place. */
FD_LEVELS(void, fd_softmax_f32, (float *out, const float *x, int64_t rows, int64_t n, int take_log))
/* out, x: [n]. The kernels' exp (simd.h), exposed so tests can measure it. */
FD_LEVELS(void, fd_exp_f32, (float *out, const float *x, int64_t n))

/* ---- sampling.c -------------------------------------------------------- */
/* One row's sampler settings, each a double at its neutral value when off.
 * The one definition of the layout: Python fills a [rows, FD_SAMPLE_N_PARAMS]
 * float64 array whose columns are these fields in this order (_native.pyx
 * reads the names from here as SAMPLE_PARAM_FIELDS). */
#define FD_SAMPLE_PARAM_FIELDS(X)                                             \
    X(temperature) /* > 0; 0 = greedy (the argmax, lowest id on a tie) */     \
    X(top_k)       /* a whole number; 0 or >= n = off */                      \
    X(top_p)       /* (0, 1]; 1 = off */                                      \
    X(min_p)       /* [0, 1]; 0 = off */                                      \
    X(penalty)     /* repetition penalty > 0; 1 = off */                      \
    X(u)           /* [0, 1): the draw's uniform number */

#define FD_SAMPLE_PARAM_DOUBLE(name) double name;
typedef struct { FD_SAMPLE_PARAM_FIELDS(FD_SAMPLE_PARAM_DOUBLE) } fd_sample_params;
#define FD_SAMPLE_N_PARAMS ((int)(sizeof(fd_sample_params) / sizeof(double)))

/* Field i's name and byte offset (0 <= i < FD_SAMPLE_N_PARAMS); 0 past the end. */
static inline int fd_sample_param_field(int i, const char **name, size_t *offset) {
#define FD_SAMPLE_PARAM_NAME(name) #name,
#define FD_SAMPLE_PARAM_OFFSET(name) offsetof(fd_sample_params, name),
    static const char *const names[] = {FD_SAMPLE_PARAM_FIELDS(FD_SAMPLE_PARAM_NAME)};
    static const size_t offsets[] = {FD_SAMPLE_PARAM_FIELDS(FD_SAMPLE_PARAM_OFFSET)};
    if (i < 0 || i >= FD_SAMPLE_N_PARAMS) return 0;
    *name = names[i];
    *offset = offsets[i];
    return 1;
}

/* What a row that cannot be sampled gets instead of a token id (status): */
#define FD_ROW_NAN (-1)    /* a NaN in the row */
#define FD_ROW_POSINF (-2) /* +inf in the row, or made by the penalty or temperature */
#define FD_ROW_NEGINF (-3) /* every entry -inf, given or made by the penalty or temperature */

/* Previously seen tokens (repetition penalty), ragged rows: row r saw
 * prev_ids[prev_offsets[r] .. prev_offsets[r+1]-1], each in [0, n);
 * prev_ids: [n_prev], prev_offsets: [rows + 1]; both may be NULL in
 * fd_sample_f32 / fd_process_logits_f32 (nothing seen). */

/* ids: [rows] drawn token ids (or an FD_ROW_ code); x: [rows, n] logits;
 * params: [rows]. Returns the number of bad rows, or -1 when scratch memory
 * could not be allocated. No sort: threshold selection (sampling.c). */
FD_LEVELS(int64_t, fd_sample_f32, (int64_t *ids, const float *x, int64_t rows, int64_t n,
                                   const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                                   const int64_t *prev_offsets))
/* out: [rows, n] the logits after every processor, filtered tokens at -inf
 * (probs == 0), or the probabilities, filtered tokens at 0 (probs != 0);
 * status: [rows] 0 or an FD_ROW_ code. params[r].u is not used. */
FD_LEVELS(int64_t, fd_process_logits_f32, (float *out, int64_t *status, const float *x, int64_t rows, int64_t n,
                                           const fd_sample_params *params, const int64_t *prev_ids,
                                           int64_t n_prev, const int64_t *prev_offsets, int probs))
/* ids: [rows] the first index of each row's max (or an FD_ROW_ code); x: [rows, n] */
FD_LEVELS(int64_t, fd_argmax_f32, (int64_t *ids, const float *x, int64_t rows, int64_t n))
/* out, x: [rows, n] (out may be x); penalty: [rows]. Each distinct seen id
 * once: logit < 0 -> logit * penalty, else logit / penalty. Returns 0, or
 * -1 when an in-place call could not allocate its copy. */
FD_LEVELS(int64_t, fd_repetition_penalty_f32, (float *out, const float *x, int64_t rows, int64_t n,
                                               const double *penalty, const int64_t *prev_ids, int64_t n_prev,
                                               const int64_t *prev_offsets))

/* ---- attention.c ------------------------------------------------------- */
/* out, q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D]; lengths: [B], Hq % Hkv == 0.
 * Query i of row b sits at position lengths[b] - Tq + i and sees key j when
 * j < lengths[b] and (causal) j <= its position; seeing none gives zeros.
 * Scores are (q . k) * scale. Returns 0, -1 when scratch memory is lacking,
 * -2 when Hq is not a multiple of Hkv > 0. out may be q, never k or v. */
FD_LEVELS(int, fd_attention_f32, (float *out, const float *q, const float *k, const float *v,
                                  const int64_t *lengths, int64_t B, int64_t Hq, int64_t Hkv,
                                  int64_t Tq, int64_t Tk, int64_t D, float scale, int causal))
/* How fd_attention_f32 cuts a call into items (attention.c fills it; the
 * values depend on the SIMD level, so plan and run at one level). */
typedef struct {
    float *out;               /* [B, Hq, Tq, D] */
    const float *q;           /* [B, Hq, Tq, D] */
    const float *k, *v;       /* [B, Hkv, Tk, D] */
    const int64_t *lengths;   /* [B] */
    int64_t B, Hq, Hkv, Tq, Tk, D, G;
    int64_t dp;               /* D rounded up to FD_VLEN: scratch row length */
    float scale;
    int causal;
    int rows_on_lanes;        /* which engine */
    int64_t tile_heads, tile_pos; /* a tile: up to tile_heads heads x tile_pos positions */
    int64_t htiles, itiles, tiles, max_rows;
    int64_t chunk, nchunks;   /* keys per chunk, chunks per tile */
} fd_att_plan;
/* The same attention as shares of a caller's pool job (model.c): plan once
 * (returns the floats of partial state, or -2; the caller sets out, q, k,
 * v), then every share t of nt runs the items, a barrier, the merge (both
 * return 0, or -1 when scratch memory is lacking). */
FD_LEVELS(int64_t, fd_attention_plan_f32, (fd_att_plan *p, const int64_t *lengths, int64_t B, int64_t Hq,
                                           int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D, float scale, int causal))
FD_LEVELS(int, fd_attention_items_f32, (const fd_att_plan *p, float *partials, int t, int nt))
FD_LEVELS(int, fd_attention_merge_f32, (const fd_att_plan *p, float *partials, int t, int nt))

/* ---- linear.c ---------------------------------------------------------- */
/* out: [rows, n_out] = x W^T + bias; x: [rows, n_in]; w: [n_out, n_in]
 * (torch's Linear layout); bias: [n_out] or NULL. Built for the few rows of
 * a decode step: each pass over w serves up to 8 rows of x. */
FD_LEVELS(void, fd_linear_f32, (float *out, const float *x, const float *w, const float *bias, int64_t rows,
                                int64_t n_in, int64_t n_out))
/* The output columns [lo, hi) of fd_linear_f32, on the calling thread (a
 * share of a caller's pool job: model.c). */
FD_LEVELS(void, fd_linear_cols_f32, (float *out, const float *x, const float *w, const float *bias, int64_t rows,
                                     int64_t n_in, int64_t n_out, int64_t lo, int64_t hi))

/* Many rows of x (a prefill chunk): the output columns [lo, hi) of
 * out [rows, n_out] = x W^T + bias, with W [n_out, n_in] float32 (fmt
 * FD_FMT_F32) or in a GGUF-layout format of quant.c, whose rows are decoded
 * to float32 FD_GEMM_WROWS at a time into wbuf [FD_GEMM_WROWS, n_in]. */
#define FD_GEMM_WROWS 8
FD_LEVELS(void, fd_gemm_cols, (float *out, const float *x, const void *w, int fmt, const float *bias, int64_t rows,
                               int64_t n_in, int64_t n_out, int64_t lo, int64_t hi, float *wbuf))

/* ---- norm.c ------------------------------------------------------------ */
/* out, x: [rows, n]; w, b: [n] (b may be NULL). rms == 0: LayerNorm,
 * (x - mean) / sqrt(var + eps) * w + b; rms != 0: RMSNorm,
 * x / sqrt(mean(x^2) + eps) * w. out may be x. */
FD_LEVELS(void, fd_norm_f32, (float *out, const float *x, const float *w, const float *b, int64_t rows, int64_t n,
                              float eps, int rms))

/* ---- bandwidth.c ------------------------------------------------------- */
/* x: [n]. sum(x), read by fd_num_threads threads: the read-bandwidth probe. */
FD_LEVELS(double, fd_read_sum_f32, (const float *x, int64_t n))

/* ---- quant.c: weights in GGUF's block formats ------------------------ */
/* Format numbers (src/fastdecode/formats.py: FORMATS, which draws each
 * layout). A row of n_in weights (a multiple of the format's block: 32 for
 * q8_0/q4_0, 256 for q4_K/q6_K, 1 for bf16/f16) takes
 * fd_quant_row_bytes(fmt, n_in) bytes; rows lie one after another. */
#define FD_FMT_Q8_0 0
#define FD_FMT_Q4_0 1
#define FD_FMT_Q4_K 2
#define FD_FMT_Q6_K 3
#define FD_FMT_BF16 4
#define FD_FMT_F16 5
/* The block formats interleaved 16 rows at a time (quant_x16.c; code =
 * GGUF layout's + 6): the same bytes per row; the last n_out % 16 rows in
 * GGUF's layout. Rows lo..hi of [n_out, row bytes] are whole groups (and
 * the tail) when lo is a multiple of 16 and hi is one or n_out. */
#define FD_FMT_Q8_0_X16 6
#define FD_FMT_Q4_0_X16 7
#define FD_FMT_Q4_K_X16 8
#define FD_FMT_Q6_K_X16 9
static inline int64_t fd_quant_row_bytes(int fmt, int64_t n_in) {
    switch (fmt) {
    case FD_FMT_Q8_0: case FD_FMT_Q8_0_X16: return n_in / 32 * 34;
    case FD_FMT_Q4_0: case FD_FMT_Q4_0_X16: return n_in / 32 * 18;
    case FD_FMT_Q4_K: case FD_FMT_Q4_K_X16: return n_in / 256 * 144;
    case FD_FMT_Q6_K: case FD_FMT_Q6_K_X16: return n_in / 256 * 210;
    default: return n_in * 2;
    }
}
/* out: [rows, n_out] = x W^T + bias; x: [rows, n_in]; w: [n_out,
 * fd_quant_row_bytes(fmt, n_in)] bytes; bias: [n_out] or NULL. fmt is one
 * of FD_FMT_*, n_in a multiple of its block (and of 32). The block formats
 * take x quantized to int8 per 32 values (quant_dot.c), bf16/f16 float32 x.
 * out may not overlap x, w, bias. Returns 0, -1 when out of memory. */
FD_LEVELS(int, fd_linear_quant, (float *out, const float *x, const uint8_t *w, const float *bias, int fmt,
                                  int64_t rows, int64_t n_in, int64_t n_out))
/* out: [rows, n_in] float32 = the weights of w: [rows, fd_quant_row_bytes(fmt, n_in)],
 * bit for bit the gguf package's dequantization (x16 formats: w starts at a group). */
FD_LEVELS(void, fd_dequantize_rows, (float *out, const uint8_t *w, int fmt, int64_t rows, int64_t n_in))
/* x16: the FD_FMT_*_X16 layout of gguf: [n_out, fd_quant_row_bytes(base, n_in)]
 * (fmt: an FD_FMT_*_X16; n_in a multiple of the block),
 * and back; byte for byte. */
void fd_x16_pack(uint8_t *x16, const uint8_t *gguf, int fmt, int64_t n_out, int64_t n_in);
void fd_x16_unpack(uint8_t *gguf, const uint8_t *x16, int fmt, int64_t n_out, int64_t n_in);
/* gguf: [n, row bytes] = rows ids[0..n) of x16 (as above) in GGUF's layout; 0 <= ids[i] < n_out */
void fd_x16_rows(uint8_t *gguf, const uint8_t *x16, int fmt, const int64_t *ids, int64_t n, int64_t n_out,
                 int64_t n_in);

/* ---- model.c: the compiled decode step ---------------------------------- */
/* A weight matrix [rows, cols] (torch's Linear layout) and its format: the
 * step dispatches each projection on the tag: FD_FMT_F32, or one of
 * quant.c's FD_FMT_ numbers (rows of fd_quant_row_bytes(format, cols)). */
#define FD_FMT_F32 (-1)
typedef struct {
    const void *data;   /* [rows, cols] in `format` */
    int64_t rows, cols;
    int format;
} fd_matrix;

typedef struct {
    const float *attn_norm, *attn_norm_bias; /* [d]; [d] or NULL (RMSNorm) */
    fd_matrix qkv;                           /* [(Hq + 2 Hkv) D, d]: q, k, v heads */
    const float *qkv_bias;                   /* [(Hq + 2 Hkv) D] or NULL */
    fd_matrix out;                           /* [d, Hq D] */
    const float *out_bias;                   /* [d] or NULL */
    const float *mlp_norm, *mlp_norm_bias;   /* [d]; [d] or NULL */
    fd_matrix up;                            /* [F, d], or [2F, d]: gate then up (gated) */
    const float *up_bias;                    /* [F] or [2F] or NULL */
    fd_matrix down;                          /* [d, F] */
    const float *down_bias;                  /* [d] or NULL */
    float attn_scale;                        /* multiplies q . k */
} fd_layer;

#define FD_ACT_GELU_TANH 0 /* GPT-2's gelu_new */
#define FD_ACT_GELU_ERF 1
#define FD_ACT_RELU 2
#define FD_ACT_SILU 3
typedef struct {
    int64_t vocab, d, layers, hq, hkv, head_dim, ffn, max_positions;
    int gated;                  /* up is [2F, d] and the MLP is silu(gate) * up (Llama) */
    int activation;             /* FD_ACT_, when not gated */
    int rms;                    /* RMSNorm (no biases) rather than LayerNorm */
    float eps;
    fd_matrix embed;            /* [vocab, d]: rows are looked up (decoded, for a block format) */
    const float *positions;     /* [max_positions, d] learned positions, or NULL */
    const double *rope_freq;    /* [head_dim / 2] radians per position, or NULL (no RoPE) */
    const float *final_norm, *final_norm_bias; /* [d]; [d] or NULL */
    fd_matrix head;             /* [vocab, d] */
    const fd_layer *layer;      /* [layers] */
} fd_model;

/* Floats of scratch a step over `rows` = B * T tokens needs at fd_num_threads
 * threads (a step given less runs on fewer threads, or returns -1). */
int64_t fd_model_scratch_floats(const fd_model *m, int64_t rows);
/* One step: tokens [B, T] (left-padded: row b's real tokens are its last
 * counts[b]) appended to the cache k, v: [layers, B, Hkv, max_len, D] at
 * positions start[b] .. start[b] + counts[b] - 1; logits [B, V] of each
 * row's last position (logits NULL: none, for a prefill chunk before the
 * last). With ids [B]: then the token choice, fd_sample_f32
 * with params [B] (and the seen tokens), or fd_argmax_f32 when params is
 * NULL. scratch: [fd_model_scratch_floats(m, B * T)], 64-byte aligned.
 * The caller guarantees tokens in [0, vocab), start[b] + counts[b] <=
 * max_len and <= max_positions, counts[b] <= T. Returns the sampler's count
 * of bad rows (>= 0; 0 without ids), or -1 when memory is lacking. */
FD_LEVELS(int64_t, fd_model_step_f32, (float *logits, int64_t *ids, const fd_model *m, const int64_t *tokens,
                                       const int64_t *counts, int64_t B, int64_t T, float *k, float *v,
                                       int64_t max_len, const int64_t *start, float *scratch,
                                       int64_t scratch_floats, const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                                       const int64_t *prev_offsets))

#endif /* FASTDECODE_H */
