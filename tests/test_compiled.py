"""The compiled decode step (csrc/model.c via fastdecode.model.compiled)
against the NumPy forward (fastdecode.model.transformer, NumPy backend).

Tolerance. Both compute in float32 (unit roundoff u = 2^-24 ~ 6e-8) with
different summation orders (C: 4 or 2 vector chains per dot product; NumPy:
BLAS), different exp/tanh (the kernels' vf_exp, <= 1.7 ulp, against NumPy's
tanh and libm), and a different softmax (online, one pass, vs max-subtract
then sum). A dot product of n terms in either order is within ~sqrt(n) u
of the exact one relative to sum |w_i x_i| (random-walk rounding; n u in
the worst case); the tiny models here have n <= 192, so each projection
carries ~14 u ~ 1e-6 of its scale, each norm rescales that by its gain
(~1), and 2 layers of ~8 roundings each, plus the head, add up to well
under 100 * 14 u ~ 1e-4 of the logits' scale. We assert
|diff| <= 1e-4 * max(1, max |logit|) at every step, prefill and 64
decode steps: 20-50x above the differences measured (2e-6 .. 6e-6 on
logits of size ~4), and far below what a wrong position, a missed bias,
a wrong head or a stale cache entry gives (O(1)).

Greedy ids: the checkpoints' weights are spread so that no step has a
near-tie (tests/model_checkpoints.py), so at float32 the ids must be
identical, not merely close.
"""
import os
import sys

import numpy as np
import pytest

import fastdecode as fd
from conftest import requires_c
from fastdecode.model import compiled as compiled_mod
from fastdecode.model.transformer import ContextOverflowError, KVCache, forward

sys.path.insert(0, os.path.dirname(__file__))
import model_checkpoints as mc  # noqa: E402
from test_reliability import test_generate_does_not_leak as generate_does_not_leak  # noqa: E402
from test_reliability import _generate_from_8_threads as generate_from_8_threads  # noqa: E402

pytestmark = requires_c
KINDS = list(mc.KINDS)  # gpt2, llama (GQA tied; llama3 scaling, 1 KV head, untied), qwen2, mistral
TOL = 1e-4


def load(kind):
    return fd.load(mc.checkpoint(kind))


def close(got, want, what):
    scale = max(1.0, float(np.abs(want).max()))
    err = float(np.abs(got - want).max())
    assert err <= TOL * scale, f"{what}: max |diff| {err:.3g} > {TOL * scale:.3g}"


@pytest.fixture(params=[1, 3], ids=["1thread", "3threads"])
def threads(request):
    before = fd.get_num_threads()
    fd.set_num_threads(request.param)
    yield request.param
    fd.set_num_threads(before)


def left_pad(prompts):  # -> tokens [B, T], counts [B]
    t = max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), t), np.int64)
    for i, p in enumerate(prompts):
        tokens[i, t - len(p):] = p
    return tokens, np.array([len(p) for p in prompts], np.int64)


