/* model.c: the compiled decode step. A whole forward pass over a chunk of
 * tokens (one per row when decoding) as one job on the worker pool, its
 * dependent operations separated by barriers: no Python, no validation and
 * no thread wake-up between them (fastdecode.model.transformer is the same
 * computation in NumPy, and the oracle this step is tested against).
 *
 *   B rows, T tokens per row, N = B T;  d model width;  V vocabulary;
 *   Hq, Hkv query / KV heads of D;  Q = (Hq + 2 Hkv) D;  F MLP width
 *   (up is [F, d], or [2F, d] gate then up when gated);  L layers.
 *   cache k, v: [L, B, Hkv, max_len, D]
 *
 * Each operation is cut the way its kernel cuts it when called alone, so
 * it reuses the kernels' per-part functions: a projection's output
 * columns (fd_linear_cols_f32), attention items (fd_attention_items_f32),
 * rows for norms; the token choice runs after the job, through the
 * sampler itself. A share never depends on how many shares there are, so
 * a step gives the same result whatever team the pool grants it.
 */
#include "fastdecode.h"
#include "quant.h"
#include "simd.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

static inline int64_t up16(int64_t n) { return (n + 15) / 16 * 16; } /* floats to a 64-byte boundary */

/* From this many rows (prefill chunks, large batches) a float32 or 16-bit
 * projection goes through register tiles (fd_gemm_cols: compute-bound)
 * instead of passes of 8 rows over W (bound by loads of x). So does q6_K:
 * unpacking its 6-bit codes once per weight for 64 rows costs less than
 * its int8 kernel's per-row scale work (a 512-token Llama-125M q4_k_m
 * prompt: 0.8 -> 0.5 s of CPU); the other block formats keep their int8
 * kernels (vpdpbusd: 64 products an instruction, float32 FMA 16). */
#define FD_GEMM_MIN_ROWS 16
static inline int tiled(const fd_matrix *w, int64_t rows) {
    const int f = w->format;
    return rows >= FD_GEMM_MIN_ROWS && (f == FD_FMT_F32 || f == FD_FMT_BF16 || f == FD_FMT_F16 || f == FD_FMT_Q6_K);
}

/* ----------------------------------------------------------------------------
 * Scratch: the activations of one step, carved from the caller's block
 * ---------------------------------------------------------------------------- */

typedef struct {
    float *x, *tmp;      /* [N, d] residual stream, a projection before the residual add */
    float *xn;           /* [threads, N, d] each share's copy of the normed rows */
    float *qkv;          /* [N, Q] */
    float *q, *att;      /* [B, Hq, T, D] queries (rotated), attention output */
    float *merged;       /* [N, Hq D] attention output, heads merged (T > 1) */
    float *h, *act;      /* [N, F or 2F] up projection; [N, F] activation */
    float *rope;         /* [N, D]: cos of each pair, then sin */
    float *last;         /* [B, d] each row's last position, normed */
    int64_t *end;        /* [B] start + counts */
    int8_t *xq;          /* [N, n_in] a block-format projection's input in int8 (n_in <= max(d, Hq D, F)) */
    float *xd, *xds;     /* [N, n_in / 32] its scales, scale * sums */
    int32_t *xs;         /* [N, n_in / 16] its sums over 16 */
    float *wbuf;         /* [threads, FD_GEMM_WROWS, n_in]: each share's decoded weight rows (fd_gemm_cols) */
    int64_t wstride;     /* FD_GEMM_WROWS n_in: floats of wbuf per share */
} step_buffers;

