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
 *   - keys on lanes (a few rows: decode). Each score is a dot product along
 *     D; FD_VLEN of them are reduced at once by vf_transpose_sum, so a
 *     block's scores come out as vectors along the keys.
 *   - rows on lanes (many rows: prefill). The tile's queries are transposed
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
#include "fastdecode.h"
#include "simd.h"

#include <float.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#define FD_ATT_PREFILL_BK 64          /* keys per block of the rows-on-lanes engine */
#define FD_ATT_PREFILL_TILE_ROWS 64   /* rows-on-lanes tile: query rows (a multiple of every FD_VLEN) */
#define FD_ATT_SPLIT 4        /* split the keys until there are this many items per thread */
#define FD_ATT_MIN_CHUNK 256  /* but never into chunks shorter than this */
#define FD_ATT_PAR_MIN (1 << 18) /* multiply-adds below which one thread beats waking others */
/* Keys on lanes: K and V asked for this many keys ahead (into L2), K during
 * the scores, V during P V; more hides latency, too many evicts (docs/tuning.md). */
#ifndef FD_ATT_DECODE_PF
#define FD_ATT_DECODE_PF 512
#endif
/* Chunks of at most this many keys prefetch the next KV head's K and V
 * instead: short caches are latency-bound (docs/tuning.md). */
#ifndef FD_ATT_DECODE_NEXT_PF
#define FD_ATT_DECODE_NEXT_PF 512
#endif

/* Register tiles, per level. Scores: keys on lanes, FD_DOT_NR rows x
 * FD_DOT_KB keys; rows on lanes, FD_QK_NJ keys x FD_QK_NV row vectors.
 * out += P V: rows on lanes, FD_PV_NR rows x FD_PV_NC vectors; keys on lanes,
 * FD_PVK_NR x FD_PVK_NC, wide enough to take a whole row of V (D 128) per key,
 * so V is read row after row. Each fits the level's register file. */
#define FD_DOT_KB 4
#if FD_VLEN == 16
#define FD_DOT_NR 4
#define FD_PV_NR 6
#define FD_PV_NC 4
#define FD_PVK_NR 2
#define FD_PVK_NC 8
#define FD_QK_NJ 6
#define FD_QK_NV 4
#ifndef FD_ATT_LANES_MIN
#define FD_ATT_LANES_MIN 16   /* group rows from which rows-on-lanes is faster */
#endif
#elif FD_VLEN == 8
#define FD_DOT_NR 2
#define FD_PV_NR 6
#define FD_PV_NC 2
#define FD_PVK_NR 1
#define FD_PVK_NC 8
#define FD_QK_NJ 4
#define FD_QK_NV 3
#define FD_ATT_LANES_MIN 8
#else
#define FD_DOT_NR 2
#define FD_PV_NR 4
#define FD_PV_NC 4
#define FD_PVK_NR 2
#define FD_PVK_NC 4
#define FD_QK_NJ 4
#define FD_QK_NV 4
#define FD_ATT_LANES_MIN 8
#endif
/* keys-on-lanes block: keys scored before their softmax step and P V (a
 * whole number of score runs); longer means longer K and V runs between
 * switches, but more scratch (docs/tuning.md). */
#define FD_ATT_DECODE_BK 256

#if defined(__GNUC__) || defined(__clang__)
#define FD_INLINE static inline __attribute__((always_inline))
#else
#define FD_INLINE static inline
#endif

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* ----------------------------------------------------------------------------
 * The problem and its cutting into items
 * ---------------------------------------------------------------------------- */

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
} att_plan;

typedef struct {
    int64_t b, kvh;  /* batch row, KV head */
    int64_t g0, gh;  /* query heads g0 .. g0 + gh - 1 of the group */
    int64_t i0, ni;  /* query positions i0 .. i0 + ni - 1 */
} att_tile;

/* Keys visible to query i of batch row b: [0, n). */
static inline int64_t visible_keys(const att_plan *p, int64_t b, int64_t i) {
    int64_t len = p->lengths[b];
    len = len < 0 ? 0 : len > p->Tk ? p->Tk : len; /* a length past the cache is a value, not trusted */
    if (!p->causal) return len;
    int64_t n = len - p->Tq + i + 1; /* up to the query's own position */
    return n < 0 ? 0 : n > len ? len : n;
}

