# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The C backend: thin, typed wrappers over csrc/ that release the GIL.

Nothing here validates: fastdecode.ops has already checked dtypes, shapes,
contiguity and ranges, and hands over C-contiguous float32 arrays.
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

cdef extern from "fastdecode.h":
    int fd_level
    int fd_num_threads
    int fd_cpu_max_level()
    int fd_set_level(int level)
    int fd_set_num_threads(int n)
    void fd_set_spin_ns(long long ns)
    long long fd_get_spin_ns()
    int fd_threads_supported()
    void fd_set_weight_order(const void *const *weights, const int64_t *bytes, int n) nogil
    const char *fd_build_flags()
    void fd_softmax_f32(float *out, const float *x, int64_t rows, int64_t n, int take_log) nogil
    void fd_exp_f32(float *out, const float *x, int64_t n) nogil
    ctypedef struct fd_sample_params:
        double temperature, top_k, top_p, min_p, penalty, u
    int64_t fd_sample_f32(int64_t *ids, const float *x, int64_t rows, int64_t n, const fd_sample_params *params,
                          const int64_t *prev_ids, int64_t n_prev, const int64_t *prev_offsets) nogil
    int64_t fd_process_logits_f32(float *out, int64_t *status, const float *x, int64_t rows, int64_t n,
                                  const fd_sample_params *params, const int64_t *prev_ids, int64_t n_prev,
                                  const int64_t *prev_offsets, int probs) nogil
    int64_t fd_argmax_f32(int64_t *ids, const float *x, int64_t rows, int64_t n) nogil
    int64_t fd_repetition_penalty_f32(float *out, const float *x, int64_t rows, int64_t n, const double *penalty,
                                      const int64_t *prev_ids, int64_t n_prev, const int64_t *prev_offsets) nogil
    int fd_attention_f32(float *out, const float *q, const float *k, const float *v,
                         const int64_t *lengths, int64_t B, int64_t Hq, int64_t Hkv,
                         int64_t Tq, int64_t Tk, int64_t D, float scale, int causal) nogil
    double fd_read_sum_f32(const float *x, int64_t n) nogil
    void fd_linear_f32(float *out, const float *x, const float *w, const float *bias, int64_t rows,
                       int64_t n_in, int64_t n_out) nogil
    void fd_norm_f32(float *out, const float *x, const float *w, const float *b, int64_t rows, int64_t n,
                     float eps, int rms) nogil

LEVELS = ("portable", "avx2", "avx512")


# ---------------------------------------------------------------------------
# Run-time configuration
# ---------------------------------------------------------------------------

def cpu_max_level():
    """Best SIMD level this CPU and OS support, as a name."""
    return LEVELS[fd_cpu_max_level()]


def set_level(str name):
    """Use SIMD level `name` (never above what the CPU supports); returns the level used."""
    return LEVELS[fd_set_level(LEVELS.index(name))]


def get_level():
    return LEVELS[fd_level] if fd_level >= 0 else LEVELS[0]


def set_num_threads(int n):
    return fd_set_num_threads(n)


def get_num_threads():
    return fd_num_threads


def set_spin_ns(long long ns):
    fd_set_spin_ns(ns)


def get_spin_ns():
    return fd_get_spin_ns()


_weight_order = []  # what the pool's pointers point into: alive until replaced


