/* attention.h: what attention.c (planner, split-KV merge, kernel) shares with
 * its two engines, attention_decode.c (keys on lanes) and
 * attention_prefill.c (rows on lanes): the plan, a tile, the per-thread
 * scratch, the register-tiled out += P V, and the tuning constants.
 *
 *   out, q: [B, Hq, Tq, D]   k, v: [B, Hkv, Tk, D]   lengths: [B]
 *   G = Hq / Hkv query heads per KV head; dp = D rounded up to FD_VLEN
 */
#ifndef FD_ATTENTION_H
#define FD_ATTENTION_H

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

typedef fd_att_plan att_plan; /* fastdecode.h: model.c plans attention too */

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

typedef void (*pv_tile_fn)(float *, int64_t, const float *, int64_t, int64_t, const float *, int64_t, const float *, int, int, int);

/* o: [rows][dp] += P V over nk keys with tiles of up to nrm x ncm; P's entry
 * (row r, key j) at p[r * prs + j * pjs]; v: [nk][ldv], dp floats used per key
 * (dp a multiple of FD_VLEN). pf (or NULL): [nk][ldv] rows to prefetch, asked
 * for during the first rows' pass. */
static inline void pv_block(float *o, int64_t dp, const float *p, int64_t prs, int64_t pjs, const float *v, int64_t ldv,
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
static inline void pad_rows(float *dst, const float *rows, int nk, int64_t ld, int64_t D, int64_t dp) {
    for (int j = 0; j < nk; j++) {
        memcpy(dst + j * dp, rows + j * ld, (size_t)D * sizeof(float));
        for (int64_t d = D; d < dp; d++) dst[j * dp + d] = 0.0f;
    }
}

/* The block's K (when kb is given) and V, as rows of whole vectors: padded
 * copies when D is not a multiple of FD_VLEN, else the cache itself. */
static inline void block_kv(const att_plan *p, att_scratch *w, const float *k, const float *v, int nk,
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

static inline void scale_row(float *x, int64_t n, float a) {
    vf av = vf_set1(a);
    for (int64_t i = 0; i < n; i += FD_VLEN) vf_store(x + i, vf_mul(vf_load(x + i), av));
}

/* ----------------------------------------------------------------------------
 * The engines: run tile t over keys [c0, c1) of its chunk, into w's state
 * ---------------------------------------------------------------------------- */

void FD_FN(fd_att_keys_on_lanes)(const att_plan *p, att_scratch *w, const att_tile *t, int64_t c0, int64_t c1);
void FD_FN(fd_att_rows_on_lanes)(const att_plan *p, att_scratch *w, const att_tile *t, int64_t c0, int64_t c1);

#endif /* FD_ATTENTION_H */