/* Row r of a tile: head g0 + r / ni, position i0 + r % ni. */
static inline int64_t tile_row_pos(const att_tile *t, int64_t r) { return t->i0 + r % t->ni; }
static inline int64_t tile_row_offset(const att_plan *p, const att_tile *t, int64_t r) {
    int64_t head = t->kvh * p->G + t->g0 + r / t->ni;
    return ((t->b * p->Hq + head) * p->Tq + tile_row_pos(t, r)) * p->D;
}

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

/* ----------------------------------------------------------------------------
 * Scratch: one aligned block per thread
 * ---------------------------------------------------------------------------- */

typedef struct {
    void *raw;
    float *qs;    /* keys on lanes: q rows [rows][dp]; rows on lanes: q^T [D][rpad] */
    float *o;     /* [rows][dp] unnormalized output */
    float *s;     /* scores, then probabilities: [rows][bkp] or [bk rows][rpad] */
    float *m, *l; /* [rpad] running max and normalizer */
    float *alpha; /* [rpad] rescale factor of the current block */
    float *chk;   /* [rpad] NaN once a visible score is NaN or infinite */
    float *kpad, *vpad; /* [bkp][dp] blocks padded to dp when D % FD_VLEN != 0 */
} att_scratch;

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
 * Register-tiled pieces
 * ---------------------------------------------------------------------------- */

/* o: [NR][ldo] += sum over j < nk of p[r * prs + j * pjs] * v[j][0 .. NC vectors];
 * pf (or NULL): rows of V to ask for, row j's as row j is read */
FD_INLINE void pv_tile(float *o, int64_t ldo, const float *p, int64_t prs, int64_t pjs,
                       const float *v, int64_t ldv, const float *pf, int nk, const int NR, const int NC) {
    vf acc[6][8];
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < NC; c++) acc[r][c] = vf_load(o + r * ldo + c * FD_VLEN);
    for (int j = 0; j < nk; j++) {
        vf vv[8];
        for (int c = 0; c < NC; c++) vv[c] = vf_load(v + j * ldv + c * FD_VLEN);
#if FD_ATT_DECODE_PF && (defined(__GNUC__) || defined(__clang__))
        if (pf)
            for (int c = 0; c < NC; c++)
                if (FD_VLEN >= 16 || (c & 1) == 0) __builtin_prefetch(pf + j * ldv + c * FD_VLEN, 0, 1);
#endif
        for (int r = 0; r < NR; r++) {
            vf pr = vf_set1(p[r * prs + j * pjs]);
            for (int c = 0; c < NC; c++) acc[r][c] = vf_fmadd(pr, vv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < NR; r++)
        for (int c = 0; c < NC; c++) vf_store(o + r * ldo + c * FD_VLEN, acc[r][c]);
}

/* pv_tile with nr <= NRM rows and nc <= NCM vectors (NRM <= 6, NCM <= 8), as constants */
#define FD_PV_NC_CASES(NR, NCM)                                                              \
    switch (nc) {                                                                            \
    case 1: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, 1); break;                      \
    case 2: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, NCM >= 2 ? 2 : 1); break;       \
    case 3: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, NCM >= 3 ? 3 : 1); break;       \
    case 4: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, NCM >= 4 ? 4 : 1); break;       \
    case 5: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, NCM >= 5 ? 5 : 1); break;       \
    case 6: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, NCM >= 6 ? 6 : 1); break;       \
    case 7: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, NCM >= 7 ? 7 : 1); break;       \
    default: pv_tile(o, ldo, p, prs, pjs, v, ldv, pf, nk, NR, NCM >= 8 ? 8 : 1); break;      \
    }
#define FD_PV_ANY(name, NRM, NCM)                                                            \
    static void name(float *o, int64_t ldo, const float *p, int64_t prs, int64_t pjs,        \
                     const float *v, int64_t ldv, const float *pf, int nk, int nr, int nc) { \
        switch (nr) {                                                                        \
        case 1: FD_PV_NC_CASES(1, NCM) break;                                                \
        case 2: FD_PV_NC_CASES(NRM >= 2 ? 2 : 1, NCM) break;                                 \
        case 3: FD_PV_NC_CASES(NRM >= 3 ? 3 : 1, NCM) break;                                 \
        case 4: FD_PV_NC_CASES(NRM >= 4 ? 4 : 1, NCM) break;                                 \
        case 5: FD_PV_NC_CASES(NRM >= 5 ? 5 : 1, NCM) break;                                 \
        default: FD_PV_NC_CASES(NRM >= 6 ? 6 : 1, NCM) break;                                \
        }                                                                                    \
    }