def set_weight_order(list weights):
    """The weights a decode step reads, in order ([] clears): C-contiguous
    arrays (float32 matrices, or the uint8 blocks of a QuantizedTensor). The pool reads ahead in them between kernel calls."""
    global _weight_order
    cdef Py_ssize_t n = len(weights), i
    cdef const void **ptrs = <const void **>malloc(max(n, 1) * sizeof(void *))
    cdef int64_t *nbytes = <int64_t *>malloc(max(n, 1) * sizeof(int64_t))
    cdef const unsigned char[::1] a  # any C-contiguous array, by its bytes (float32 or QuantizedTensor blocks)
    if not ptrs or not nbytes:
        free(ptrs)
        free(nbytes)
        raise MemoryError()
    try:
        for i in range(n):
            if not weights[i].flags.c_contiguous:  # a reshape would copy, and the pool read the copy
                raise ValueError("set_weight_order: every weight must be C-contiguous")
            a = weights[i].reshape(-1).view("u1")
            ptrs[i] = &a[0] if a.shape[0] else NULL
            nbytes[i] = a.shape[0]
        with nogil:
            fd_set_weight_order(ptrs, nbytes, <int>n)
        _weight_order = list(weights)  # only now: the pool no longer reads the old ones
    finally:
        free(ptrs)
        free(nbytes)


def threads_supported():
    return bool(fd_threads_supported())


def build_flags():
    return fd_build_flags().decode()


# ---------------------------------------------------------------------------
# Softmax
# ---------------------------------------------------------------------------

def softmax_rows(float[:, ::1] out, const float[:, ::1] x, bint log):
    """out, x: [rows, n] float32"""
    with nogil:
        fd_softmax_f32(&out[0, 0] if out.shape[0] * out.shape[1] else NULL,
                       &x[0, 0] if x.shape[0] * x.shape[1] else NULL,
                       x.shape[0], x.shape[1], log)


def exp_f32(float[::1] out, const float[::1] x):
    """out, x: [n] float32. The kernels' exp, for accuracy tests."""
    if x.shape[0]:
        with nogil:
            fd_exp_f32(&out[0], &x[0], x.shape[0])


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------
# params: [rows, 6] float64 in fd_sample_params' order (temperature, top_k,
# top_p, min_p, penalty, u); prev_ids [n_prev] / prev_offsets [rows + 1]
# int64, or None (nothing seen). Each returns the C kernel's count of bad
# rows (-1: out of memory).

