# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""The C backend: thin, typed wrappers over csrc/ that release the GIL.

fastdecode.ops validates what a user passes (dtypes, ranges, meanings) and
hands over C-contiguous arrays. These wrappers keep the one rule written in
csrc/fastdecode.h: every buffer handed to C has the shape the kernel's size
arguments say (a mismatch, or None where a buffer is required, is a
ValueError/TypeError here, whoever calls). Values inside the buffers are the
kernels' to handle.
"""
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free

import os
import warnings

cdef extern from "fastdecode.h":
    int FD_MAX_THREADS
    int fd_get_level()
    int fd_threads()
    long long fd_pool_worker_jobs()
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
    ctypedef struct fd_sample_params:  # opaque here: its fields are fastdecode.h's FD_SAMPLE_PARAM_FIELDS
        pass
    int FD_SAMPLE_N_PARAMS
    int fd_sample_param_field(int i, const char **name, size_t *offset)
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


cdef tuple _dims(Py_ssize_t *shape, int nd):
    """A memoryview's shape, for error messages."""
    return tuple([shape[i] for i in range(nd)])


cdef int _apart(str kernel, str a_name, const void *a, size_t na, str b_name, const void *b, size_t nb,
                bint may_be_same) except -1:
    """The trust rule's other half: output a ([na] bytes) and input b share no
    byte, or (may_be_same) are the same buffer: the kernel works in place."""
    cdef const char *pa = <const char *>a
    cdef const char *pb = <const char *>b
    if na == 0 or nb == 0 or pa + na <= pb or pb + nb <= pa or (may_be_same and pa == pb and na == nb):
        return 0
    raise ValueError(f"{kernel}: {a_name} overlaps {b_name}" +
                     (f" (it may be {b_name} itself, not part of it)" if may_be_same else ""))


# (pointer, bytes) of a C-contiguous buffer, NULL / 0 when empty or None
cdef inline const void *_f2(const float[:, ::1] a) noexcept:
    return &a[0, 0] if a is not None and a.shape[0] * a.shape[1] else NULL
cdef inline size_t _f2n(const float[:, ::1] a) noexcept:
    return a.shape[0] * a.shape[1] * sizeof(float) if a is not None else 0