FD_PV_ANY(pv_tile_rows, FD_PV_NR, FD_PV_NC)   /* rows on lanes */
FD_PV_ANY(pv_tile_keys, FD_PVK_NR, FD_PVK_NC) /* keys on lanes */

typedef void (*pv_tile_fn)(float *, int64_t, const float *, int64_t, int64_t, const float *, int64_t, const float *, int, int, int);

/* o: [rows][dp] += P V over nk keys with tiles of up to nrm x ncm; P's entry
 * (row r, key j) at p[r * prs + j * pjs]; v: [nk][ldv], dp floats used per key
 * (dp a multiple of FD_VLEN). pf (or NULL): [nk][ldv] rows to prefetch, asked
 * for during the first rows' pass. */
static void pv_block(float *o, int64_t dp, const float *p, int64_t prs, int64_t pjs, const float *v, int64_t ldv,
                     const float *pf, int64_t rows, int nk, pv_tile_fn tile, int nrm, int ncm) {
    const int64_t ncols = dp / FD_VLEN;
    for (int64_t r0 = 0; r0 < rows; r0 += nrm) {
        int nr = (int)min64(nrm, rows - r0);
        for (int64_t c0 = 0; c0 < ncols; c0 += ncm) {
            int nc = (int)min64(ncm, ncols - c0);
            tile(o + r0 * dp + c0 * FD_VLEN, dp, p + r0 * prs, prs, pjs, v + c0 * FD_VLEN, ldv,
                 pf && r0 == 0 ? pf + c0 * FD_VLEN : NULL, nk, nr, nc);
        }
    }
}

/* rows: [nk][ld] copied into dst: [nk][dp], zero-padded, so every row is whole vectors */
static void pad_rows(float *dst, const float *rows, int nk, int64_t ld, int64_t D, int64_t dp) {
    for (int j = 0; j < nk; j++) {
        memcpy(dst + j * dp, rows + j * ld, (size_t)D * sizeof(float));
        for (int64_t d = D; d < dp; d++) dst[j * dp + d] = 0.0f;
    }
}

/* The block's K (when kb is given) and V, as rows of whole vectors: padded
 * copies when D is not a multiple of FD_VLEN, else the cache itself. */
static void block_kv(const att_plan *p, att_scratch *w, const float *k, const float *v, int nk,
                     const float **kb, const float **vb, int64_t *ld) {
    if (p->dp == p->D) {
        if (kb) *kb = k;
        *vb = v, *ld = p->D;
        return;
    }
    if (kb) {
        pad_rows(w->kpad, k, nk, p->D, p->D, p->dp);
        *kb = w->kpad;
    }
    pad_rows(w->vpad, v, nk, p->D, p->D, p->dp);
    *vb = w->vpad, *ld = p->dp;
}

static void scale_row(float *x, int64_t n, float a) {
    vf av = vf_set1(a);
    for (int64_t i = 0; i < n; i += FD_VLEN) vf_store(x + i, vf_mul(vf_load(x + i), av));
}

/* ----------------------------------------------------------------------------
 * Engine 1: keys on lanes (decode)
 * ---------------------------------------------------------------------------- */

/* Scores of NR query rows q + r * ldq: [dp] against the FD_DOT_KB x FD_VLEN
 * keys at k: [.][ld] (the first nvalid real; later ones repeat the last and
 * their lanes are ignored), as vectors whose lanes still need summing: acc[r][g][b]
 * for key g * FD_VLEN + b. Slot g of the register tile takes key g * FD_VLEN + b
 * of batch b, so the slots walk FD_DOT_KB runs of K rows, each row after row
 * in address order: streams the hardware prefetcher follows (four rows side
 * by side, line by line, it does not). Each K vector loaded serves all NR rows. */