static int64_t carve(step_buffers *s, const fd_model *m, int64_t n, int threads, float *base) {
    const int64_t hd = m->hq * m->head_dim, q = (m->hq + 2 * m->hkv) * m->head_dim;
    int64_t in = m->d > hd ? m->d : hd;
    in = in > m->ffn ? in : m->ffn;
    const int64_t sizes[17] = {n * m->d, n * m->d * threads, n * m->d, n * q, n * hd, n * hd, n * hd,
                               n * m->ffn * (m->gated ? 2 : 1), n * m->ffn, n * m->head_dim, n * m->d, 2 * n,
                               n * in / 4 + 1, n * in / 32 + 1, n * in / 32 + 1, n * in / 16 + 1,
                               n >= FD_GEMM_MIN_ROWS ? threads * FD_GEMM_WROWS * in : 0};
    int64_t total = 0, at[17];
    for (int i = 0; i < 17; i++) {
        at[i] = total;
        total += up16(sizes[i]);
    }
    if (base) {
        float **parts[11] = {&s->x, &s->xn, &s->tmp, &s->qkv, &s->q, &s->att, &s->merged, &s->h, &s->act, &s->rope,
                             &s->last};
        for (int i = 0; i < 11; i++) *parts[i] = base + at[i];
        s->end = (int64_t *)(base + at[11]);
        s->xq = (int8_t *)(base + at[12]);
        s->xd = base + at[13], s->xds = base + at[14];
        s->xs = (int32_t *)(base + at[15]);
        s->wbuf = base + at[16], s->wstride = FD_GEMM_WROWS * in;
    }
    return total;
}

#if FD_ENTRY_POINTS
int64_t fd_model_scratch_floats(const fd_model *m, int64_t rows) {
    return carve(NULL, m, rows, fd_threads(), NULL);
}
#endif

/* ----------------------------------------------------------------------------
 * The step's job
 * ---------------------------------------------------------------------------- */

typedef struct {
    const fd_model *m;
    const int64_t *tokens, *counts, *start; /* [B, T], [B], [B] */
    int64_t B, T, N, max_len;
    float *kc, *vc;                         /* [L, B, Hkv, max_len, D] */
    float *logits;                          /* [B, V] */
    step_buffers s;
    fd_att_plan plan;                       /* the same cut for every layer */
    float *partials;                        /* attention chunks' state, or NULL */
    fd_barrier bar;
    _Atomic int failed;
} step_job;

/* Token n's row b, its index i in the row, whether it is padding, its position */
static inline int64_t position(const step_job *j, int64_t n, int *real) {
    const int64_t b = n / j->T, i = n % j->T, pad = j->T - j->counts[b];
    const int64_t pos = j->start[b] + i - pad;
    *real = i >= pad;
    return pos > 0 ? pos : 0; /* padding takes position 0, as in the NumPy forward */
}

/* A block-format projection's input x [rows, w->cols] to int8 blocks in the
 * scratch (rows shared out, then a barrier); nothing for other formats. */
static void quantize_input(step_job *j, const float *x, const fd_matrix *w, int64_t rows, int t, int nt) {
    if (!fd_fmt_blocks(w->format) || tiled(w, rows)) return;
    const int64_t k = w->cols, nb = k / FD_QK;
    step_buffers *s = &j->s;
    for (int64_t r = t; r < rows; r += nt)
        FD_FN(fd_quantize_x)(s->xq + r * k, s->xd + r * nb, s->xds + r * nb, s->xs + r * 2 * nb, x + r * k, 1, k);
    fd_barrier_wait(&j->bar, nt);
}

/* out[:, lo:hi] of out [rows, w->rows] = x [rows, w->cols] W^T + bias (x
 * already through quantize_input), by share t; with residual:
 * residual[:, lo:hi] += it */
static void cols(step_job *j, float *out, const float *x, const fd_matrix *w, const float *bias, int64_t rows,
                 float *residual, int64_t lo, int64_t hi, int t) {
    const int64_t n = w->rows, k = w->cols;
    if (tiled(w, rows)) {
        FD_FN(fd_gemm_cols)(out, x, w->data, w->format, bias, rows, k, n, lo, hi, j->s.wbuf + t * j->s.wstride);
    } else if (w->format == FD_FMT_F32) {
        FD_FN(fd_linear_cols_f32)(out, x, (const float *)w->data, bias, rows, k, n, lo, hi);
    } else {
        const step_buffers *s = &j->s;
        const fd_qx xq = {s->xq, s->xd, s->xds, s->xs, k};
        FD_FN(fd_linear_quant_cols)(out, x, &xq, (const uint8_t *)w->data, bias, w->format, rows, k, n, lo, hi);
    }
    if (!residual) return;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = lo; c < hi; c++) residual[r * n + c] += out[r * n + c];
}

