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

# The compiled decode step (csrc/model.c)
# ---------------------------------------------------------------------------
# fastdecode.model.compiled validates the model and every call; the checks
# here keep C inside the buffers it is handed whatever a direct caller passes.

cdef extern from "fastdecode.h":
    int FD_FMT_F32
    int FD_ACT_GELU_TANH, FD_ACT_GELU_ERF, FD_ACT_RELU, FD_ACT_SILU
    ctypedef struct fd_matrix:
        const void *data
        int64_t rows, cols
        int format
    ctypedef struct fd_layer:
        const float *attn_norm
        const float *attn_norm_bias
        fd_matrix qkv
        const float *qkv_bias
        fd_matrix out
        const float *out_bias
        const float *mlp_norm
        const float *mlp_norm_bias
        fd_matrix up
        const float *up_bias
        fd_matrix down
        const float *down_bias
        float attn_scale
    ctypedef struct fd_model:
        int64_t vocab, d, layers, hq, hkv, head_dim, ffn, max_positions
        int gated, activation, rms
        float eps
        fd_matrix embed
        const float *positions
        const double *rope_freq
        const float *final_norm
        const float *final_norm_bias
        fd_matrix head
        const fd_layer *layer
    int64_t fd_model_scratch_floats(const fd_model *m, int64_t rows)
    int64_t fd_model_step_f32(float *logits, int64_t *ids, const fd_model *m, const int64_t *tokens,
                              const int64_t *counts, int64_t B, int64_t T, float *k, float *v, int64_t max_len,
                              const int64_t *start, float *scratch, const fd_sample_params *params,
                              const int64_t *prev_ids, int64_t n_prev, const int64_t *prev_offsets) nogil

ACTIVATIONS = {"gelu_tanh": FD_ACT_GELU_TANH, "gelu_erf": FD_ACT_GELU_ERF, "relu": FD_ACT_RELU,
               "silu": FD_ACT_SILU}


cdef const float *_vector(object a, int64_t n, str name, bint optional=False) except? NULL:
    """a [n] float32 C-contiguous (or None when optional): its data pointer."""
    cdef const float[::1] view
    if a is None:
        if optional:
            return NULL
        raise ValueError(f"CompiledModel: {name} is required")
    view = a
    if view.shape[0] != n or n == 0:
        raise ValueError(f"CompiledModel: {name} must have shape [{n}]; got [{view.shape[0]}]")
    return &view[0]


cdef fd_matrix _matrix(object a, int64_t rows, int64_t cols, str name) except *:
    """A weight [rows, cols]: a float32 array, or a formats.QuantizedTensor
    (its blocks [rows, fd_quant_row_bytes(format, cols)] and format code)."""
    cdef const float[:, ::1] view
    cdef const unsigned char[:, ::1] blocks
    cdef fd_matrix m
    if rows * cols == 0:
        raise ValueError(f"CompiledModel: {name} is empty")
    m.rows, m.cols = rows, cols
    if not hasattr(a, "info"):  # an array: float32 [rows, cols]
        view = a
        if view.shape[0] != rows or view.shape[1] != cols:
            raise ValueError(f"CompiledModel: {name} must have shape [{rows}, {cols}]; got "
                             f"[{view.shape[0]}, {view.shape[1]}]")
        m.data, m.format = &view[0, 0], FD_FMT_F32
        return m
    blocks = a.data
    m.format = a.info.code
    if tuple(a.shape) != (rows, cols) or cols % 32 or blocks.shape[0] != rows or \
            blocks.shape[1] != _quant_row_bytes(m.format, cols):
        raise ValueError(f"CompiledModel: {name} must be [{rows}, {cols}] (a multiple of 32) in whole blocks")
    m.data = &blocks[0, 0]
    return m


