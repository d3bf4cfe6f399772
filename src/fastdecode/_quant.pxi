# Weights in GGUF's block formats (csrc/quant.c): wrappers included by
# _native.pyx (they use its cimports). formats.py validates the weights;
# the checks here keep C inside the buffers it is handed.

cdef extern from "fastdecode.h":
    int64_t fd_quant_row_bytes(int fmt, int64_t n_in) nogil
    int fd_linear_quant(float *out, const float *x, const unsigned char *w, const float *bias, int fmt,
                        int64_t rows, int64_t n_in, int64_t n_out) nogil
    void fd_dequantize_rows(float *out, const unsigned char *w, int fmt, int64_t rows, int64_t n_in) nogil
    void fd_x16_pack(unsigned char *x16, const unsigned char *gguf, int fmt, int64_t n_out, int64_t n_in) nogil
    void fd_x16_unpack(unsigned char *gguf, const unsigned char *x16, int fmt, int64_t n_out, int64_t n_in) nogil
    void fd_x16_rows(unsigned char *gguf, const unsigned char *x16, int fmt, const int64_t *ids, int64_t n,
                     int64_t n_out, int64_t n_in) nogil
    int fd_set_vnni(int on) nogil

# weights per block of FD_FMT_Q8_0 .. FD_FMT_F16, then FD_FMT_Q8_0_X16 .. FD_FMT_Q6_K_X16
QUANT_BLOCKS = (32, 32, 256, 256, 1, 1, 32, 32, 256, 256)
X16_FORMATS = {0: 6, 1: 7, 2: 8, 3: 9}  # GGUF format code -> its 16-row interleaved code (csrc/quant_x16.c)
X16_BLOCK_BYTES = (34, 18, 144, 210)


cdef int64_t _quant_row_bytes(int fmt, int64_t n_in) except -1:
    """Bytes of one row, after checking fmt and that n_in fills whole blocks
    (a partial block would make C read past the row)."""
    if not 0 <= fmt < len(QUANT_BLOCKS):
        raise ValueError(f"unknown format number {fmt}")
    if n_in % QUANT_BLOCKS[fmt]:
        raise ValueError(f"n_in {n_in} is not a multiple of the format's block {QUANT_BLOCKS[fmt]}")
    return fd_quant_row_bytes(fmt, n_in)


def set_vnni(bint on):
    """Use AVX-512 VNNI in the avx512 level's int8 kernels (where the CPU has it); returns the setting in use."""
    return bool(fd_set_vnni(on))


def x16_convert(unsigned char[:, ::1] out, const unsigned char[:, ::1] src, int fmt, bint pack):
    """out = src in the other layout (pack: GGUF rows -> x16 groups, else back); both
    [n_out, row bytes] of block format fmt (0-3: q8_0, q4_0, q4_K, q6_K); the last n_out % 16 rows stay."""
    if fmt not in X16_FORMATS or out.shape[0] != src.shape[0] or out.shape[1] != src.shape[1]:
        raise ValueError("x16_convert: blocks of q8_0, q4_0, q4_K or q6_K, of one shape")
    cdef int64_t n_out = src.shape[0], n_in = src.shape[1] // X16_BLOCK_BYTES[fmt] * QUANT_BLOCKS[fmt]
    if src.shape[1] != _quant_row_bytes(fmt, n_in):
        raise ValueError("x16_convert: rows of whole blocks")
    cdef int code = X16_FORMATS[fmt]
    if n_out * n_in == 0:
        return
    with nogil:
        if pack:
            fd_x16_pack(&out[0, 0], &src[0, 0], code, n_out, n_in)
        else:
            fd_x16_unpack(&out[0, 0], &src[0, 0], code, n_out, n_in)


def x16_rows(unsigned char[:, ::1] out, const unsigned char[:, ::1] src, int fmt, const int64_t[::1] ids):
    """out [n, row bytes] = rows ids (each in [0, n_out)) of src, x16 groups
    [n_out, row bytes] of block format fmt (0-3), in GGUF's layout."""
    if fmt not in X16_FORMATS or out.shape[1] != src.shape[1] or out.shape[0] != ids.shape[0]:
        raise ValueError("x16_rows: blocks of q8_0, q4_0, q4_K or q6_K, one row of out per id")
    cdef int64_t n_out = src.shape[0], n_in = src.shape[1] // X16_BLOCK_BYTES[fmt] * QUANT_BLOCKS[fmt], i
    if src.shape[1] != _quant_row_bytes(fmt, n_in):
        raise ValueError("x16_rows: rows of whole blocks")
    for i in range(ids.shape[0]):
        if not 0 <= ids[i] < n_out:
            raise ValueError(f"x16_rows: ids[{i}] = {ids[i]} is not in [0, {n_out})")
    if ids.shape[0] * n_in == 0:
        return
    cdef int code = X16_FORMATS[fmt]
    with nogil:
        fd_x16_rows(&out[0, 0], &src[0, 0], code, &ids[0], ids.shape[0], n_out, n_in)


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