cdef inline const int64_t *_ptr_or_null(const int64_t[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL


cdef struct SeenTokens:
    const int64_t *ids
    int64_t n
    const int64_t *offsets


cdef SeenTokens _seen(const int64_t[::1] ids, const int64_t[::1] offsets):
    cdef SeenTokens s
    s.ids = _ptr_or_null(ids)
    s.n = ids.shape[0] if ids is not None else 0
    s.offsets = _ptr_or_null(offsets)
    return s


def sample_rows(int64_t[::1] ids, const float[:, ::1] x, const double[:, ::1] params,
                const int64_t[::1] prev_ids, const int64_t[::1] prev_offsets):
    """ids: [rows]; x: [rows, n] float32 (n >= 1)"""
    cdef SeenTokens seen = _seen(prev_ids, prev_offsets)
    cdef int64_t bad
    if x.shape[0] == 0:
        return 0
    with nogil:
        bad = fd_sample_f32(&ids[0], &x[0, 0], x.shape[0], x.shape[1],
                            <const fd_sample_params *>&params[0, 0], seen.ids, seen.n, seen.offsets)
    return bad


def process_rows(float[:, ::1] out, int64_t[::1] status, const float[:, ::1] x, const double[:, ::1] params,
                 const int64_t[::1] prev_ids, const int64_t[::1] prev_offsets, bint probs):
    """out, x: [rows, n] float32 (n >= 1); status: [rows]"""
    cdef SeenTokens seen = _seen(prev_ids, prev_offsets)
    cdef int64_t bad
    if x.shape[0] == 0:
        return 0
    with nogil:
        bad = fd_process_logits_f32(&out[0, 0], &status[0], &x[0, 0], x.shape[0], x.shape[1],
                                    <const fd_sample_params *>&params[0, 0], seen.ids, seen.n, seen.offsets,
                                    probs)
    return bad


def argmax_rows(int64_t[::1] ids, const float[:, ::1] x):
    """ids: [rows]; x: [rows, n] float32 (n >= 1)"""
    cdef int64_t bad
    if x.shape[0] == 0:
        return 0
    with nogil:
        bad = fd_argmax_f32(&ids[0], &x[0, 0], x.shape[0], x.shape[1])
    return bad


def repetition_penalty_rows(float[:, ::1] out, const float[:, ::1] x, const double[::1] penalty,
                            const int64_t[::1] prev_ids, const int64_t[::1] prev_offsets not None):
    """out, x: [rows, n] float32 (out may be x); penalty: [rows]"""
    cdef SeenTokens seen = _seen(prev_ids, prev_offsets)
    cdef int64_t bad
    if x.shape[0] * x.shape[1] == 0:
        return 0
    with nogil:
        bad = fd_repetition_penalty_f32(&out[0, 0], &x[0, 0], x.shape[0], x.shape[1], &penalty[0],
                                        seen.ids, seen.n, seen.offsets)
    return bad
# Attention
# ---------------------------------------------------------------------------

def attention_f32(float[:, :, :, ::1] out, const float[:, :, :, ::1] q, const float[:, :, :, ::1] k,
                  const float[:, :, :, ::1] v, bint causal, float scale, const int64_t[::1] lengths):
    """out, q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D]; lengths: [B] int64."""
    cdef int rc
    # ops has validated everything; this only keeps the C side inside the
    # buffers it is handed, whatever a direct caller passes
    cdef int i
    for i in range(4):
        if out.shape[i] != q.shape[i] or k.shape[i] != v.shape[i]:
            raise ValueError("attention_f32: inconsistent shapes")
    if k.shape[0] != q.shape[0] or k.shape[3] != q.shape[3] or lengths.shape[0] != q.shape[0]:
        raise ValueError("attention_f32: inconsistent shapes")
    if q.size == 0 or k.size == 0:
        if k.size == 0:
            out[...] = 0
        return
    with nogil:
        rc = fd_attention_f32(&out[0, 0, 0, 0], &q[0, 0, 0, 0], &k[0, 0, 0, 0], &v[0, 0, 0, 0],
                              &lengths[0], q.shape[0], q.shape[1], k.shape[1], q.shape[2], k.shape[2],
                              q.shape[3], scale, causal)
    if rc == -1:
        raise MemoryError("attention: no memory for the kernel's scratch buffers")
    if rc == -2:
        raise ValueError(f"attention_f32: q's heads ({q.shape[1]}) must be a multiple of k's ({k.shape[1]})")


def read_sum_f32(const float[::1] x):
    """sum(x) read by every thread: the read-bandwidth probe."""
    cdef double s = 0.0
    if x.shape[0]:
        with nogil:
            s = fd_read_sum_f32(&x[0], x.shape[0])
    return s


# ---------------------------------------------------------------------------
# Linear (decode-step projections)
# ---------------------------------------------------------------------------

def linear_f32(float[:, ::1] out, const float[:, ::1] x, const float[:, ::1] w, const float[::1] bias):
    """out: [rows, n_out] = x [rows, n_in] @ w[n_out, n_in].T + bias [n_out] (or None)."""
    # ops has validated everything; this only keeps the C side inside the buffers it is handed
    if out.shape[0] != x.shape[0] or out.shape[1] != w.shape[0] or x.shape[1] != w.shape[1] or \
            (bias is not None and bias.shape[0] != w.shape[0]):
        raise ValueError("linear_f32: inconsistent shapes")
    if out.shape[0] * out.shape[1] == 0:
        return
    cdef Py_ssize_t r
    if x.shape[1] == 0:  # no terms: the bias alone
        for r in range(out.shape[0]):
            if bias is None:
                out[r, :] = 0
            else:
                out[r, :] = bias
        return
    with nogil:
        fd_linear_f32(&out[0, 0], &x[0, 0], &w[0, 0], &bias[0] if bias is not None else NULL,
                      x.shape[0], x.shape[1], w.shape[0])


# ---------------------------------------------------------------------------
# LayerNorm / RMSNorm
# ---------------------------------------------------------------------------

def norm_rows(float[:, ::1] out, const float[:, ::1] x, const float[::1] w, const float[::1] b, double eps,
              bint rms):
    """out: [rows, n] = LayerNorm (rms False) or RMSNorm of x [rows, n], weight w [n], bias b [n] or None."""
    if out.shape[0] != x.shape[0] or out.shape[1] != x.shape[1] or w.shape[0] != x.shape[1] or \
            (b is not None and b.shape[0] != x.shape[1]):
        raise ValueError("norm_rows: inconsistent shapes")
    if x.shape[0] * x.shape[1] == 0:
        return
    with nogil:
        fd_norm_f32(&out[0, 0], &x[0, 0], &w[0], &b[0] if b is not None else NULL, x.shape[0], x.shape[1],
                    <float>eps, rms)


# ---------------------------------------------------------------------------
# Weights in GGUF's block formats (csrc/quant.c)
# ---------------------------------------------------------------------------

cdef extern from "fastdecode.h":
    int64_t fd_quant_row_bytes(int fmt, int64_t n_in) nogil
    int fd_linear_quant(float *out, const float *x, const unsigned char *w, const float *bias, int fmt,
                        int64_t rows, int64_t n_in, int64_t n_out) nogil
    void fd_dequantize_rows(float *out, const unsigned char *w, int fmt, int64_t rows, int64_t n_in) nogil

QUANT_BLOCKS = (32, 32, 256, 256, 1, 1)  # weights per block of FD_FMT_Q8_0 .. FD_FMT_F16


cdef int64_t _quant_row_bytes(int fmt, int64_t n_in) except -1:
    """Bytes of one row, after checking fmt and that n_in fills whole blocks
    (a partial block would make C read past the row)."""
    if not 0 <= fmt < len(QUANT_BLOCKS):
        raise ValueError(f"unknown format number {fmt}")
    if n_in % QUANT_BLOCKS[fmt]:
        raise ValueError(f"n_in {n_in} is not a multiple of the format's block {QUANT_BLOCKS[fmt]}")
    return fd_quant_row_bytes(fmt, n_in)


def linear_quant(float[:, ::1] out, const float[:, ::1] x, const unsigned char[:, ::1] w, const float[::1] bias,
                 int fmt):
    """out: [rows, n_out] = x [rows, n_in] @ W.T + bias [n_out] (or None); w: [n_out, row bytes] blocks."""
    if out.shape[0] != x.shape[0] or out.shape[1] != w.shape[0] or \
            w.shape[1] != _quant_row_bytes(fmt, x.shape[1]) or (bias is not None and bias.shape[0] != w.shape[0]):
        raise ValueError("linear_quant: inconsistent shapes")
    if out.shape[0] * out.shape[1] == 0:
        return
    if x.shape[1] == 0:  # no terms: the bias alone
        out[:, :] = 0
        if bias is not None:
            for r in range(out.shape[0]):
                out[r, :] = bias
        return
    cdef int status
    with nogil:
        status = fd_linear_quant(&out[0, 0], &x[0, 0], &w[0, 0], &bias[0] if bias is not None else NULL, fmt,
                                 x.shape[0], x.shape[1], w.shape[0])
    if status:
        raise MemoryError("linear_quant: no memory for the int8 copy of x")


def dequantize_rows(float[:, ::1] out, const unsigned char[:, ::1] w, int fmt):
    """out: [rows, n_in] float32 = the weights of w: [rows, row bytes] blocks."""
    if out.shape[0] != w.shape[0] or w.shape[1] != _quant_row_bytes(fmt, out.shape[1]):
        raise ValueError("dequantize_rows: inconsistent shapes")
    if out.shape[0] * out.shape[1] == 0:
        return
    with nogil:
        fd_dequantize_rows(&out[0, 0], &w[0, 0], fmt, out.shape[0], out.shape[1])
