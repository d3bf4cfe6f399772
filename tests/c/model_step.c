/* model_step.c: the compiled step under a sanitizer, without Python.
 *
 * Builds two tiny random models (GPT-2-like: LayerNorm with biases, learned
 * positions, GELU; Llama-like: RMSNorm, RoPE, GQA 4/2, gated SiLU, Qwen2's
 * QKV bias; its attention output projection in bf16) and, for each, runs a
 * ragged 2-row prefill (5 and 9 tokens: 18 rows, so the projections go
 * through fd_gemm_cols' register tiles, with row and column tails) and
 * 12 decode steps (sampling with top-p in the last ones), first serially,
 * then from 4 threads at once, each with its own cache and scratch, with
 * the pool at 3 threads (so steps share it, and those that find it busy run
 * alone). Exit 0 when every thread's logits and ids equal the serial ones
 * bit for bit; a sanitizer report aborts first. tests/test_compiled.py
 * builds it with -fsanitize=thread and with address,undefined.
 *
 *   B rows 2, T <= 9, d 32, Hq 4, D 8, F 48, V 97, L 2, max_len 24
 */
#include "fastdecode.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define B 2
#define D_MODEL 32
#define HQ 4
#define HD 8
#define FFN 48
#define VOCAB 97
#define LAYERS 2
#define MAX_LEN 24
#define STEPS 12
#define THREADS 4

static uint64_t seed = 88172645463325252ull;
static float rnd(void) { /* xorshift: [-0.5, 0.5) */
    seed ^= seed << 13, seed ^= seed >> 7, seed ^= seed << 17;
    return (float)(seed >> 40) / (float)(1 << 24) - 0.5f;
}
static float *randoms(int64_t n, float base, float scale) {
    float *a = aligned_alloc(64, (size_t)((n * 4 + 63) / 64 * 64));
    for (int64_t i = 0; i < n; i++) a[i] = base + scale * rnd();
    return a;
}
static fd_matrix matrix(int64_t rows, int64_t cols) {
    fd_matrix m = {randoms(rows * cols, 0.0f, 0.6f), rows, cols, FD_FMT_F32};
    return m;
}

static fd_matrix matrix_bf16(int64_t rows, int64_t cols) { /* the top 16 bits of each float */
    float *f = randoms(rows * cols, 0.0f, 0.6f);
    uint16_t *h = aligned_alloc(64, (size_t)((rows * cols * 2 + 63) / 64 * 64));
    for (int64_t i = 0; i < rows * cols; i++) {
        uint32_t u;
        memcpy(&u, f + i, 4);
        h[i] = (uint16_t)(u >> 16);
    }
    free(f);
    fd_matrix m = {h, rows, cols, FD_FMT_BF16};
    return m;
}

static fd_model build(int llama, fd_layer *layers, double *freq) {
    const int64_t hkv = llama ? 2 : HQ, q = (HQ + 2 * hkv) * HD, up = llama ? 2 * FFN : FFN;
    for (int l = 0; l < LAYERS; l++) {
        fd_layer L = {randoms(D_MODEL, 1.0f, 0.2f), llama ? NULL : randoms(D_MODEL, 0.0f, 0.2f), matrix(q, D_MODEL),
                      randoms(q, 0.0f, 0.2f), llama ? matrix_bf16(D_MODEL, HQ * HD) : matrix(D_MODEL, HQ * HD), llama ? NULL : randoms(D_MODEL, 0, 0.2f),
                      randoms(D_MODEL, 1.0f, 0.2f), llama ? NULL : randoms(D_MODEL, 0.0f, 0.2f), matrix(up, D_MODEL),
                      llama ? NULL : randoms(up, 0.0f, 0.2f), matrix(D_MODEL, FFN),
                      llama ? NULL : randoms(D_MODEL, 0.0f, 0.2f), 1.0f / sqrtf(HD) / (llama ? 1 : l + 1)};
        layers[l] = L;
    }
    for (int i = 0; i < HD / 2; i++) freq[i] = pow(10000.0, -2.0 * i / HD);
    fd_model m = {VOCAB, D_MODEL, LAYERS, HQ, hkv, HD, FFN, MAX_LEN, llama, FD_ACT_GELU_TANH, llama, 1e-5f,
                  matrix(VOCAB, D_MODEL), llama ? NULL : randoms(MAX_LEN * D_MODEL, 0.0f, 0.2f),
                  llama ? freq : NULL, randoms(D_MODEL, 1.0f, 0.2f), llama ? NULL : randoms(D_MODEL, 0.0f, 0.2f),
                  matrix(VOCAB, D_MODEL), layers};
    return m;
}