/* share t of nt of a whole projection: its columns n t / nt .. n (t + 1) / nt */
static void project(step_job *j, float *out, const float *x, const fd_matrix *w, const float *bias, int64_t rows,
                    float *residual, int t, int nt) {
    quantize_input(j, x, w, rows, t, nt);
    cols(j, out, x, w, bias, rows, residual, fd_split16(w->rows, t, nt), fd_split16(w->rows, t + 1, nt), t);
}

static void norm_rows(float *out, const float *x, const float *w, const float *b, int64_t rows, const fd_model *m,
                      int t, int nt) {
    for (int64_t r = t; r < rows; r += nt)
        FD_FN(fd_norm_f32)(out + r * m->d, x + r * m->d, w, b, 1, m->d, m->eps, m->rms);
}

/* x: token embeddings (+ learned positions); rope: cos, sin per token */
static void embed(step_job *j, int t, int nt) {
    const fd_model *m = j->m;
    const int64_t d = m->d, half = m->head_dim / 2;
    for (int64_t n = t; n < j->N; n += nt) {
        int real;
        const int64_t pos = position(j, n, &real);
        float *x = j->s.x + n * d;
        if (m->embed.format == FD_FMT_F32) {
            const float *e = (const float *)m->embed.data + j->tokens[n] * d;
            for (int64_t c = 0; c < d; c++) x[c] = e[c];
        } else {
            FD_FN(fd_lookup_row)(x, m->embed.data, m->embed.format, j->tokens[n], m->embed.rows, d);
        }
        if (m->positions)
            for (int64_t c = 0; c < d; c++) x[c] += m->positions[pos * d + c];
        if (m->rope_freq)
            for (int64_t i = 0; i < half; i++) { /* the angle in double, as the NumPy forward */
                double a = (double)pos * m->rope_freq[i];
                j->s.rope[n * m->head_dim + i] = (float)cos(a);
                j->s.rope[n * m->head_dim + half + i] = (float)sin(a);
            }
    }
}

/* dst: [D] = src rotated (rotate-half pairs i, i + D/2), or copied */
static void place_head(float *dst, const float *src, const float *rope, int64_t D) {
    if (!rope) {
        for (int64_t i = 0; i < D; i++) dst[i] = src[i];
        return;
    }
    const int64_t half = D / 2;
    const float *cs = rope, *sn = rope + half;
    for (int64_t i = 0; i < half; i++) {
        float x1 = src[i], x2 = src[half + i];
        dst[i] = x1 * cs[i] - x2 * sn[i];
        dst[half + i] = x2 * cs[i] + x1 * sn[i];
    }
}

/* The qkv heads of layer l: queries to q [B, Hq, T, D], real tokens' keys
 * and values into the cache at their positions */
static void heads(step_job *j, int64_t l, int t, int nt) {
    const fd_model *m = j->m;
    const int64_t D = m->head_dim, H = m->hq + 2 * m->hkv, B = j->B, T = j->T;
    for (int64_t item = t; item < j->N * H; item += nt) {
        const int64_t n = item / H, h = item % H, b = n / T, i = n % T;
        int real;
        const int64_t pos = position(j, n, &real);
        const float *src = j->s.qkv + n * H * D + h * D;
        const float *rope = m->rope_freq ? j->s.rope + n * D : NULL;
        if (h < m->hq) {
            place_head(j->s.q + ((b * m->hq + h) * T + i) * D, src, rope, D);
        } else if (real) {
            const int64_t kh = (h - m->hq) % m->hkv;
            const int64_t at = (((l * B + b) * m->hkv + kh) * j->max_len + pos) * D;
            if (h < m->hq + m->hkv) place_head(j->kc + at, src, rope, D);
            else place_head(j->vc + at, src, NULL, D);
        }
    }
}

