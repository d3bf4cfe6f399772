# The compiled decode step (csrc/model.c): wrappers included at the end of
# _native.pyx (they use its cimports and _quant_row_bytes).
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
                              const int64_t *start, float *scratch, int64_t scratch_floats,
                              const fd_sample_params *params,
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


cdef fd_matrix _matrix(object a, int64_t rows, int64_t cols, str name, bint split16=False) except *:
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
    blocks, m.format = a.kernel_view()  # an embedding table's rows are looked up in either layout
    if m.format >= 6 and name == "up" and split16 and rows % 32:  # gate/up partners split on whole groups
        raise ValueError(f"CompiledModel: a gated up projection in the 16-row interleaved layout needs a "
                         f"multiple of 32 rows; got {rows}")
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
            self.layers[i].up = _matrix(L["up"], up, d, "up", self.m.gated)
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

    @property
    def floats(self):
        """Floats of scratch held."""
        return self.scratch.shape[0]

    def __init__(self, CompiledModel model not None, float[:, :, :, :, ::1] k not None,
                 float[:, :, :, :, ::1] v not None, int64_t[::1] lengths not None, float[::1] scratch not None,
                 int64_t rows):
        cdef int i, j
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
        # what the step writes (k, v, lengths, scratch) shares no byte with another of them
        cdef size_t kv_bytes = k.shape[0] * k.shape[1] * k.shape[2] * k.shape[3] * k.shape[4] * sizeof(float)
        cdef list held = [("k", <size_t>&k[0, 0, 0, 0, 0], kv_bytes), ("v", <size_t>&v[0, 0, 0, 0, 0], kv_bytes),
                          ("lengths", <size_t>&lengths[0], lengths.shape[0] * sizeof(int64_t)),
                          ("scratch", <size_t>&scratch[0], scratch.shape[0] * sizeof(float))]
        for i in range(4):
            for j in range(i + 1, 4):
                _apart("StepState", held[i][0], <const void *><size_t>held[i][1], held[i][2], held[j][0],
                       <const void *><size_t>held[j][1], held[j][2], False)
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
        self._outputs_apart(logits, ids, tokens, counts, params, prev_ids, prev_offsets)
        with nogil:
            bad = fd_model_step_f32(lp, idp, m, &tokens[0, 0], &counts[0], B, T, &self.k[0, 0, 0, 0, 0],
                                    &self.v[0, 0, 0, 0, 0], max_len, &self.lengths[0], &self.scratch[0],
                                    self.scratch.shape[0], pp,
                                    pids, n_prev, poff)
        if bad < 0:
            raise MemoryError("StepState.step: no memory for the step's scratch")
        for r in range(B):
            self.lengths[r] += counts[r]
        return bad

    cdef int _outputs_apart(self, float[:, ::1] logits, int64_t[::1] ids, const int64_t[:, ::1] tokens,
                            const int64_t[::1] counts, const double[:, ::1] params, const int64_t[::1] prev_ids,
                            const int64_t[::1] prev_offsets) except -1:
        """Everything the step writes (logits, ids, the cache, lengths,
        scratch) shares no byte with what it reads or with each other."""
        cdef size_t kv_bytes = self.k.shape[0] * self.k.shape[1] * self.k.shape[2] * self.k.shape[3] * \
            self.k.shape[4] * sizeof(float)
        cdef list written = [("logits", <size_t>_f2(logits), _f2n(logits)),
                             ("ids", <size_t>_i1(ids), _i1n(ids)),
                             ("k", <size_t>&self.k[0, 0, 0, 0, 0], kv_bytes),
                             ("v", <size_t>&self.v[0, 0, 0, 0, 0], kv_bytes),
                             ("lengths", <size_t>_i1(self.lengths), _i1n(self.lengths)),
                             ("scratch", <size_t>_f1(self.scratch), _f1n(self.scratch))]
        cdef list read = [("tokens", <size_t>&tokens[0, 0], tokens.shape[0] * tokens.shape[1] * sizeof(int64_t)),
                          ("counts", <size_t>_i1(counts), _i1n(counts)),
                          ("params", <size_t>_d2(params), _d2n(params)),
                          ("prev_ids", <size_t>_i1(prev_ids), _i1n(prev_ids)),
                          ("prev_offsets", <size_t>_i1(prev_offsets), _i1n(prev_offsets))]
        cdef int a, b
        for a in range(2):  # the cache, lengths and scratch were checked apart when the state was made
            for b in range(a + 1, len(written)):
                _apart("StepState.step", written[a][0], <const void *><size_t>written[a][1], written[a][2],
                       written[b][0], <const void *><size_t>written[b][1], written[b][2], False)
        for a in range(len(written)):
            for b in range(len(read)):
                _apart("StepState.step", written[a][0], <const void *><size_t>written[a][1], written[a][2],
                       read[b][0], <const void *><size_t>read[b][1], read[b][2], False)
        return 0