FD_INLINE void dot_tile(vf acc[][FD_DOT_KB][FD_VLEN], const float *q, int64_t ldq, const float *k, int64_t ld,
                        int b, int nvalid, int64_t dp, const float *pf_k, const int NR) {
    const float *kr[FD_DOT_KB];
    for (int g = 0; g < FD_DOT_KB; g++) {
        int j = g * FD_VLEN + b;
        kr[g] = k + (j < nvalid ? j : nvalid - 1) * ld;
    }
    vf a[FD_DOT_NR][FD_DOT_KB];
    for (int r = 0; r < NR; r++)
        for (int g = 0; g < FD_DOT_KB; g++) a[r][g] = vf_set1(0.0f);
    for (int64_t c = 0; c < dp; c += FD_VLEN) {
        vf kv[FD_DOT_KB];
        for (int g = 0; g < FD_DOT_KB; g++) kv[g] = vf_load(kr[g] + c);
        for (int r = 0; r < NR; r++) {
            vf qc = vf_load(q + r * ldq + c);
            for (int g = 0; g < FD_DOT_KB; g++) a[r][g] = vf_fmadd(qc, kv[g], a[r][g]);
        }
#if FD_ATT_DECODE_PF && (defined(__GNUC__) || defined(__clang__))
        if (pf_k && (FD_VLEN >= 16 || (c & 15) == 0))
            for (int g = 0; g < FD_DOT_KB; g++) {
                __builtin_prefetch(pf_k + (g * FD_VLEN + b) * ld + c, 0, 1);
            }
#else
        (void)pf_k;
#endif
    }
    for (int r = 0; r < NR; r++)
        for (int g = 0; g < FD_DOT_KB; g++) acc[r][g][b] = a[r][g];
}

/* s: [rows][lds], columns 0 .. FD_DOT_KB * FD_VLEN = scale * (q: [rows][dp]) .
 * (the keys at k: [.][ld], the first nvalid real) */
static void score_keys(float *s, int64_t lds, const float *q, int64_t rows, const float *k, int64_t ld,
                       int nvalid, int64_t dp, vf scale, const float *pf_k) {
    for (int64_t r0 = 0; r0 < rows; r0 += FD_DOT_NR) {
        vf acc[FD_DOT_NR][FD_DOT_KB][FD_VLEN];
        const float *qr = q + r0 * dp;
        const float *pk = r0 == 0 ? pf_k : NULL; /* the first rows pull the keys in */
        int nr = (int)min64(FD_DOT_NR, rows - r0);
        for (int b = 0; b < FD_VLEN; b++) {
            switch (nr) {
            case 1: dot_tile(acc, qr, dp, k, ld, b, nvalid, dp, pk, 1); break;
            case 2: dot_tile(acc, qr, dp, k, ld, b, nvalid, dp, pk, FD_DOT_NR >= 2 ? 2 : 1); break;
            case 3: dot_tile(acc, qr, dp, k, ld, b, nvalid, dp, pk, FD_DOT_NR >= 3 ? 3 : 1); break;
            default: dot_tile(acc, qr, dp, k, ld, b, nvalid, dp, pk, FD_DOT_NR); break;
            }
        }
        for (int r = 0; r < nr; r++)
            for (int g = 0; g < FD_DOT_KB; g++)
                vf_store(s + (r0 + r) * lds + g * FD_VLEN, vf_mul(vf_transpose_sum(acc[r][g]), scale));
    }
}

/* One row's online-softmax step. s: [nk] scores of the block, nv of them
 * visible (the first nv); becomes the probabilities (zeros past nv). */
static void row_update(float *s, int nv, int nk, float *m, float *l, float *chk, float *o, int64_t dp) {
    const vf zero = vf_set1(0.0f);
    vf mx = vf_set1(-INFINITY), ck = zero;
    int j = 0;
    for (; j + FD_VLEN <= nv; j += FD_VLEN) {
        vf x = vf_load(s + j);
        ck = vf_fmadd(x, zero, ck); /* x * 0 is NaN exactly when x is NaN or infinite */
        mx = vf_max(mx, x);
    }
    float mb = vf_reduce_max(mx), bad = vf_reduce_add(ck);
    for (; j < nv; j++) {
        bad += s[j] * 0.0f;
        mb = s[j] > mb ? s[j] : mb;
    }
    *chk += bad;
    float mnew = mb > *m ? mb : *m;
    if (mnew == -INFINITY) { /* nothing but -inf so far: no weight yet */
        for (j = 0; j < nk; j++) s[j] = 0.0f;
        return;
    }
    float alpha = fd_expf(*m - mnew); /* 0 when m was -inf */
    vf mv = vf_set1(mnew), sum = zero;
    for (j = 0; j + FD_VLEN <= nv; j += FD_VLEN) {
        vf e = vf_exp(vf_sub(vf_load(s + j), mv));
        vf_store(s + j, e);
        sum = vf_add(sum, e);
    }
    float total = vf_reduce_add(sum);
    for (; j < nv; j++) {
        s[j] = fd_expf(s[j] - mnew);
        total += s[j];
    }
    for (; j < nk; j++) s[j] = 0.0f;
    *l = *l * alpha + total;
    *m = mnew;
    if (alpha != 1.0f) scale_row(o, dp, alpha);
}

