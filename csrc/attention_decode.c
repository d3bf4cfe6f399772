/* attention_decode.c: attention's keys-on-lanes engine, for a few query rows
 * per KV head (decode). Each score is a dot product along D; FD_VLEN of them
 * are reduced at once by vf_transpose_sum, so a block's scores come out as
 * vectors along the keys; K and V are prefetched FD_ATT_DECODE_PF keys ahead.
 *
 *   out, q: [B, Hq, Tq, D]   k, v: [B, Hkv, Tk, D]   lengths: [B]
 *   G = Hq / Hkv query heads per KV head; dp = D rounded up to FD_VLEN
 *   rows: the tile's query rows (heads x positions), nk: keys in a block
 */
#include "attention.h"

FD_PV_ANY(pv_tile_keys, FD_PVK_NR, FD_PVK_NC) /* keys on lanes */

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

void FD_FN(fd_att_keys_on_lanes)(const att_plan *p, att_scratch *w, const att_tile *t, int64_t c0, int64_t c1) {
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