typedef struct {
    const fd_model *m;
    float logits[STEPS + 1][B * VOCAB];
    int64_t ids[STEPS + 1][B];
    int64_t failed;
} run_out;

static void *decode(void *arg) {
    run_out *r = arg;
    const fd_model *m = r->m;
    const int64_t cache = LAYERS * B * m->hkv * MAX_LEN * HD;
    float *k = calloc((size_t)cache, 4), *v = calloc((size_t)cache, 4);
    const int64_t floats = fd_model_scratch_floats(m, B * 9);
    float *scratch = aligned_alloc(64, (size_t)((floats * 4 + 63) / 64 * 64));
    int64_t tokens[B * 9] = {0, 0, 0, 0, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6, 96, 10, 11}, counts[B] = {5, 9};
    int64_t start[B] = {0, 0};
    int64_t prev[B * (STEPS + 8)], offsets[B + 1];
    r->failed = fd_model_step_f32(r->logits[0], r->ids[0], m, tokens, counts, B, 9, k, v, MAX_LEN, start, scratch,
                                  floats, NULL, NULL, 0, NULL);
    for (int s = 1; s <= STEPS && !r->failed; s++) {
        int64_t one[B] = {1, 1};
        for (int b = 0; b < B; b++) start[b] += s == 1 ? counts[b] : 1;
        fd_sample_params p[B];
        for (int b = 0; b < B; b++) { /* the rows' history so far, for a repetition penalty */
            offsets[b] = b * s;
            for (int i = 0; i < s; i++) prev[b * s + i] = r->ids[i][b];
            p[b] = (fd_sample_params){0.9, 0, 0.8, 0.0, 1.2, 0.1 + 0.35 * b + 0.02 * s};
        }
        offsets[B] = B * s;
        r->failed = fd_model_step_f32(r->logits[s], r->ids[s], m, r->ids[s - 1], one, B, 1, k, v, MAX_LEN, start,
                                      scratch, floats, s > STEPS / 2 ? p : NULL, prev, B * s, offsets);
    }
    free(k), free(v), free(scratch);
    return NULL;
}

int main(void) {
    fd_set_level(fd_cpu_max_level());
    int bad = 0;
    for (int llama = 0; llama < 2; llama++) {
        fd_layer layers[LAYERS];
        double freq[HD / 2];
        fd_model m = build(llama, layers, freq);
        static run_out serial, par[THREADS];
        fd_set_num_threads(1);
        serial.m = &m;
        decode(&serial);
        fd_set_num_threads(3);
        pthread_t th[THREADS];
        for (int t = 0; t < THREADS; t++) par[t].m = &m, pthread_create(&th[t], NULL, decode, &par[t]);
        for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
        for (int t = 0; t < THREADS; t++)
            if (serial.failed || par[t].failed || memcmp(serial.logits, par[t].logits, sizeof serial.logits) ||
                memcmp(serial.ids, par[t].ids, sizeof serial.ids)) {
                fprintf(stderr, "%s: thread %d differs from the serial run\n", llama ? "llama" : "gpt2", t);
                bad = 1;
            }
        for (int i = 0; i < B * VOCAB; i++)
            if (!isfinite(serial.logits[STEPS][i])) bad = 1;
    }
    if (!bad) printf("ok\n");
    return bad;
}
