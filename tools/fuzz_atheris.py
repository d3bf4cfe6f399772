"""Coverage-guided fuzzing of the C backend's entry points with atheris.

Each input is decoded into a kernel choice, array shapes, dtypes, values and
parameters, and fed to the public function (which validates, then runs C).
Any exception other than TypeError/ValueError, any wrong result against the
NumPy reference, and any crash of the interpreter is a finding.

    python tools/fuzz_atheris.py -max_total_time=60      # libFuzzer flags
    python tools/fuzz_atheris.py -runs=20000

Prints the number of executions at the end (libFuzzer's "Done N runs").
"""
import itertools
import sys

import atheris

with atheris.instrument_imports():
    import numpy as np

    import fastdecode as fd

DTYPES = [np.float32, np.float32, np.float32, np.float64, np.float16, np.int32, np.complex64, np.bool_]
SPECIAL = [0.0, -np.inf, np.inf, np.nan, 1e30, -1e30, 1e-40, 1.0, -1.0]


def array(fdp, shape):
    dtype = DTYPES[fdp.ConsumeIntInRange(0, len(DTYPES) - 1)]
    n = int(np.prod(shape)) if shape else 1
    vals = np.array(fdp.ConsumeFloatListInRange(min(n, 256), -50.0, 50.0) or [0.0], np.float64)
    for _ in range(fdp.ConsumeIntInRange(0, 3)):
        vals[fdp.ConsumeIntInRange(0, len(vals) - 1)] = SPECIAL[fdp.ConsumeIntInRange(0, len(SPECIAL) - 1)]
    with np.errstate(all="ignore"):
        arr = np.resize(vals, shape).astype(dtype) if n else np.zeros(shape, dtype)
    if fdp.ConsumeBool() and arr.ndim and arr.shape[-1] > 1:
        arr = arr[..., ::2]
    return arr


def shape(fdp, rank):
    return tuple(fdp.ConsumeIntInRange(0, 9) for _ in range(rank))


def run_softmax(fdp):
    x = array(fdp, shape(fdp, fdp.ConsumeIntInRange(0, 4)))
    axis = fdp.ConsumeIntInRange(-5, 5)
    fn = fd.log_softmax if fdp.ConsumeBool() else fd.softmax
    try:
        y = fn(x, axis=axis)
    except (TypeError, ValueError):
        return
    with fd.use_backend("numpy"):
        ref = fn(x, axis=axis)
    assert np.array_equal(np.isnan(y), np.isnan(ref))
    fin = np.isfinite(ref)
    np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-4, atol=1e-5)


def run_attention(fdp):
    b, hkv, g = fdp.ConsumeIntInRange(0, 2), fdp.ConsumeIntInRange(0, 3), fdp.ConsumeIntInRange(1, 3)
    tq, tk, d = fdp.ConsumeIntInRange(0, 5), fdp.ConsumeIntInRange(0, 9), fdp.ConsumeIntInRange(0, 20)
    q = array(fdp, (b, hkv * g + fdp.ConsumeIntInRange(0, 1), tq, d))
    k = array(fdp, (b, hkv, tk, d))
    v = array(fdp, (b, hkv, tk, d))
    lengths = None if fdp.ConsumeBool() else [fdp.ConsumeIntInRange(-1, tk + 1) for _ in range(b)]
    causal = fdp.ConsumeBool()
    try:
        y = fd.attention(q, k, v, causal=causal, lengths=lengths)
    except (TypeError, ValueError):
        return
    if np.isfinite(q).all() and np.isfinite(k).all() and np.isfinite(v).all():
        with fd.use_backend("numpy"):
            ref = fd.attention(q, k, v, causal=causal, lengths=lengths)
        np.testing.assert_allclose(y, ref, rtol=1e-3, atol=1e-4)


def run_sampling(fdp):
    if not hasattr(fd, "sample"):
        return
    rows, vocab = fdp.ConsumeIntInRange(0, 4), fdp.ConsumeIntInRange(0, 300)
    logits = array(fdp, (rows, vocab) if fdp.ConsumeBool() else (vocab,))
    kw = {}
    if fdp.ConsumeBool():
        kw["temperature"] = fdp.ConsumeFloatInRange(-1.0, 3.0)
    if fdp.ConsumeBool():
        kw["top_k"] = fdp.ConsumeIntInRange(-2, vocab + 2)
    if fdp.ConsumeBool():
        kw["top_p"] = fdp.ConsumeFloatInRange(-0.5, 1.5)
    if fdp.ConsumeBool():
        kw["min_p"] = fdp.ConsumeFloatInRange(-0.5, 1.5)
    if fdp.ConsumeBool():
        kw["repetition_penalty"] = fdp.ConsumeFloatInRange(-1.0, 3.0)
        kw["prev_tokens"] = np.array([[fdp.ConsumeIntInRange(-2, vocab + 2) for _ in range(3)]
                                      for _ in range(max(rows, 1))])
    seed = fdp.ConsumeIntInRange(0, 2**31)
    try:
        ids = fd.sample(logits, rng=seed, **kw)
    except (TypeError, ValueError):
        return
    with fd.use_backend("numpy"):
        ref = fd.sample(logits, rng=seed, **kw)
    # identical u, identical ids, except where the README allows otherwise
    if not np.array_equal(np.asarray(ids), np.asarray(ref)):
        assert rounding_explains(logits, seed, kw, np.atleast_1d(ids), np.atleast_1d(ref)), (ids, ref, kw)