static void merge_heads(step_job *j, int t, int nt) { /* att [B, Hq, T, D] -> merged [N, Hq D] */
    const int64_t D = j->m->head_dim, hq = j->m->hq;
    for (int64_t n = t; n < j->N; n += nt)
        for (int64_t h = 0; h < hq; h++) {
            const float *src = j->s.att + (((n / j->T) * hq + h) * j->T + n % j->T) * D;
            float *dst = j->s.merged + (n * hq + h) * D;
            for (int64_t i = 0; i < D; i++) dst[i] = src[i];
        }
}

/* act[:, c0:c1] = act(h), or silu(gate) * up, of columns [c0, c1): the
 * share that made those columns of h (and of up, gated) */
static void activate(step_job *j, int64_t c0, int64_t c1) {
    const fd_model *m = j->m;
    const int64_t F = m->ffn;
    for (int64_t n = 0; n < j->N; n++) {
        const float *g = j->s.h + n * F * (m->gated ? 2 : 1);
        float *o = j->s.act + n * F;
        int64_t c = c0;
        if (m->gated || m->activation == FD_ACT_GELU_TANH) { /* x / (1 + e^-2y): 0.5 x (1 + tanh y) */
            const float k = m->gated ? 0.5f : 0.7978845608028654f; /* silu: y = x / 2 */
            const float cubic = m->gated ? 0.0f : 0.044715f;
            for (; c + FD_VLEN <= c1; c += FD_VLEN) {
                vf x = vf_load(g + c);
                vf y = vf_mul(vf_set1(k), vf_fmadd(vf_mul(vf_set1(cubic), vf_mul(x, x)), x, x));
                vf r = vf_div(x, vf_add(vf_set1(1.0f), vf_exp(vf_mul(vf_set1(-2.0f), y))));
                vf_store(o + c, m->gated ? vf_mul(r, vf_load(g + F + c)) : r);
            }
            for (; c < c1; c++) {
                float x = g[c], y = k * (x + cubic * x * x * x);
                float r = x / (1.0f + fd_expf(-2.0f * y));
                o[c] = m->gated ? r * g[F + c] : r;
            }
        } else if (m->activation == FD_ACT_GELU_ERF) {
            for (; c < c1; c++) o[c] = 0.5f * g[c] * (1.0f + erff(g[c] * 0.70710678118654752f));
        } else { /* relu */
            for (; c < c1; c++) o[c] = g[c] > 0.0f ? g[c] : 0.0f;
        }
    }
}

static void step_share(void *ctx, int t, int nt) {
    step_job *j = ctx;
    const fd_model *m = j->m;
    const int64_t N = j->N, B = j->B, T = j->T, D = m->head_dim;
    step_buffers *s = &j->s;
    fd_barrier *bar = &j->bar;
    float *xn = s->xn + t * N * m->d; /* this share's copy of the normed rows: no barrier after a norm */
    const int64_t F = m->ffn, f0 = fd_split16(F, t, nt), f1 = fd_split16(F, t + 1, nt);
    embed(j, t, nt);
    fd_barrier_wait(bar, nt);
    for (int64_t l = 0; l < m->layers; l++) {
        const fd_layer *L = &m->layer[l];
        norm_rows(xn, s->x, L->attn_norm, L->attn_norm_bias, N, m, 0, 1);
        project(j, s->qkv, xn, &L->qkv, L->qkv_bias, N, NULL, t, nt);
        fd_barrier_wait(bar, nt);
        heads(j, l, t, nt);
        fd_barrier_wait(bar, nt);
        fd_att_plan p = j->plan;
        const int64_t layer_at = l * B * m->hkv * j->max_len * D;
        p.out = s->att, p.q = s->q, p.k = j->kc + layer_at, p.v = j->vc + layer_at, p.scale = L->attn_scale;
        p.lengths = s->end;
        if (FD_FN(fd_attention_items_f32)(&p, j->partials, t, nt)) atomic_store(&j->failed, 1);
        if (p.nchunks > 1) {
            fd_barrier_wait(bar, nt);
            if (FD_FN(fd_attention_merge_f32)(&p, j->partials, t, nt)) atomic_store(&j->failed, 1);
        }
        fd_barrier_wait(bar, nt);
        if (T > 1) {
            merge_heads(j, t, nt);
            fd_barrier_wait(bar, nt);
        }
        project(j, s->tmp, T > 1 ? s->merged : s->att, &L->out, L->out_bias, N, s->x, t, nt);
        fd_barrier_wait(bar, nt);
        norm_rows(xn, s->x, L->mlp_norm, L->mlp_norm_bias, N, m, 0, 1);
        quantize_input(j, xn, &L->up, N, t, nt);
        cols(j, s->h, xn, &L->up, L->up_bias, N, NULL, f0, f1, t); /* this share's columns, then its gates' partners */
        if (m->gated) cols(j, s->h, xn, &L->up, L->up_bias, N, NULL, F + f0, F + f1, t);
        activate(j, f0, f1);
        fd_barrier_wait(bar, nt);
        project(j, s->tmp, s->act, &L->down, L->down_bias, N, s->x, t, nt);
        fd_barrier_wait(bar, nt);
    }
    if (!j->logits) return; /* a prefill chunk before the last */
    for (int64_t b = t; b < B; b += nt) /* each row's last position */
        FD_FN(fd_norm_f32)(s->last + b * m->d, s->x + (b * T + T - 1) * m->d, m->final_norm, m->final_norm_bias, 1,
                           m->d, m->eps, m->rms);
    fd_barrier_wait(bar, nt);
    project(j, j->logits, s->last, &m->head, NULL, B, NULL, t, nt);
}