static void keys_on_lanes(const att_plan *p, att_scratch *w, const att_tile *t, int64_t c0, int64_t c1) {
    const int64_t D = p->D, dp = p->dp, rows = t->gh * t->ni, bkp = round_up(FD_ATT_DECODE_BK, FD_VLEN);
    const int64_t kv_offset = (t->b * p->Hkv + t->kvh) * p->Tk * D;
    int64_t vis_max = 0;
    for (int64_t r = 0; r < rows; r++) {
        const float *qr = p->q + tile_row_offset(p, t, r);
        float *qs = w->qs + r * dp;
        for (int64_t d = 0; d < D; d++) qs[d] = qr[d];
        for (int64_t d = D; d < dp; d++) qs[d] = 0.0f;
        for (int64_t d = 0; d < dp; d++) w->o[r * dp + d] = 0.0f;
        w->m[r] = -INFINITY, w->l[r] = 0.0f, w->chk[r] = 0.0f;
        vis_max = max64(vis_max, visible_keys(p, t->b, tile_row_pos(t, r)));
    }
    const int64_t end = min64(c1, vis_max);
    const vf scale = vf_set1(p->scale);
    const float *k = p->k + kv_offset, *v = p->v + kv_offset;
#if FD_ATT_DECODE_NEXT_PF && (defined(__GNUC__) || defined(__clang__))
    /* A short chunk gets nothing from the prefetch-ahead below, and its
     * head's K and V are a few short streams that the hardware prefetcher
     * barely starts on: ask for the next KV head's (the next item's) now. */
    if (end - c0 <= FD_ATT_DECODE_NEXT_PF && t->kvh + 1 < p->Hkv)
        for (int64_t o = c0 * D; o < end * D; o += 16) {
            __builtin_prefetch(k + p->Tk * D + o, 0, 2);
            __builtin_prefetch(v + p->Tk * D + o, 0, 2);
        }
#endif
    for (int64_t j0 = c0; j0 < end; j0 += FD_ATT_DECODE_BK) {
        const int nk = (int)min64(FD_ATT_DECODE_BK, end - j0);
        const float *kb, *vb;
        int64_t ld;
        block_kv(p, w, k + j0 * D, v + j0 * D, nk, &kb, &vb, &ld);
        for (int jg = 0; jg < nk; jg += FD_DOT_KB * FD_VLEN) {
            int64_t ahead = j0 + jg + FD_ATT_DECODE_PF;
            int prefetch = FD_ATT_DECODE_PF && ld == D && ahead + FD_DOT_KB * FD_VLEN <= end;
            score_keys(w->s + jg, bkp, w->qs, rows, kb + jg * ld, ld, (int)min64(FD_DOT_KB * FD_VLEN, nk - jg), dp,
                       scale, prefetch ? k + ahead * D : NULL);
        }
        for (int64_t r = 0; r < rows; r++) {
            int64_t nv = min64(max64(visible_keys(p, t->b, tile_row_pos(t, r)) - j0, 0), nk);
            row_update(w->s + r * bkp, (int)nv, nk, &w->m[r], &w->l[r], &w->chk[r], w->o + r * dp, dp);
        }
        int64_t vahead = j0 + FD_ATT_DECODE_PF;
        const float *pf_v = FD_ATT_DECODE_PF && ld == D && vahead + nk <= end ? v + vahead * D : NULL;
        pv_block(w->o, dp, w->s, bkp, 1, vb, ld, pf_v, rows, nk, pv_tile_keys, FD_PVK_NR, FD_PVK_NC);
    }
}

/* ----------------------------------------------------------------------------
 * Engine 2: rows on lanes (prefill)
 * ---------------------------------------------------------------------------- */

