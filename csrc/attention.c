/* attention.c: scaled dot-product attention over a KV cache, grouped-query,
 * causal or not, in one pass over K and V (FlashAttention's online softmax:
 * a running max and normalizer per query row, the accumulator rescaled when
 * the max grows).
 *
 *   out, q: [B, Hq, Tq, D]   k, v: [B, Hkv, Tk, D]   lengths: [B]
 *   G = Hq / Hkv query heads share each KV head.
 *   Query i of batch row b sits at position lengths[b] - Tq + i; it sees key
 *   j when j < lengths[b] and, if causal, j <= its position. A query that
 *   sees no key gets zeros. A query whose visible scores hold a NaN or +inf,
 *   or are all -inf, gets NaN (what the textbook softmax gives).
 *
 * The work is cut into items: (batch row, KV head, tile of query rows, chunk
 * of keys). A tile holds query rows of one KV group only, so each block of
 * K and V read serves every query head of the group. Two engines run a tile
 * over a chunk of keys, block by block:
 *   - keys on lanes (attention_decode.c; a few rows: decode). Each score is a dot product along
 *     D; FD_VLEN of them are reduced at once by vf_transpose_sum, so a
 *     block's scores come out as vectors along the keys.
 *   - rows on lanes (attention_prefill.c; many rows: prefill). The tile's queries are transposed
 *     once to [D][rows]; a score block is then a register-tiled product of
 *     broadcast key elements with query vectors, and the softmax updates of
 *     FD_VLEN rows run as one vector.
 * Both finish a block with the same register-tiled out += P V.
 * When there are fewer tiles than threads can share (single-sequence
 * decode), the keys are split into chunks and the partial (max, sum, acc)
 * of the chunks are merged at the end (split-KV, as in Flash-Decoding).
 *
 * Scratch is allocated per thread and per call; nothing is shared between
 * threads but read-only input and disjoint rows of out.
 */
#include "attention.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

/* ----------------------------------------------------------------------------
 * The plan: cutting the problem into items
 * ---------------------------------------------------------------------------- */

static void plan_init(att_plan *p, int nthreads) {
    p->G = p->Hq / p->Hkv;
    p->dp = round_up(p->D, FD_VLEN);
    p->rows_on_lanes = p->G * p->Tq >= FD_ATT_LANES_MIN;
    if (p->rows_on_lanes) {
        p->tile_heads = min64(p->G, FD_ATT_PREFILL_TILE_ROWS);
        p->tile_pos = min64(p->Tq, max64(1, FD_ATT_PREFILL_TILE_ROWS / p->tile_heads));
    } else { /* few rows: the whole group is one tile */
        p->tile_heads = p->G;
        p->tile_pos = p->Tq;
    }
    p->htiles = (p->G + p->tile_heads - 1) / p->tile_heads;
    p->itiles = (p->Tq + p->tile_pos - 1) / p->tile_pos;
    p->tiles = p->B * p->Hkv * p->htiles * p->itiles;
    p->max_rows = p->tile_heads * p->tile_pos;
    int64_t kmax = 1; /* keys worth reading: the longest row's */
    for (int64_t b = 0; b < p->B; b++) kmax = max64(kmax, min64(max64(p->lengths[b], 0), p->Tk));
    p->chunk = kmax;
    p->nchunks = 1;
    if (nthreads > 1 && p->tiles < (int64_t)FD_ATT_SPLIT * nthreads) {
        int64_t want = ((int64_t)FD_ATT_SPLIT * nthreads + p->tiles - 1) / p->tiles;
        int64_t n = min64(want, max64(1, kmax / FD_ATT_MIN_CHUNK));
        p->chunk = round_up((kmax + n - 1) / n, FD_ATT_PREFILL_BK);
        p->nchunks = (kmax + p->chunk - 1) / p->chunk;
    }
}

/* Tile number `index`; the last positions first, since under a causal mask
 * they see the most keys (the dynamic schedule then ends evenly). */