cdef class CompiledModel:
    """A model's weights and shape as csrc/model.c reads them. It holds
    references to every array it points into; the arrays must not change
    (fastdecode makes loaded weights read-only)."""
    cdef fd_model m
    cdef fd_layer *layers
    cdef list keep

    def __cinit__(self):
        self.layers = NULL

    def __dealloc__(self):
        free(self.layers)

    def __init__(self, dict shape, list layers, embed, positions, rope_freq, final_norm, final_norm_bias, head):
        cdef int64_t d = shape["d"], hq = shape["hq"], hkv = shape["hkv"], hd = shape["head_dim"]
        cdef int64_t f = shape["ffn"], v = shape["vocab"], nl = len(layers), i
        cdef int64_t q = (hq + 2 * hkv) * hd
        cdef const double[::1] freq
        if min(d, hq, hkv, hd, f, v, shape["max_positions"], nl) < 1 or hq % hkv:
            raise ValueError("CompiledModel: sizes must be positive and heads a multiple of KV heads")
        self.m.vocab, self.m.d, self.m.layers, self.m.hq, self.m.hkv = v, d, nl, hq, hkv
        self.m.head_dim, self.m.ffn, self.m.max_positions = hd, f, shape["max_positions"]
        self.m.gated, self.m.rms, self.m.eps = shape["gated"], shape["rms"], shape["eps"]
        self.m.activation = ACTIVATIONS[shape["activation"]]
        self.keep = [embed, positions, rope_freq, final_norm, final_norm_bias, head, layers]
        self.m.embed = _matrix(embed, v, d, "embed")
        self.m.positions = NULL if positions is None else \
            <const float *>_matrix(positions, self.m.max_positions, d, "positions").data
        self.m.rope_freq = NULL
        if rope_freq is not None:
            freq = rope_freq
            if freq.shape[0] != hd // 2 or hd % 2:
                raise ValueError(f"CompiledModel: rope_freq must have shape [{hd // 2}] (head_dim even)")
            self.m.rope_freq = &freq[0]
        self.m.final_norm = _vector(final_norm, d, "final_norm")
        self.m.final_norm_bias = _vector(final_norm_bias, d, "final_norm_bias", True)
        self.m.head = _matrix(head, v, d, "head")
        self.layers = <fd_layer *>malloc(nl * sizeof(fd_layer))
        if not self.layers:
            raise MemoryError()
        for i in range(nl):
            L = layers[i]
            up = (2 if self.m.gated else 1) * f
            self.layers[i].attn_norm = _vector(L["attn_norm"], d, "attn_norm")
            self.layers[i].attn_norm_bias = _vector(L["attn_norm_bias"], d, "attn_norm_bias", True)
            self.layers[i].qkv = _matrix(L["qkv"], q, d, "qkv")
            self.layers[i].qkv_bias = _vector(L["qkv_bias"], q, "qkv_bias", True)
            self.layers[i].out = _matrix(L["out"], d, hq * hd, "out")
            self.layers[i].out_bias = _vector(L["out_bias"], d, "out_bias", True)
            self.layers[i].mlp_norm = _vector(L["mlp_norm"], d, "mlp_norm")
            self.layers[i].mlp_norm_bias = _vector(L["mlp_norm_bias"], d, "mlp_norm_bias", True)
            self.layers[i].up = _matrix(L["up"], up, d, "up")
            self.layers[i].up_bias = _vector(L["up_bias"], up, "up_bias", True)
            self.layers[i].down = _matrix(L["down"], d, f, "down")
            self.layers[i].down_bias = _vector(L["down_bias"], d, "down_bias", True)
            self.layers[i].attn_scale = L["attn_scale"]
        self.m.layer = self.layers

    def scratch_floats(self, int64_t rows):
        """Floats of scratch (64-byte aligned) a step over `rows` = B * T tokens needs."""
        return fd_model_scratch_floats(&self.m, rows)