int64_t FD_FN(fd_model_step_f32)(float *logits, int64_t *ids, const fd_model *m, const int64_t *tokens,
                                 const int64_t *counts, int64_t B, int64_t T, float *k, float *v, int64_t max_len,
                                 const int64_t *start, float *scratch, int64_t scratch_floats,
                                 const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                                 const int64_t *prev_offsets) {
    if (B <= 0 || T <= 0) return 0;
    step_job j = {.m = m, .tokens = tokens, .counts = counts, .start = start, .B = B, .T = T, .N = B * T,
                  .max_len = max_len, .kc = k, .vc = v, .logits = logits};
    int nt = fd_threads(); /* as many shares as threads, whatever the sizes */
    while (nt > 1 && carve(NULL, m, j.N, nt, NULL) > scratch_floats) nt--; /* threads raised since it was sized */
    if (carve(NULL, m, j.N, nt, NULL) > scratch_floats) return -1;
    carve(&j.s, m, j.N, nt, scratch);
    for (int64_t b = 0; b < B; b++) j.s.end[b] = start[b] + counts[b];
    int64_t need = FD_FN(fd_attention_plan_f32)(&j.plan, j.s.end, B, m->hq, m->hkv, T, max_len, m->head_dim,
                                                1.0f, 1);
    if (need < 0) return -1; /* impossible head counts: Python never builds them */
    if (need > 0 && !(j.partials = malloc((size_t)need * sizeof(float)))) return -1;
    atomic_init(&j.failed, 0);
    fd_parallel(step_share, &j, nt); /* the barriers are the cost of a share, not a wake-up */
    free(j.partials);
    if (atomic_load(&j.failed)) return -1;
    if (!ids || !logits) return 0;
    if (params) return FD_FN(fd_sample_f32)(ids, logits, B, m->vocab, params, prev_ids, n_prev, prev_offsets);
    return FD_FN(fd_argmax_f32)(ids, logits, B, m->vocab);
}

#if FD_ENTRY_POINTS
int64_t fd_model_step_f32(float *logits, int64_t *ids, const fd_model *m, const int64_t *tokens,
                          const int64_t *counts, int64_t B, int64_t T, float *k, float *v, int64_t max_len,
                          const int64_t *start, float *scratch, int64_t scratch_floats,
                          const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                          const int64_t *prev_offsets) {
    return FD_DISPATCH(fd_model_step_f32, (logits, ids, m, tokens, counts, B, T, k, v, max_len, start, scratch,
                                           scratch_floats, params, prev_ids, n_prev, prev_offsets));
}
#endif