/* st: [NJ][lds] = scale * (keys kr[j]: [D]) . (qt: [D][ldq], NV vectors of rows) */
FD_INLINE void qk_tile(float *st, int64_t lds, const float *const *kr, const float *qt, int64_t ldq,
                       int64_t D, vf scale, const int NV) {
    vf acc[FD_QK_NJ][FD_QK_NV];
    for (int j = 0; j < FD_QK_NJ; j++)
        for (int c = 0; c < NV; c++) acc[j][c] = vf_set1(0.0f);
    for (int64_t d = 0; d < D; d++) {
        vf qv[FD_QK_NV];
        for (int c = 0; c < NV; c++) qv[c] = vf_load(qt + d * ldq + c * FD_VLEN);
        for (int j = 0; j < FD_QK_NJ; j++) {
            vf kj = vf_set1(kr[j][d]);
            for (int c = 0; c < NV; c++) acc[j][c] = vf_fmadd(kj, qv[c], acc[j][c]);
        }
    }
    for (int j = 0; j < FD_QK_NJ; j++)
        for (int c = 0; c < NV; c++) vf_store(st + j * lds + c * FD_VLEN, vf_mul(acc[j][c], scale));
}

/* st: [nk][rpad] scores of keys k: [nk][D] against the tile's q^T */
static void qk_block(float *st, int64_t rpad, const float *k, int nk, const float *qt, int64_t D, vf scale) {
    const int64_t nvr = rpad / FD_VLEN;
    for (int j0 = 0; j0 < nk; j0 += FD_QK_NJ) {
        const float *kr[FD_QK_NJ]; /* rows past nk repeat the last; their scores are never read */
        for (int j = 0; j < FD_QK_NJ; j++) kr[j] = k + (j0 + j < nk ? j0 + j : nk - 1) * D;
        for (int64_t c0 = 0; c0 < nvr; c0 += FD_QK_NV) {
            float *st0 = st + j0 * rpad + c0 * FD_VLEN;
            const float *qt0 = qt + c0 * FD_VLEN;
            switch (min64(FD_QK_NV, nvr - c0)) {
            case 1: qk_tile(st0, rpad, kr, qt0, rpad, D, scale, 1); break;
            case 2: qk_tile(st0, rpad, kr, qt0, rpad, D, scale, (FD_QK_NV > 1 ? 2 : 1)); break;
            case 3: qk_tile(st0, rpad, kr, qt0, rpad, D, scale, (FD_QK_NV > 2 ? 3 : 1)); break;
            default: qk_tile(st0, rpad, kr, qt0, rpad, D, scale, FD_QK_NV); break;
            }
        }
    }
}

/* Set st[j][r] = val for the keys j in [nv_r, nk) that row r does not see. */
static void mask_block(float *st, int64_t rpad, const att_plan *p, const att_tile *t, int64_t rows,
                       int64_t j0, int nk, float val) {
    for (int64_t r = 0; r < rows; r++) {
        int64_t nv = min64(max64(visible_keys(p, t->b, tile_row_pos(t, r)) - j0, 0), nk);
        for (int64_t j = nv; j < nk; j++) st[j * rpad + r] = val;
    }
}

