/* quantize_x_levels.c: fd_quantize_x at the avx512 level gives the bytes
 * the portable level gives (tests/test_formats.py builds and runs it):
 * random x over 9 decades, ties, all-zero blocks, inf, -inf and NaN.
 * Prints "ok", or the first block that differs. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fd_quantize_x_avx512(int8_t *q, float *d, float *ds, int32_t *s, const float *x, int64_t rows, int64_t n_in);
void fd_quantize_x_portable(int8_t *q, float *d, float *ds, int32_t *s, const float *x, int64_t rows, int64_t n_in);

static int same(float a, float b) { return a == b || (isnan(a) && isnan(b)); }

int main(void) {
    enum { ROWS = 64, N_IN = 2048, NB = ROWS * N_IN / 32 };
    static float x[ROWS * N_IN], d[2][NB], ds[2][NB];
    static int8_t q[2][ROWS * N_IN];
    static int32_t s[2][2 * NB];
    srand(1);
    for (int i = 0; i < ROWS * N_IN; i++) {
        x[i] = ((float)rand() / RAND_MAX - 0.5f) * powf(10.0f, (float)(rand() % 9 - 4));
        if (rand() % 50 == 0) x[i] = roundf(x[i] * 4) / 4;
    }
    for (int i = 0; i < 32; i++) x[5 * 32 + i] = 0.0f;                     /* an all-zero block */
    for (int i = 0; i < 32; i++) x[13 * 32 + i] = (i % 4 - 1.5f) * 63.5f;  /* x * 127 / amax at halves: ties */
    x[7 * 32 + 3] = INFINITY, x[9 * 32 + 30] = NAN, x[11 * 32] = -INFINITY;
    fd_quantize_x_avx512(q[0], d[0], ds[0], s[0], x, ROWS, N_IN);
    fd_quantize_x_portable(q[1], d[1], ds[1], s[1], x, ROWS, N_IN);
    for (int b = 0; b < NB; b++)
        if (memcmp(q[0] + 32 * b, q[1] + 32 * b, 32) || s[0][2 * b] != s[1][2 * b] || s[0][2 * b + 1] != s[1][2 * b + 1] ||
            !same(d[0][b], d[1][b]) || !same(ds[0][b], ds[1][b])) {
            printf("block %d differs: d %g vs %g, ds %g vs %g\n", b, d[0][b], d[1][b], ds[0][b], ds[1][b]);
            return 1;
        }
    printf("ok\n");
    return 0;
}