static att_tile tile_at(const att_plan *p, int64_t index) {
    att_tile t;
    int64_t it = p->itiles - 1 - index % p->itiles;
    index /= p->itiles;
    int64_t ht = index % p->htiles;
    index /= p->htiles;
    t.kvh = index % p->Hkv;
    t.b = index / p->Hkv;
    t.g0 = ht * p->tile_heads;
    t.gh = min64(p->tile_heads, p->G - t.g0);
    t.i0 = it * p->tile_pos;
    t.ni = min64(p->tile_pos, p->Tq - t.i0);
    return t;
}

static int scratch_alloc(att_scratch *w, const att_plan *p) {
    const int64_t rpad = round_up(p->max_rows, FD_VLEN), dp = p->dp;
    const int64_t bkp = round_up(max64(FD_ATT_PREFILL_BK, FD_ATT_DECODE_BK), FD_VLEN), bkj = round_up(FD_ATT_PREFILL_BK, FD_QK_NJ);
    const int64_t sizes[9] = {
        max64(p->D * rpad, rpad * dp), rpad * dp, max64(rpad * bkp, bkj * rpad),
        rpad, rpad, rpad, rpad, p->dp != p->D ? bkp * dp : 0, p->dp != p->D ? bkp * dp : 0, /* kpad, vpad */
    };
    int64_t total = 0;
    for (int i = 0; i < 9; i++) total += round_up(sizes[i], 16); /* 64-byte aligned pieces */
    w->raw = malloc((size_t)total * sizeof(float) + 64);
    if (!w->raw) return 0;
    float *base = (float *)(((uintptr_t)w->raw + 63) & ~(uintptr_t)63);
    float **parts[9] = {&w->qs, &w->o, &w->s, &w->m, &w->l, &w->alpha, &w->chk, &w->kpad, &w->vpad};
    for (int i = 0; i < 9; i++) {
        *parts[i] = sizes[i] ? base : NULL;
        base += round_up(sizes[i], 16);
    }
    return 1;
}

/* ----------------------------------------------------------------------------
 * Finishing: normalize into out, or keep a chunk's partial state for merging
 * ---------------------------------------------------------------------------- */

/* out: [D] = o / l, or zeros (no visible key), or NaN (undefined softmax) */
static void write_row(float *out, const float *o, int64_t D, int64_t vis, double l, int undefined) {
    if (vis <= 0 || undefined) {
        float fill = vis <= 0 ? 0.0f : NAN;
        for (int64_t d = 0; d < D; d++) out[d] = fill;
        return;
    }
    vf inv = vf_set1((float)(1.0 / l));
    int64_t d = 0;
    for (; d + FD_VLEN <= D; d += FD_VLEN) vf_store(out + d, vf_mul(vf_load(o + d), inv));
    for (; d < D; d++) out[d] = o[d] * (float)(1.0 / l);
}

static void finish_tile(const att_plan *p, const att_scratch *w, const att_tile *t) {
    const int64_t rows = t->gh * t->ni;
    for (int64_t r = 0; r < rows; r++) {
        int undefined = w->chk[r] != w->chk[r] || w->m[r] == -INFINITY;
        write_row(p->out + tile_row_offset(p, t, r), w->o + r * p->dp, p->D,
                  visible_keys(p, t->b, tile_row_pos(t, r)), w->l[r], undefined);
    }
}

typedef struct {
    float *m, *l; /* [items][max_rows]; l is NaN when a visible score was NaN or infinite */
    float *o;     /* [items][max_rows][dp] */
} att_partials;

static void keep_partial(const att_plan *p, const att_scratch *w, const att_tile *t, int64_t item, att_partials *pt) {
    const int64_t rows = t->gh * t->ni, base = item * p->max_rows;
    for (int64_t r = 0; r < rows; r++) {
        pt->m[base + r] = w->m[r];
        pt->l[base + r] = w->chk[r] != w->chk[r] ? NAN : w->l[r];
        memcpy(pt->o + (base + r) * p->dp, w->o + r * p->dp, (size_t)p->dp * sizeof(float));
    }
}