def decode_both(model, prompts, steps, chunk=None, monkeypatch=None):
    """Greedy decoding, each side following its own argmax: (reference logits, compiled logits, ids, ids)."""
    if chunk is not None:
        monkeypatch.setattr(compiled_mod, "PREFILL_CHUNK", chunk)
    tokens, counts = left_pad(prompts)
    need = int(counts.max()) + steps
    with fd.use_backend("numpy"):
        cache = KVCache(model.config, len(prompts), need)
        ref = [forward(model.weights, model.config, tokens, cache, counts)]
        ref_ids = [ref[-1].argmax(-1)]
        for _ in range(steps):
            ref.append(forward(model.weights, model.config, ref_ids[-1][:, None], cache))
            ref_ids.append(ref[-1].argmax(-1))
    c = model.compiled()
    cache = KVCache(model.config, len(prompts), need)
    got = [c.forward(tokens, cache, counts)]
    got_ids = [got[-1].argmax(-1)]
    for _ in range(steps):
        got.append(c.forward(got_ids[-1][:, None], cache))
        got_ids.append(got[-1].argmax(-1))
    np.testing.assert_array_equal(cache.lengths, counts + steps)
    return ref, got, np.array(ref_ids), np.array(got_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_prefill_and_64_decode_steps_match_numpy_forward(kind, threads):
    model = load(kind)
    ref, got, ref_ids, got_ids = decode_both(model, [mc.prompt_ids(21)], 64)
    for i, (a, b) in enumerate(zip(got, ref)):
        close(a, b, f"{kind} step {i}")
    np.testing.assert_array_equal(got_ids, ref_ids)


@pytest.mark.parametrize("kind", KINDS)
def test_ragged_batch_matches_numpy_forward(kind, threads, monkeypatch):
    """Rows of 5, 23 and 12 tokens, prefilled in chunks of 8 columns (so a
    row may have no real token in a chunk), then decoded side by side at
    different positions."""
    model = load(kind)
    prompts = [mc.prompt_ids(5, 1), mc.prompt_ids(23, 2), mc.prompt_ids(12, 3)]
    ref, got, ref_ids, got_ids = decode_both(model, prompts, 20, chunk=8, monkeypatch=monkeypatch)
    for i, (a, b) in enumerate(zip(got, ref)):
        close(a, b, f"{kind} step {i}")
    np.testing.assert_array_equal(got_ids, ref_ids)


def test_each_row_of_a_batch_is_the_row_alone():
    model = load("llama-gqa-tied")
    c = model.compiled()
    prompts = [mc.prompt_ids(4, 5), mc.prompt_ids(9, 6)]
    tokens, counts = left_pad(prompts)
    batch = c.forward(tokens, KVCache(model.config, 2, 16), counts)
    for row, p in enumerate(prompts):
        alone = c.forward(np.array([p]), KVCache(model.config, 1, 16))
        close(batch[row], alone[0], f"row {row}")


def test_long_prompt_in_chunks_splits_attention(monkeypatch):
    """600 positions with 2 threads: decode attention is cut into key chunks
    and merged (fd_attention_merge_f32); the prompt goes in 5 chunks."""
    model = fd.load(_long_checkpoint())
    before = fd.get_num_threads()
    fd.set_num_threads(2)
    try:
        ref, got, ref_ids, got_ids = decode_both(model, [mc.prompt_ids(600, 9)], 4)
    finally:
        fd.set_num_threads(before)
    for i, (a, b) in enumerate(zip(got, ref)):
        close(a, b, f"step {i}")
    np.testing.assert_array_equal(got_ids, ref_ids)


_LONG = {}


def _long_checkpoint():
    if "dir" not in _LONG:
        directory = os.path.join(mc._ROOT, "llama-long")
        mc.build("llama-gqa-tied", directory, max_position_embeddings=1024)
        _LONG["dir"] = directory
    return _LONG["dir"]


# ---------------------------------------------------------------------------
# Weight formats (fastdecode.formats): the same blocks, the same row kernels
# ---------------------------------------------------------------------------

# Held to the per-kernel path on the C backend (the same row kernels, the
# same int8 activations): float x (bf16, f16) as float32 above. With int8
# activations (llama.cpp's way, the block formats) a float difference of an
# ulp upstream (an activation's exp, the online softmax) can move one x value
# across a rounding boundary: one int8 step, amax/127 of its block, times
# the weights it meets, which measured up to ~1% of the logits' scale on the
# packaged model (q4_K; 0.1% q4_0/q8_0, mostly 0). Bound: 3%, and greedy ids
# equal except where the reference's top two are within that bound.
FORMAT_TOL = {"bf16": TOL, "f16": TOL, "q8_0": 3e-2, "q4_0": 3e-2, "q4_K": 3e-2, "q6_K": 3e-2}


@pytest.mark.parametrize("weights", list(FORMAT_TOL))
def test_block_formats_match_the_per_kernel_path(weights):
    from fastdecode.model.compiled import use_compiled

    model = fd.load("default", weights=weights)
    assert not isinstance(model.weights.layers[0].qkv, np.ndarray)  # the step reads blocks, not floats
    c = model.compiled()
    ca, cb = KVCache(model.config, 1, 64), KVCache(model.config, 1, 64)
    tokens = np.array([mc.prompt_ids(20, 4)]) % model.config.vocab_size
    with fd.use_backend("c"), use_compiled(False):
        for step in range(17):
            want = forward(model.weights, model.config, tokens, ca)
            got = c.forward(tokens, cb)
            scale = max(1.0, float(np.abs(want).max()))
            assert np.abs(got - want).max() <= FORMAT_TOL[weights] * scale, f"{weights} step {step}"
            top2 = np.sort(want[0])[-2:]
            if top2[1] - top2[0] > 2 * FORMAT_TOL[weights] * scale:
                assert got.argmax() == want.argmax(), f"{weights} step {step}"
            tokens = want.argmax(-1)[:, None]


# ---------------------------------------------------------------------------
# The token choice in the same call
# ---------------------------------------------------------------------------

SETTINGS = [
    dict(do_sample=False),
    dict(do_sample=False, repetition_penalty=1.3),
    dict(temperature=0.8, top_k=20, top_p=0.9),
    dict(temperature=1.2, min_p=0.05, repetition_penalty=1.2),
    dict(temperature=[0.0, 0.7, 1.5], top_p=[1.0, 0.5, 0.95]),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=range(len(SETTINGS)))
def test_fused_choice_equals_sample_on_the_step_logits(settings, threads):
    model = load("qwen2")
    c = model.compiled()
    prompts = [mc.prompt_ids(6, 1), mc.prompt_ids(3, 2), mc.prompt_ids(8, 3)]
    tokens, counts = left_pad(prompts)
    seen = [list(p) for p in prompts]
    cache_a, cache_b = KVCache(model.config, 3, 40), KVCache(model.config, 3, 40)
    rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
    step_a, step_b = tokens, tokens
    for i in range(12):
        kw = dict(settings, prev_tokens=seen) if "repetition_penalty" in settings else dict(settings)
        logits = np.empty((3, model.config.vocab_size), np.float32)
        ids = c.next_tokens(step_a, cache_a, rng=rng_a, counts=counts if i == 0 else None, out=logits, **kw)
        plain = c.forward(step_b, cache_b, counts if i == 0 else None)
        np.testing.assert_array_equal(logits, plain)  # the same step, with or without the choice
        if settings.get("do_sample") is False and "repetition_penalty" not in settings:
            want = fd.argmax(plain)
        else:
            want = fd.sample(plain, rng=rng_b, **kw)
        np.testing.assert_array_equal(ids, want, err_msg=f"step {i}")
        for row, t in enumerate(ids):
            seen[row].append(int(t))
        step_a = step_b = ids[:, None]


def test_generate_uses_the_compiled_step_and_matches_numpy_backend():
    model = load("gpt2")
    prompts = [mc.prompt_ids(7, 1), mc.prompt_ids(15, 2)]
    with fd.use_backend("numpy"):
        want = model.generate(prompts, max_new_tokens=30, ignore_eos=True)
    with fd.use_backend("c"):
        got = model.generate(prompts, max_new_tokens=30, ignore_eos=True)
        sampled = model.generate(prompts, max_new_tokens=30, ignore_eos=True, do_sample=True, top_p=0.9, rng=3)
        streamed = [t.id for t in model.stream(prompts[0], max_new_tokens=30, ignore_eos=True)]
    assert hasattr(model, "_compiled")  # built by generate on the C backend
    assert [r.token_ids for r in got] == [r.token_ids for r in want]
    assert streamed == want[0].token_ids
    with fd.use_backend("numpy"):
        sampled_ref = model.generate(prompts, max_new_tokens=30, ignore_eos=True, do_sample=True, top_p=0.9, rng=3)
    assert [r.token_ids for r in sampled] == [r.token_ids for r in sampled_ref]


def test_logits_processors_still_run_in_python():
    model = load("llama3-untied")
    banned = model.generate(mc.prompt_ids(5), max_new_tokens=10, ignore_eos=True).token_ids[0]

    def ban(history, logits):
        assert history.shape[0] == 1 and logits.shape == (1, model.config.vocab_size)
        logits = logits.copy()
        logits[:, banned] = -np.inf
        return logits

    with fd.use_backend("c"):
        out = model.generate(mc.prompt_ids(5), max_new_tokens=10, ignore_eos=True, logits_processors=[ban])
    assert banned not in out.token_ids


# ---------------------------------------------------------------------------
# Threads, memory, bad input
# ---------------------------------------------------------------------------

def test_eight_threads_sharing_one_model_get_their_serial_results():
    """test_reliability's check (8 threads, one model, generate) on the C
    backend, where generate runs the compiled step, with a pool of 2: the
    threads that find it busy run their steps alone."""
    assert fd.get_backend() == "c"  # the default when the extension is built: every thread runs the C step
    before = fd.get_num_threads()
    fd.set_num_threads(2)
    try:
        generate_from_8_threads(load("llama-gqa-tied"))
    finally:
        fd.set_num_threads(before)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="RSS is read from /proc")