# The README's sampling contract: both backends pick the same token for the
# same u, except where u lies within about 1e-6 of a CDF boundary (float32
# masses in C, float64 in NumPy); a filter's threshold may likewise fall
# within float32 rounding of a token's mass.
TIE_U = 1e-6
TIE_REL = 1e-6


def rounding_explains(logits, seed, kw, c_ids, numpy_ids):
    """Whether, in every row where the C backend's id differs from NumPy's,
    NumPy's own sampler picks the C id for some u, temperature, top-p and
    min-p within rounding of the given ones."""
    from fastdecode import _sampling_args as sampling_args
    from fastdecode import backend as fd_backend

    x, _, params, sampled, prev_ids, prev_offsets = sampling_args.prepare(
        logits, kw.get("temperature", 1.0), kw.get("top_k"), kw.get("top_p"), kw.get("min_p"),
        kw.get("repetition_penalty"), kw.get("prev_tokens"), None)
    if not sampled:
        return False  # greedy rows draw nothing: no rounding excuse
    rows = x.shape[0]
    gen = np.random.default_rng(seed)  # the u that fd.sample drew
    u, t, top_p, min_p = (sampling_args.SAMPLE_PARAMS.index(f) for f in ("u", "temperature", "top_p", "min_p"))
    params[:, u] = gen.random() if rows == 1 else gen.random(rows)
    with fd.use_backend("numpy"):
        numpy_kernels = fd_backend.active()
    unexplained = set(np.flatnonzero(c_ids != numpy_ids).tolist())
    ids = np.empty(rows, np.int64)
    for du, dt, dp, dm in itertools.product((-1.0, 0.0, 1.0), repeat=4):
        p = params.copy()
        p[:, u] = np.clip(p[:, u] + du * TIE_U, 0.0, np.nextafter(1.0, 0.0))
        p[:, t] *= 1.0 + dt * TIE_REL  # temperature 0 (greedy) stays 0
        p[:, top_p] = np.where(p[:, top_p] < 1.0, np.minimum(p[:, top_p] * (1.0 + dp * TIE_REL), 1.0), 1.0)
        p[:, min_p] *= 1.0 + dm * TIE_REL
        numpy_kernels.sample_rows(ids, x, p, prev_ids, prev_offsets)
        unexplained = {r for r in unexplained if ids[r] != c_ids[r]}
        if not unexplained:
            return True
    return False


def run_linear(fdp):
    rows, n_in, n_out = fdp.ConsumeIntInRange(0, 12), fdp.ConsumeIntInRange(0, 70), fdp.ConsumeIntInRange(0, 40)
    x = array(fdp, (rows, n_in) if fdp.ConsumeBool() else (n_in,))
    w = array(fdp, (n_out, n_in + fdp.ConsumeIntInRange(0, 1)))
    b = array(fdp, (n_out,)) if fdp.ConsumeBool() else None
    try:
        y = fd.linear(x, w, b)
    except (TypeError, ValueError):
        return
    if not (np.isfinite(x).all() and np.isfinite(w).all() and (b is None or np.isfinite(b).all())):
        return
    # Two float32 sums of the same n products in other orders differ by at most
    # ~2 n u sum|x_i w_i| (u = 2^-24; +|b| for the bias add): cancellation makes
    # that large against the result itself, so the bound is on the magnitudes.
    mag = np.abs(x).astype(np.float64) @ np.abs(w).astype(np.float64).T + (0 if b is None else np.abs(b))
    if not (mag < 1e37).all():
        return  # a partial sum may overflow float32 in one order and not the other
    with fd.use_backend("numpy"):
        ref = fd.linear(x, w, b)
    err = np.abs(y.astype(np.float64) - ref)
    bound = 2 * (n_in + 2) * 2.0 ** -24 * mag + 1e-35  # + flushed subnormals
    assert (err <= bound).all(), (float(err.max()), float(bound[err > bound].min()))


TARGETS = [run_softmax, run_attention, run_sampling, run_linear]


def one_input(data: bytes):
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


def main():
    if fd.get_backend() != "c":
        sys.exit("fuzz_atheris: the C backend is not available: " + str(fd.backend_info()["unavailable"]))
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