static void rows_on_lanes(const att_plan *p, att_scratch *w, const att_tile *t, int64_t c0, int64_t c1) {
    const int64_t D = p->D, dp = p->dp, rows = t->gh * t->ni, rpad = round_up(rows, FD_VLEN);
    const int64_t kv_offset = (t->b * p->Hkv + t->kvh) * p->Tk * D;
    float *qt = w->qs, *st = w->s;
    int64_t vis_min = p->Tk, vis_max = 0;
    for (int64_t r = 0; r < rpad; r++) {
        if (r < rows) {
            const float *qr = p->q + tile_row_offset(p, t, r);
            for (int64_t d = 0; d < D; d++) qt[d * rpad + r] = qr[d];
            for (int64_t d = 0; d < dp; d++) w->o[r * dp + d] = 0.0f;
            int64_t vis = visible_keys(p, t->b, tile_row_pos(t, r));
            vis_min = min64(vis_min, vis), vis_max = max64(vis_max, vis);
        } else { /* padding lanes: zero queries, never written out */
            for (int64_t d = 0; d < D; d++) qt[d * rpad + r] = 0.0f;
        }
        w->m[r] = -INFINITY, w->l[r] = 0.0f, w->chk[r] = 0.0f;
    }
    const int64_t end = min64(c1, vis_max);
    const vf scale = vf_set1(p->scale), zero = vf_set1(0.0f), lowest = vf_set1(-FLT_MAX);
    for (int64_t j0 = c0; j0 < end; j0 += FD_ATT_PREFILL_BK) {
        const int nk = (int)min64(FD_ATT_PREFILL_BK, end - j0);
        const float *vb;
        int64_t ld;
        block_kv(p, w, NULL, p->v + kv_offset + j0 * D, nk, NULL, &vb, &ld); /* scores read K as it is */
        qk_block(st, rpad, p->k + kv_offset + j0 * D, nk, qt, D, scale);
        const int partial = j0 + nk > vis_min;
        /* hidden scores must neither raise the NaN check nor the max */
        if (partial) mask_block(st, rpad, p, t, rows, j0, nk, 0.0f);
        for (int64_t c = 0; c < rpad; c += FD_VLEN) {
            vf ck = vf_load(w->chk + c);
            for (int j = 0; j < nk; j++) ck = vf_fmadd(vf_load(st + j * rpad + c), zero, ck);
            vf_store(w->chk + c, ck);
        }
        if (partial) mask_block(st, rpad, p, t, rows, j0, nk, -INFINITY);
        for (int64_t c = 0; c < rpad; c += FD_VLEN) {
            vf mx = vf_set1(-INFINITY);
            for (int j = 0; j < nk; j++) mx = vf_max(mx, vf_load(st + j * rpad + c));
            vf mold = vf_load(w->m + c), mnew = vf_max(mold, mx);
            vf msub = vf_max(mnew, lowest); /* finite, so a row of -inf gives exp(-inf) = 0, not NaN */
            vf alpha = vf_exp(vf_sub(mold, msub)), sum = zero;
            for (int j = 0; j < nk; j++) {
                vf e = vf_exp(vf_sub(vf_load(st + j * rpad + c), msub));
                vf_store(st + j * rpad + c, e);
                sum = vf_add(sum, e);
            }
            vf_store(w->l + c, vf_fmadd(vf_load(w->l + c), alpha, sum));
            vf_store(w->m + c, mnew);
            vf_store(w->alpha + c, alpha);
        }
        for (int64_t r = 0; r < rows; r++)
            if (w->alpha[r] != 1.0f) scale_row(w->o + r * dp, dp, w->alpha[r]);
        pv_block(w->o, dp, st, 1, rpad, vb, ld, NULL, rows, nk, pv_tile_rows, FD_PV_NR, FD_PV_NC);
    }
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
    if (p->rows_on_lanes) rows_on_lanes(p, w, &t, c0, c1);
    else keys_on_lanes(p, w, &t, c0, c1);
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
    int nt = fd_threads();
    att_plan p = {.out = out, .q = q, .k = k, .v = v, .lengths = lengths, .B = B, .Hq = Hq, .Hkv = Hkv, .Tq = Tq,
                  .Tk = Tk, .D = D};
    p.scale = scale;
    p.causal = causal != 0;
    plan_init(&p, nt);
    if ((double)B * Hq * Tq * p.chunk * p.nchunks * D < FD_ATT_PAR_MIN) { /* query rows x keys x D, at most */
        nt = 1;
        plan_init(&p, nt);
    }
    const int64_t items = p.tiles * p.nchunks;
    if (items < nt) nt = (int)items;

    att_partials pt = {NULL, NULL, NULL};
    void *pt_raw = NULL;
    if (p.nchunks > 1) {
        int64_t n = items * p.max_rows;
        pt_raw = malloc((size_t)(n * (2 + p.dp)) * sizeof(float));
        if (!pt_raw) return -1;
        pt.o = (float *)pt_raw, pt.m = pt.o + n * p.dp, pt.l = pt.m + n;
    }
    att_job job = {.p = &p, .pt = &pt, .items = items};
    atomic_init(&job.next, 0);
    atomic_init(&job.failed, 0);
    fd_parallel(att_items, &job, nt);
    if (p.nchunks > 1 && !atomic_load(&job.failed))
        fd_parallel(att_merge, &job, p.tiles < nt ? (int)p.tiles : nt);
    free(pt_raw);
    return atomic_load(&job.failed) ? -1 : 0;
}

#if FD_ENTRY_POINTS
int fd_attention_f32(float *out, const float *q, const float *k, const float *v, const int64_t *lengths,
                     int64_t B, int64_t Hq, int64_t Hkv, int64_t Tq, int64_t Tk, int64_t D, float scale, int causal) {
    return FD_DISPATCH(fd_attention_f32, (out, q, k, v, lengths, B, Hq, Hkv, Tq, Tk, D, scale, causal));
}
#endif