def test_rss_does_not_grow_over_1000_generate_calls():
    """test_reliability's 1,000 generate() calls, through the compiled step."""
    assert fd.get_backend() == "c"
    generate_does_not_leak()


def test_bad_input_raises_before_c():
    model = load("gpt2")
    c = model.compiled()
    cache = KVCache(model.config, 1, 8)
    with pytest.raises(ValueError, match="token ids"):
        c.forward(np.array([[model.config.vocab_size]]), cache)
    with pytest.raises(TypeError, match="tokens"):
        c.forward(np.array([[0.5]]), cache)
    with pytest.raises(ValueError, match="rows"):
        c.forward(np.array([[1], [2]]), cache)
    with pytest.raises(ContextOverflowError):
        c.forward(np.zeros((1, 9), np.int64), cache)
    with pytest.raises(ValueError, match="out"):
        c.forward(np.array([[1]]), cache, out=np.empty((1, 3), np.float32))
    assert cache.lengths[0] == 0  # nothing ran


def test_native_wrapper_checks_every_buffer():
    """A direct caller of _native.StepState cannot make C read or write
    outside what it hands over."""
    from fastdecode import _native

    model = load("llama-gqa-tied")
    nat = model.compiled()._native
    cfg = model.config
    cache = KVCache(cfg, 1, 8)
    need = nat.scratch_floats(1)
    scratch = np.empty(need + 16, np.float32)
    aligned = scratch[(-scratch.ctypes.data % 64) // 4:][:need]
    for bad in [dict(scratch=aligned[:10]), dict(scratch=scratch[1:need + 1] if scratch.ctypes.data % 64 == 0
                                                 else scratch[:need]),
                dict(v=cache.v[:, :, :, :4].copy()), dict(k=np.zeros((1, 1, 1, 8, 4), np.float32)),
                dict(lengths=np.zeros(2, np.int64)), dict(rows=0), dict(v=cache.k)]:  # last: v is k
        kw = dict(dict(k=cache.k, v=cache.v, lengths=cache.lengths, scratch=aligned, rows=1), **bad)
        with pytest.raises(ValueError):
            _native.StepState(nat, kw["k"], kw["v"], kw["lengths"], kw["scratch"], kw["rows"])
    state = _native.StepState(nat, cache.k, cache.v, cache.lengths, aligned, 1)
    logits = np.empty((1, cfg.vocab_size), np.float32)
    ok = dict(logits=logits, ids=None, tokens=np.array([[1]]), counts=np.array([1]), params=None, prev_ids=None,
              prev_offsets=None)
    call = lambda **kw: state.step(*dict(ok, **kw).values())  # noqa: E731
    one = np.empty(1, np.int64)
    bad = [dict(logits=np.empty((1, 3), np.float32)), dict(tokens=np.array([[cfg.vocab_size]])),
           dict(tokens=np.array([[1, 2]]), counts=np.array([2])), dict(counts=np.array([2])),
           dict(tokens=np.array([[1], [2]])), dict(ids=one, params=np.zeros((2, 6))), dict(logits=None, ids=one),
           dict(ids=one, prev_ids=np.array([cfg.vocab_size]), prev_offsets=np.array([0, 1])),
           dict(ids=one, prev_ids=np.array([1]), prev_offsets=np.array([0, 2])),
           # outputs over inputs: ids over the tokens, logits over the count and over the KV cache
           dict(ids=(shared := np.array([[1]])).reshape(1), tokens=shared),
           dict(logits=(row := np.zeros((1, cfg.vocab_size), np.float32)),
                counts=row.reshape(-1)[:2].view(np.int64)[:1]),
           dict(logits=cache.k.reshape(-1)[:cfg.vocab_size].reshape(1, -1))]
    for kw in bad:
        with pytest.raises(ValueError):
            call(**kw)
    assert cache.lengths[0] == 0  # nothing ran
    for _ in range(8):
        call()
    assert cache.lengths[0] == 8
    with pytest.raises(ValueError):  # the cache is full
        call()


# ---------------------------------------------------------------------------
# Sanitizers: the step in C alone (tests/c/model_step.c), every SIMD level
# ---------------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVEL_FLAGS = {"portable": [], "avx2": ["-mavx2", "-mfma", "-mf16c"],
               "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mf16c"]}