cdef class StepState:
    """One cache's side of the step: the model, the cache k, v [L, B, Hkv,
    max_len, D] and its lengths [B] (positions filled, advanced by step),
    and a scratch block for steps of up to `rows` tokens. Checked once here,
    so a step only checks what changes per call."""
    cdef CompiledModel model
    cdef float[:, :, :, :, ::1] k, v
    cdef int64_t[::1] lengths
    cdef float[::1] scratch
    cdef readonly int64_t rows

    def __init__(self, CompiledModel model not None, float[:, :, :, :, ::1] k not None,
                 float[:, :, :, :, ::1] v not None, int64_t[::1] lengths not None, float[::1] scratch not None,
                 int64_t rows):
        cdef int i
        for i in range(5):
            if k.shape[i] != v.shape[i]:
                raise ValueError("StepState: k and v caches differ in shape")
        if k.shape[0] != model.m.layers or k.shape[2] != model.m.hkv or k.shape[4] != model.m.head_dim or \
                k.shape[3] < 1 or k.shape[1] < 1 or lengths.shape[0] != k.shape[1]:
            raise ValueError(f"StepState: the cache must be [{model.m.layers}, B, {model.m.hkv}, max_len >= 1, "
                             f"{model.m.head_dim}] with B lengths")
        if rows < k.shape[1] or scratch.shape[0] < fd_model_scratch_floats(&model.m, rows) or \
                (<size_t>&scratch[0]) % 64:
            raise ValueError("StepState: scratch too small for `rows` (>= B) or not 64-byte aligned")
        self.model, self.k, self.v, self.lengths, self.scratch, self.rows = model, k, v, lengths, scratch, rows

    def step(self, float[:, ::1] logits, int64_t[::1] ids, const int64_t[:, ::1] tokens, const int64_t[::1] counts,
             const double[:, ::1] params, const int64_t[::1] prev_ids, const int64_t[::1] prev_offsets):
        """logits [B, V] or None (and ids [B] or None) after tokens [B, T]
        (row b's real tokens its last counts[b]) at positions lengths[b]..,
        which then advance by counts. params [B, 6] (fd_sample_params) or
        None: greedy ids. Returns the sampler's count of bad rows."""
        cdef fd_model *m = &self.model.m
        cdef int64_t B = tokens.shape[0], T = tokens.shape[1], i, j, r, n_prev = 0, bad
        cdef int64_t max_len = self.k.shape[3]
        cdef const fd_sample_params *pp = NULL
        cdef const int64_t *pids = NULL
        cdef const int64_t *poff = NULL
        cdef int64_t *idp = NULL
        cdef float *lp = NULL
        if B != self.k.shape[1] or T < 1 or B * T > self.rows:
            raise ValueError(f"StepState.step: tokens must be [{self.k.shape[1]}, T], T >= 1, at most "
                             f"{self.rows} tokens")
        if logits is None and ids is not None:
            raise ValueError("StepState.step: ids need logits")
        if logits is not None:
            if logits.shape[0] != B or logits.shape[1] != m.vocab:
                raise ValueError(f"StepState.step: logits must be [{B}, {m.vocab}]")
            lp = &logits[0, 0]
        if counts.shape[0] != B:
            raise ValueError(f"StepState.step: counts must have {B} entries")
        for r in range(B):
            if counts[r] < 0 or counts[r] > T or self.lengths[r] < 0 or \
                    self.lengths[r] + counts[r] > min(max_len, m.max_positions):
                raise ValueError(f"StepState.step: row {r}: counts in [0, T] and lengths + counts within the "
                                 "cache and the model's positions")
        for i in range(B):
            for j in range(T):
                if tokens[i, j] < 0 or tokens[i, j] >= m.vocab:
                    raise ValueError(f"StepState.step: token ids must lie in [0, {m.vocab})")
        if ids is not None:
            if ids.shape[0] != B:
                raise ValueError(f"StepState.step: ids must have {B} entries")
            idp = &ids[0]
        if params is not None:
            if ids is None or params.shape[0] != B or params.shape[1] != 6:
                raise ValueError(f"StepState.step: params must be [{B}, 6], with ids")
            pp = <const fd_sample_params *>&params[0, 0]
        if prev_ids is not None:
            if prev_offsets is None or prev_offsets.shape[0] != B + 1 or prev_offsets[0] != 0:
                raise ValueError(f"StepState.step: prev_offsets must be [{B + 1}] starting at 0")
            n_prev = prev_ids.shape[0]
            for r in range(B):
                if prev_offsets[r + 1] < prev_offsets[r] or prev_offsets[r + 1] > n_prev:
                    raise ValueError("StepState.step: prev_offsets must rise within prev_ids")
            for i in range(n_prev):
                if prev_ids[i] < 0 or prev_ids[i] >= m.vocab:
                    raise ValueError(f"StepState.step: prev_ids must lie in [0, {m.vocab})")
            pids = &prev_ids[0] if n_prev else NULL
            poff = &prev_offsets[0]
        with nogil:
            bad = fd_model_step_f32(lp, idp, m, &tokens[0, 0], &counts[0], B, T, &self.k[0, 0, 0, 0, 0],
                                    &self.v[0, 0, 0, 0, 0], max_len, &self.lengths[0], &self.scratch[0], pp,
                                    pids, n_prev, poff)
        if bad < 0:
            raise MemoryError("StepState.step: no memory for the step's scratch")
        for r in range(B):
            self.lengths[r] += counts[r]
        return bad