/* Merge the chunks of tile `ti` (items ti * nchunks ...): weights exp(m_c - M). */
static void merge_tile(const att_plan *p, const att_partials *pt, int64_t ti, float *acc /* [dp] */) {
    const att_tile t = tile_at(p, ti);
    const int64_t rows = t.gh * t.ni, dp = p->dp;
    for (int64_t r = 0; r < rows; r++) {
        float mmax = -INFINITY;
        int undefined = 0;
        for (int64_t c = 0; c < p->nchunks; c++) {
            int64_t at = (ti * p->nchunks + c) * p->max_rows + r;
            undefined |= pt->l[at] != pt->l[at];
            mmax = pt->m[at] > mmax ? pt->m[at] : mmax;
        }
        undefined |= mmax == -INFINITY;
        double l = 0.0;
        for (int64_t d = 0; d < dp; d++) acc[d] = 0.0f;
        for (int64_t c = 0; c < p->nchunks && !undefined; c++) {
            int64_t at = (ti * p->nchunks + c) * p->max_rows + r;
            if (pt->m[at] == -INFINITY) continue; /* the chunk held no visible key of this row */
            float wgt = expf(pt->m[at] - mmax);
            l += (double)wgt * pt->l[at];
            vf wv = vf_set1(wgt);
            const float *o = pt->o + at * dp;
            for (int64_t d = 0; d < dp; d += FD_VLEN) vf_store(acc + d, vf_fmadd(wv, vf_load(o + d), vf_load(acc + d)));
        }
        write_row(p->out + tile_row_offset(p, &t, r), acc, p->D, visible_keys(p, t.b, tile_row_pos(&t, r)), l, undefined);
    }
}

/* ----------------------------------------------------------------------------
 * Kernel
 * ---------------------------------------------------------------------------- */

static void run_item(const att_plan *p, att_scratch *w, int64_t item, att_partials *pt) {
    const att_tile t = tile_at(p, item / p->nchunks);
    const int64_t c0 = item % p->nchunks * p->chunk, c1 = c0 + p->chunk;
    if (p->rows_on_lanes) FD_FN(fd_att_rows_on_lanes)(p, w, &t, c0, c1);
    else FD_FN(fd_att_keys_on_lanes)(p, w, &t, c0, c1);
    if (p->nchunks == 1) finish_tile(p, w, &t);
    else keep_partial(p, w, &t, item, pt);
}

typedef struct {
    const att_plan *p;
    att_partials *pt;
    int64_t items;
    atomic_llong next; /* the next item nobody has taken */
    atomic_int failed; /* scratch memory was lacking */
} att_job;

/* Items are handed out one at a time: under a causal mask they differ in
 * length, and a late-waking worker only takes what is left. */
static void att_items(void *ctx, int t, int nt) {
    att_job *j = ctx;
    att_scratch w;
    (void)t, (void)nt;
    if (!scratch_alloc(&w, j->p)) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t it; (it = atomic_fetch_add(&j->next, 1)) < j->items;) run_item(j->p, &w, it, j->pt);
    free(w.raw);
}

static void att_merge(void *ctx, int t, int nt) {
    att_job *j = ctx;
    float *acc = malloc((size_t)j->p->dp * sizeof(float));
    if (!acc) {
        atomic_store(&j->failed, 1);
        return;
    }
    for (int64_t ti = j->p->tiles * t / nt; ti < j->p->tiles * (t + 1) / nt; ti++) merge_tile(j->p, j->pt, ti, acc);
    free(acc);
}

/* The plan fd_attention_f32 makes for a call (pointers left NULL): cut for
 * fd_threads() threads, or one when the call is too small to share.
 * Returns the threads to use. */
static int plan_call(att_plan *p, const int64_t *lengths, int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq,
                     int64_t Tk, int64_t D, float scale, int causal) {
    int nt = fd_threads();
    *p = (att_plan){.lengths = lengths, .B = B, .Hq = Hq, .Hkv = Hkv, .Tq = Tq, .Tk = Tk, .D = D};
    p->scale = scale;
    p->causal = causal != 0;
    plan_init(p, nt);
    if ((double)B * Hq * Tq * p->chunk * p->nchunks * D < FD_ATT_PAR_MIN) { /* query rows x keys x D, at most */
        nt = 1;
        plan_init(p, nt);
    }
    const int64_t items = p->tiles * p->nchunks;
    return items < nt ? (int)items : nt;
}

