/* attention_prefill.c: attention's rows-on-lanes engine, for many query rows
 * per KV head (prefill). The tile's queries are transposed once to
 * [D][rows]; a score block is a register-tiled product of broadcast key
 * elements with query vectors, and the softmax updates of FD_VLEN rows run
 * as one vector.
 *
 *   out, q: [B, Hq, Tq, D]   k, v: [B, Hkv, Tk, D]   lengths: [B]
 *   G = Hq / Hkv query heads per KV head; dp = D rounded up to FD_VLEN
 *   rows: the tile's query rows (heads x positions), rpad: rows rounded up to FD_VLEN
 */
#include "attention.h"

FD_PV_ANY(pv_tile_rows, FD_PV_NR, FD_PV_NC)   /* rows on lanes */

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

void FD_FN(fd_att_rows_on_lanes)(const att_plan *p, att_scratch *w, const att_tile *t, int64_t c0, int64_t c1) {
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