def _kernel_files():  # CMakeLists.txt's KERNELS: the files compiled once per level
    import re

    with open(os.path.join(ROOT, "CMakeLists.txt")) as f:
        return re.search(r"set\(KERNELS ([^)]*)\)", f.read()).group(1).split()


@pytest.mark.skipif(not __import__("shutil").which("gcc"), reason="gcc is not installed")
@pytest.mark.skipif(__import__("platform").machine() not in ("x86_64", "AMD64"), reason="the levels are x86's")
@pytest.mark.parametrize("sanitizer", ["thread", "address,undefined"])
def test_step_is_clean_under_sanitizers(sanitizer, tmp_path):
    """ThreadSanitizer, then ASan + UBSan, on 4 threads stepping one model at
    once through a pool of 3, at the CPU's SIMD level (all three built)."""
    import subprocess

    flags = ["-O1", "-g", "-std=gnu11", f"-fsanitize={sanitizer}", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all",
             "-I", os.path.join(ROOT, "csrc"), "-DFD_HAVE_X86_LEVELS=1", "-DFD_HAVE_PTHREADS=1"]
    jobs, objects = [], []
    for level, extra in LEVEL_FLAGS.items():
        for src in _kernel_files():
            obj = str(tmp_path / f"{level}_{os.path.basename(src)}.o")
            objects.append(obj)
            jobs.append(subprocess.Popen(["gcc", *flags, *extra, f"-DFD_LEVEL_{level}=1", "-c", os.path.join(ROOT, src),
                                          "-o", obj], stderr=subprocess.PIPE, text=True))
    errors = [p.communicate()[1] for p in jobs if p.wait() != 0]
    assert not errors, errors[0]
    exe = str(tmp_path / "model_step")
    link = subprocess.run(["gcc", *flags, os.path.join(ROOT, "tests", "c", "model_step.c"),
                           *[os.path.join(ROOT, "csrc", f) for f in ("pool.c", "cpu.c")], *objects, "-lm", "-lpthread",
                           "-o", exe], capture_output=True, text=True)
    if link.returncode and "cannot find" in link.stderr:
        pytest.skip(f"the {sanitizer} sanitizer runtime is not installed: {link.stderr.strip()[:200]}")
    assert link.returncode == 0, link.stderr
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", ASAN_OPTIONS="detect_leaks=0:halt_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    env.pop("LD_PRELOAD", None)  # under tools/sanitize.sh the pytest process preloads ASan, which a TSan binary can't host
    run = subprocess.run([exe], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