cdef inline const void *_f1(const float[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL
cdef inline size_t _f1n(const float[::1] a) noexcept:
    return a.shape[0] * sizeof(float) if a is not None else 0
cdef inline const void *_i1(const int64_t[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL
cdef inline size_t _i1n(const int64_t[::1] a) noexcept:
    return a.shape[0] * sizeof(int64_t) if a is not None else 0
cdef inline const void *_d2(const double[:, ::1] a) noexcept:
    return &a[0, 0] if a is not None and a.shape[0] * a.shape[1] else NULL
cdef inline size_t _d2n(const double[:, ::1] a) noexcept:
    return a.shape[0] * a.shape[1] * sizeof(double) if a is not None else 0


cdef int _out_apart_from_weights(str kernel, const float[:, ::1] out, const float[:, ::1] x, bint in_place,
                                 const void *w, size_t nw, str bias_name, const float[::1] bias) except -1:
    """out apart from x (or x itself when in_place), the weight w and the bias."""
    _apart(kernel, "out", _f2(out), _f2n(out), "x", _f2(x), _f2n(x), in_place)
    _apart(kernel, "out", _f2(out), _f2n(out), "w", w, nw, False)
    _apart(kernel, "out", _f2(out), _f2n(out), bias_name, _f1(bias), _f1n(bias), False)
    return 0


cdef int _out_apart_from_sampler_inputs(str kernel, str name, const void *o, size_t no, const double[:, ::1] params, const int64_t[::1] prev_ids,
                                        const int64_t[::1] prev_offsets) except -1:
    _apart(kernel, name, o, no, "params", _d2(params), _d2n(params), False)
    _apart(kernel, name, o, no, "prev_ids", _i1(prev_ids), _i1n(prev_ids), False)
    _apart(kernel, name, o, no, "prev_offsets", _i1(prev_offsets), _i1n(prev_offsets), False)
    return 0


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
    cdef int level = fd_get_level()
    return LEVELS[level] if level >= 0 else LEVELS[0]


MAX_THREADS = FD_MAX_THREADS


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_num_threads(n):
    """Threads every parallel kernel may use (the caller's included): n
    clamped to [1, MAX_THREADS] (1 when built without threads). Returns the
    count in use. More threads than this process may run on is allowed (a
    RuntimeWarning: workers then wait for cores, and a kernel call can take
    many times longer)."""
    n = int(n)
    got = fd_set_num_threads(max(-1, min(n, FD_MAX_THREADS)))
    cores = _cores()
    if n > cores and got > 1:
        warnings.warn(f"set_num_threads({n}): {got} threads on {cores} cores; workers wait for cores, so "
                      f"kernel calls can be many times slower (use at most {cores})", RuntimeWarning, stacklevel=3)
    return got


def get_num_threads():
    return fd_threads()


def pool_worker_jobs():
    """Jobs the pool's workers have taken since the process started: a call
    that runs on nt threads adds nt - 1 (tests check that it wakes no more)."""
    return fd_pool_worker_jobs()


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

def softmax_rows(float[:, ::1] out not None, const float[:, ::1] x not None, bint log):
    """out, x: [rows, n] float32"""
    if not (out.shape[0] == x.shape[0] and out.shape[1] == x.shape[1]):
        raise ValueError(f"softmax_rows: out has shape {_dims(out.shape, 2)}, x {_dims(x.shape, 2)}")
    _apart("softmax_rows", "out", _f2(out), _f2n(out), "x", _f2(x), _f2n(x), True)
    with nogil:
        fd_softmax_f32(&out[0, 0] if out.shape[0] * out.shape[1] else NULL,
                       &x[0, 0] if x.shape[0] * x.shape[1] else NULL,
                       x.shape[0], x.shape[1], log)


def exp_f32(float[::1] out not None, const float[::1] x not None):
    """out, x: [n] float32. The kernels' exp, for accuracy tests."""
    if not (out.shape[0] == x.shape[0]):
        raise ValueError(f"exp_f32: out has {out.shape[0]} entries, x {x.shape[0]}")
    _apart("exp_f32", "out", _f1(out), _f1n(out), "x", _f1(x), _f1n(x), True)
    if x.shape[0]:
        with nogil:
            fd_exp_f32(&out[0], &x[0], x.shape[0])


# ---------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------
# params: [rows, len(SAMPLE_PARAM_FIELDS)] float64, one fd_sample_params per
# row, columns in SAMPLE_PARAM_FIELDS' order; prev_ids [n_prev] / prev_offsets [rows + 1]
# int64, or None (nothing seen). Each returns the C kernel's count of bad
# rows (-1: out of memory).

cdef tuple _sample_param_fields():
    """fd_sample_params' field names in memory order, read from fastdecode.h."""
    cdef const char *name
    cdef size_t offset
    cdef list fields = [None] * FD_SAMPLE_N_PARAMS
    cdef int i = 0
    while fd_sample_param_field(i, &name, &offset):
        if offset % sizeof(double) or fields[offset // sizeof(double)] is not None:
            raise ImportError(f"fd_sample_params: field {name.decode()} at byte {offset} is not a double column")
        fields[offset // sizeof(double)] = name.decode()
        i += 1
    return tuple(fields)


SAMPLE_PARAM_FIELDS = _sample_param_fields()  # the columns of every params array, in order


cdef int _rows_and_params(str kernel, const float[:, ::1] x, const double[:, ::1] params) except -1:
    """x: [rows, n >= 1]; params: [rows, FD_SAMPLE_N_PARAMS], one fd_sample_params per row."""
    if not (x.shape[1] >= 1 or x.shape[0] == 0):
        raise ValueError(f"{kernel}: x needs at least one column")
    if not (params.shape[0] == x.shape[0] and params.shape[1] == FD_SAMPLE_N_PARAMS):
        raise ValueError(f"{kernel}: params has shape {_dims(params.shape, 2)}, needs ({x.shape[0]}, "
                         f"{FD_SAMPLE_N_PARAMS}): columns {SAMPLE_PARAM_FIELDS}")
    return 0


cdef inline const int64_t *_ptr_or_null(const int64_t[::1] a) noexcept:
    return &a[0] if a is not None and a.shape[0] else NULL


cdef struct SeenTokens:
    const int64_t *ids
    int64_t n
    const int64_t *offsets


cdef SeenTokens _seen(str kernel, int64_t rows, const int64_t[::1] ids, const int64_t[::1] offsets) except *:
    """ids [n_prev] and offsets [rows + 1], or None (nothing seen). The
    values are not checked here: C skips ids outside [0, n) and clamps offsets."""
    cdef SeenTokens s
    if not (offsets is None or offsets.shape[0] == rows + 1):
        raise ValueError(f"{kernel}: prev_offsets needs {rows + 1} entries, got {offsets.shape[0]}")
    s.ids = _ptr_or_null(ids)
    s.n = ids.shape[0] if ids is not None else 0
    s.offsets = _ptr_or_null(offsets)
    return s


def sample_rows(int64_t[::1] ids not None, const float[:, ::1] x not None, const double[:, ::1] params not None,
                const int64_t[::1] prev_ids, const int64_t[::1] prev_offsets):
    """ids: [rows]; x: [rows, n] float32 (n >= 1)"""
    _rows_and_params("sample_rows", x, params)
    if not (ids.shape[0] == x.shape[0]):
        raise ValueError(f"sample_rows: ids has {ids.shape[0]} entries, x {x.shape[0]} rows")
    _apart("sample_rows", "ids", _i1(ids), _i1n(ids), "x", _f2(x), _f2n(x), False)
    _out_apart_from_sampler_inputs("sample_rows", "ids", _i1(ids), _i1n(ids), params, prev_ids, prev_offsets)
    cdef SeenTokens seen = _seen("sample_rows", x.shape[0], prev_ids, prev_offsets)
    cdef int64_t bad
    if x.shape[0] == 0:
        return 0
    with nogil:
        bad = fd_sample_f32(&ids[0], &x[0, 0], x.shape[0], x.shape[1],
                            <const fd_sample_params *>&params[0, 0], seen.ids, seen.n, seen.offsets)
    return bad


def process_rows(float[:, ::1] out not None, int64_t[::1] status not None, const float[:, ::1] x not None,
                 const double[:, ::1] params not None, const int64_t[::1] prev_ids, const int64_t[::1] prev_offsets,
                 bint probs):
    """out, x: [rows, n] float32 (n >= 1); status: [rows]"""
    _rows_and_params("process_rows", x, params)
    if not (out.shape[0] == x.shape[0] and out.shape[1] == x.shape[1] and status.shape[0] == x.shape[0]):
        raise ValueError(f"process_rows: out has shape {_dims(out.shape, 2)}, status "
                         f"{status.shape[0]} entries, x shape {_dims(x.shape, 2)}")
    _apart("process_rows", "out", _f2(out), _f2n(out), "x", _f2(x), _f2n(x), True)
    _apart("process_rows", "status", _i1(status), _i1n(status), "x", _f2(x), _f2n(x), False)
    _apart("process_rows", "status", _i1(status), _i1n(status), "out", _f2(out), _f2n(out), False)
    _out_apart_from_sampler_inputs("process_rows", "out", _f2(out), _f2n(out), params, prev_ids, prev_offsets)
    _out_apart_from_sampler_inputs("process_rows", "status", _i1(status), _i1n(status), params, prev_ids,
                                   prev_offsets)
    cdef SeenTokens seen = _seen("process_rows", x.shape[0], prev_ids, prev_offsets)
    cdef int64_t bad
    if x.shape[0] == 0:
        return 0
    with nogil:
        bad = fd_process_logits_f32(&out[0, 0], &status[0], &x[0, 0], x.shape[0], x.shape[1],
                                    <const fd_sample_params *>&params[0, 0], seen.ids, seen.n, seen.offsets,
                                    probs)
    return bad


def argmax_rows(int64_t[::1] ids not None, const float[:, ::1] x not None):
    """ids: [rows]; x: [rows, n] float32 (n >= 1)"""
    cdef int64_t bad
    if not (x.shape[1] >= 1 or x.shape[0] == 0):
        raise ValueError("argmax_rows: x needs at least one column")
    if not (ids.shape[0] == x.shape[0]):
        raise ValueError(f"argmax_rows: ids has {ids.shape[0]} entries, x {x.shape[0]} rows")
    _apart("argmax_rows", "ids", _i1(ids), _i1n(ids), "x", _f2(x), _f2n(x), False)
    if x.shape[0] == 0:
        return 0
    with nogil:
        bad = fd_argmax_f32(&ids[0], &x[0, 0], x.shape[0], x.shape[1])
    return bad


def repetition_penalty_rows(float[:, ::1] out not None, const float[:, ::1] x not None,
                            const double[::1] penalty not None, const int64_t[::1] prev_ids,
                            const int64_t[::1] prev_offsets not None):
    """out, x: [rows, n] float32 (out may be x); penalty: [rows]"""
    if not (out.shape[0] == x.shape[0] and out.shape[1] == x.shape[1] and penalty.shape[0] == x.shape[0]):
        raise ValueError(f"repetition_penalty_rows: out has shape {_dims(out.shape, 2)}, penalty "
                         f"{penalty.shape[0]} entries, x shape {_dims(x.shape, 2)}")
    _apart("repetition_penalty_rows", "out", _f2(out), _f2n(out), "x", _f2(x), _f2n(x), True)
    _apart("repetition_penalty_rows", "out", _f2(out), _f2n(out), "penalty", &penalty[0] if penalty.shape[0] else NULL,
           penalty.shape[0] * sizeof(double), False)
    _apart("repetition_penalty_rows", "out", _f2(out), _f2n(out), "prev_ids", _i1(prev_ids), _i1n(prev_ids), False)
    _apart("repetition_penalty_rows", "out", _f2(out), _f2n(out), "prev_offsets", _i1(prev_offsets),
           _i1n(prev_offsets), False)
    cdef SeenTokens seen = _seen("repetition_penalty_rows", x.shape[0], prev_ids, prev_offsets)
    cdef int64_t bad
    if x.shape[0] * x.shape[1] == 0:
        return 0
    with nogil:
        bad = fd_repetition_penalty_f32(&out[0, 0], &x[0, 0], x.shape[0], x.shape[1], &penalty[0],
                                        seen.ids, seen.n, seen.offsets)
    return bad


# ---------------------------------------------------------------------------
# Attention
# ---------------------------------------------------------------------------

def attention_f32(float[:, :, :, ::1] out not None, const float[:, :, :, ::1] q not None,
                  const float[:, :, :, ::1] k not None, const float[:, :, :, ::1] v not None, bint causal,
                  float scale, const int64_t[::1] lengths not None):
    """out, q: [B, Hq, Tq, D]; k, v: [B, Hkv, Tk, D]; lengths: [B] int64."""
    cdef int rc
    cdef int i
    for i in range(4):
        if not (out.shape[i] == q.shape[i] and k.shape[i] == v.shape[i]):
            raise ValueError(f"attention_f32: out {_dims(out.shape, 4)} must match q {_dims(q.shape, 4)}, "
                             f"v {_dims(v.shape, 4)} must match k {_dims(k.shape, 4)}")
    if not (k.shape[0] == q.shape[0] and k.shape[3] == q.shape[3] and lengths.shape[0] == q.shape[0]):
        raise ValueError(f"attention_f32: q {_dims(q.shape, 4)}, k {_dims(k.shape, 4)} and lengths "
                         f"[{lengths.shape[0]}] disagree on B or D")
    cdef size_t qn = q.size * sizeof(float), kn = k.size * sizeof(float)
    cdef const void *o = &out[0, 0, 0, 0] if q.size else NULL
    if q.size and k.size:
        _apart("attention_f32", "out", o, qn, "q", &q[0, 0, 0, 0], qn, True)
        _apart("attention_f32", "out", o, qn, "k", &k[0, 0, 0, 0], kn, False)
        _apart("attention_f32", "out", o, qn, "v", &v[0, 0, 0, 0], kn, False)
        _apart("attention_f32", "out", o, qn, "lengths", _i1(lengths), _i1n(lengths), False)
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


def read_sum_f32(const float[::1] x not None):
    """sum(x) read by every thread: the read-bandwidth probe."""
    cdef double s = 0.0
    if x.shape[0]:
        with nogil:
            s = fd_read_sum_f32(&x[0], x.shape[0])
    return s


# ---------------------------------------------------------------------------
# Linear (decode-step projections)
# ---------------------------------------------------------------------------

def linear_f32(float[:, ::1] out not None, const float[:, ::1] x not None, const float[:, ::1] w not None,
               const float[::1] bias):
    """out: [rows, n_out] = x [rows, n_in] @ w[n_out, n_in].T + bias [n_out] (or None)."""
    if not (out.shape[0] == x.shape[0] and out.shape[1] == w.shape[0] and x.shape[1] == w.shape[1] and
             (bias is None or bias.shape[0] == w.shape[0])):
        raise ValueError(f"linear_f32: out {_dims(out.shape, 2)}, x {_dims(x.shape, 2)}, "
                         f"w {_dims(w.shape, 2)} and bias {'None' if bias is None else bias.shape[0]} disagree")
    _out_apart_from_weights("linear_f32", out, x, False, _f2(w), _f2n(w), "bias", bias)
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

def norm_rows(float[:, ::1] out not None, const float[:, ::1] x not None, const float[::1] w not None,
              const float[::1] b, double eps, bint rms):
    """out: [rows, n] = LayerNorm (rms False) or RMSNorm of x [rows, n], weight w [n], bias b [n] or None."""
    if not (out.shape[0] == x.shape[0] and out.shape[1] == x.shape[1] and w.shape[0] == x.shape[1] and
             (b is None or b.shape[0] == x.shape[1])):
        raise ValueError(f"norm_rows: out {_dims(out.shape, 2)}, x {_dims(x.shape, 2)}, w [{w.shape[0]}] and b "
                         f"{'None' if b is None else b.shape[0]} disagree")
    _out_apart_from_weights("norm_rows", out, x, True, _f1(w), _f1n(w), "b", b)
    if x.shape[0] * x.shape[1] == 0:
        return
    with nogil:
        fd_norm_f32(&out[0, 0], &x[0, 0], &w[0], &b[0] if b is not None else NULL, x.shape[0], x.shape[1],
                    <float>eps, rms)


# ---------------------------------------------------------------------------
# Weights in GGUF's block formats (csrc/quant.c): their wrappers in _quant.pxi
# ---------------------------------------------------------------------------

include "_quant.pxi"


# ---------------------------------------------------------------------------
# The compiled decode step (csrc/model.c): its wrappers in _model_step.pxi
# ---------------------------------------------------------------------------

include "_model_step.pxi"