/* The chunks' partial state in one block of floats: [items * max_rows * (dp + 2)] */
static att_partials partials_in(const att_plan *p, float *raw) {
    const int64_t n = p->tiles * p->nchunks * p->max_rows;
    att_partials pt = {NULL, NULL, NULL};
    if (p->nchunks > 1) pt.o = raw, pt.m = raw + n * p->dp, pt.l = pt.m + n;
    return pt;
}

/* out, q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D]; lengths: [B] (clamped to
 * [0, Tk]). Returns 0, or -1 when scratch memory could not be allocated
 * (out is then unspecified), -2 for impossible head counts. */
int FD_FN(fd_attention_f32)(float *out, const float *q, const float *k, const float *v, const int64_t *lengths,
                            int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D,
                            float scale, int causal) {
    if (B <= 0 || Hq <= 0 || Tq <= 0 || D <= 0) return 0;
    if (Hkv <= 0 || Hq % Hkv) return -2;
    if (Tk <= 0) {
        memset(out, 0, (size_t)(B * Hq * Tq * D) * sizeof(float));
        return 0;
    }
    att_plan p;
    int nt = plan_call(&p, lengths, B, Hq, Hkv, Tq, Tk, D, scale, causal);
    p.out = out, p.q = q, p.k = k, p.v = v;
    const int64_t items = p.tiles * p.nchunks;
    void *pt_raw = NULL;
    if (p.nchunks > 1) {
        pt_raw = malloc((size_t)(items * p.max_rows * (2 + p.dp)) * sizeof(float));
        if (!pt_raw) return -1;
    }
    att_partials pt = partials_in(&p, pt_raw);
    att_job job = {.p = &p, .pt = &pt, .items = items};
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    fd_parallel(att_items, &job, nt);
    if (p.nchunks > 1 && !atomic_load(&job.failed))
        fd_parallel(att_merge, &job, p.tiles < nt ? (int)p.tiles : nt);
    free(pt_raw);
    return atomic_load(&job.failed) ? -1 : 0;
}

/* ----------------------------------------------------------------------------
 * Inside a caller's pool job (model.c): the same plan and items, shared out
 * statically (share t takes items t, t + nt, ...; an item's result does not
 * depend on who runs it), the merge after the caller's barrier.
 * ---------------------------------------------------------------------------- */

/* Returns the floats of partial state the items need (0: none), or -2 for
 * impossible head counts; p's pointers are the caller's to set. */
int64_t FD_FN(fd_attention_plan_f32)(fd_att_plan *p, const int64_t *lengths, int64_t B, int64_t Hq, int64_t Hkv,
                                     int64_t Tq, int64_t Tk, int64_t D, float scale, int causal) {
    if (B <= 0 || Hq <= 0 || Tq <= 0 || D <= 0 || Tk <= 0 || Hkv <= 0 || Hq % Hkv) return -2;
    plan_call(p, lengths, B, Hq, Hkv, Tq, Tk, D, scale, causal);
    return p->nchunks > 1 ? p->tiles * p->nchunks * p->max_rows * (2 + p->dp) : 0;
}

int FD_FN(fd_attention_items_f32)(const fd_att_plan *p, float *partials, int t, int nt) {
    att_scratch w;
    att_partials pt = partials_in(p, partials);
    const int64_t items = p->tiles * p->nchunks;
    if (t >= items) return 0;
    if (!scratch_alloc(&w, p)) return -1;
    for (int64_t it = t; it < items; it += nt) run_item(p, &w, it, &pt);
    free(w.raw);
    return 0;
}

int FD_FN(fd_attention_merge_f32)(const fd_att_plan *p, float *partials, int t, int nt) {
    att_partials pt = partials_in(p, partials);
    if (p->nchunks <= 1 || t >= p->tiles) return 0;
    float *acc = malloc((size_t)p->dp * sizeof(float));
    if (!acc) return -1;
    for (int64_t ti = t; ti < p->tiles; ti += nt) merge_tile(p, &pt, ti, acc);
    free(acc);
    return 0;
}

#if FD_ENTRY_POINTS
int fd_attention_f32(float *out, const float *q, const float *k, const float *v, const int64_t *lengths,
                     int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D, float scale, int causal) {
    return FD_DISPATCH(fd_attention_f32, (out, q, k, v, lengths, B, Hq, Hkv, Tq, Tk, D, scale, causal));
}
#endif
