"""The compiled decode step: a whole forward pass as one C call (csrc/model.c).

On the C backend, ``model.compiled()`` (built once per model, on first use)
points C at the loaded weights and config; each step runs every layer on
the worker pool with barriers between dependent operations, with the GIL
released, and returns the logits ``[B, V]`` of each row's last position or,
with sampling settings, the chosen ids ``[B]`` (the token choice runs in the
same call, through the same sampler as :func:`fastdecode.sample`: same
settings, same ``u``, same id). :func:`fastdecode.model.transformer.forward`
is the same computation in NumPy and the oracle this step is tested against.

Prefill goes through the same step in chunks of :data:`PREFILL_CHUNK`
tokens per row: a prompt never allocates ``[T, V]`` logits (only the last
chunk computes logits, of each row's last position) nor ``[T, T]`` scores
(attention reads the cache chunk by chunk), and keys and values are written
into the cache in place. Chunks before the last skip the output head.

Threads: the model's weights are read-only and every call brings its own
cache; the step's activations live in a scratch block owned by the cache
(one per cache, grown on demand), so one compiled model serves many threads
at once, each with its own cache.
"""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

from .. import _sampling_args as _args
from ..arrays import empty_aligned
from .config import ModelConfig, rope_frequencies
from .transformer import ContextOverflowError, KVCache
from .weights import Weights

# Tokens per row in one prefill call. Each call streams every weight once
# (register tiles of 6 weight rows, decoded to float32 for 16-bit and q6_K
# weights, meet all of a chunk's tokens), so longer chunks read and decode
# the weights fewer times; the scratch grows by ~(4 d + Q + 3 Hq D + 3 F)
# floats per token (GPT-2 124M: 80 KiB per token, 10 MiB at 128).
# docs/compiled.md has the times.
PREFILL_CHUNK = 128

_ONES = {}


def _ones(b):  # -> [b] int64 ones, read-only, shared
    ones = _ONES.get(b)
    if ones is None:
        ones = np.ones(b, np.int64)
        ones.flags.writeable = False
        ones = _ONES.setdefault(b, ones)
    return ones


_ACTIVATION = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_erf", "relu": "relu",
               "silu": "silu"}
_build_lock = threading.Lock()


def native_model(weights: Weights, config: ModelConfig):
    """The C model (``_native.CompiledModel``) over these weights: no copy."""
    from .. import _native

    gated = config.family == "llama"
    shape = dict(d=config.hidden_size, hq=config.num_heads, hkv=config.num_kv_heads, head_dim=config.head_dim,
                 ffn=config.intermediate_size, vocab=config.vocab_size, max_positions=config.max_positions,
                 gated=gated, rms=weights.final_norm_bias is None, eps=config.norm_eps,
                 activation="silu" if gated else _ACTIVATION[config.activation])
    layers = [dict(attn_norm=L.attn_norm, attn_norm_bias=L.attn_norm_bias, qkv=L.qkv, qkv_bias=L.qkv_bias,
                   out=L.out, out_bias=L.out_bias, mlp_norm=L.mlp_norm, mlp_norm_bias=L.mlp_norm_bias, up=L.up,
                   up_bias=L.up_bias, down=L.down, down_bias=L.down_bias, attn_scale=config.layer_attn_scale(i))
              for i, L in enumerate(weights.layers)]
    rope = np.ascontiguousarray(rope_frequencies(config), np.float64) if gated else None
    positions = weights.positions
    if positions is not None and positions.shape[0] != config.max_positions:
        positions = positions[:config.max_positions]  # a Mistral window caps max_positions below the table
    positions = None if positions is None else np.ascontiguousarray(positions)
    return _native.CompiledModel(shape, layers, weights.embed, positions, rope, weights.final_norm,
                                 weights.final_norm_bias, weights.head)


class CompiledModel:
    """A loaded model compiled for the C backend (see the module docstring).
    Build it with :meth:`fastdecode.Model.compiled`."""

    def __init__(self, weights: Weights, config: ModelConfig):
        self.config = config
        self.weights = weights  # kept alive: C points into them
        self._native = native_model(weights, config)

    # -- the step -------------------------------------------------------------

    def _state(self, cache: KVCache, rows: int):
        """The cache's StepState (its scratch holds steps of `rows` tokens): one per cache, grown on demand."""
        state = getattr(cache, "_compiled_state", None)
        if state is None or state.rows < rows or cache._compiled_for is not self or \
                state.floats < self._native.scratch_floats(state.rows):  # threads raised since
            from .. import _native

            rows = max(rows, len(cache.lengths))
            scratch = empty_aligned((self._native.scratch_floats(rows),), np.float32)
            state = _native.StepState(self._native, cache.k, cache.v, cache.lengths, scratch, rows)
            cache._compiled_state, cache._compiled_for = state, self
        return state

    def _check(self, tokens, cache: KVCache, counts):  # -> (tokens [B, T] int64, counts [B] int64)
        if type(tokens) is np.ndarray and tokens.dtype == np.int64 and tokens.ndim == 2 and counts is None and \
                tokens.flags.c_contiguous and tokens.shape[1] == 1:
            # a decode step: the ids' range is checked by the wrapper (a ValueError naming them, before C)
            if len(tokens) != len(cache.lengths) or cache.k.shape[0] != self.config.num_layers:
                raise ValueError(f"tokens has {len(tokens)} rows but the cache {len(cache.lengths)}, or the "
                                 "cache is another model's")
            if cache.lengths.max() >= min(cache.max_len, self.config.max_positions):
                raise ContextOverflowError(
                    f"the sequence would reach {cache.lengths.max() + 1} positions; the cache holds "
                    f"{cache.max_len} and the model {self.config.max_positions}")
            return tokens, None
        tokens = np.ascontiguousarray(tokens, dtype=np.int64) if np.asarray(tokens).dtype.kind in "iu" else None
        if tokens is None or tokens.ndim != 2 or tokens.shape[1] == 0:
            raise TypeError("tokens must be a [B, T] integer array with T >= 1")
        b, t = tokens.shape
        if b != len(cache.lengths) or cache.k.shape[0] != self.config.num_layers:
            raise ValueError(f"tokens has {b} rows but the cache {len(cache.lengths)}, or the cache is another "
                             "model's")
        if tokens.min() < 0 or tokens.max() >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got "
                             f"{tokens.min()}..{tokens.max()}")
        counts = np.full(b, t, np.int64) if counts is None else np.ascontiguousarray(counts, dtype=np.int64)
        if counts.shape != (b,) or counts.min() < 0 or counts.max() > t:
            raise ValueError(f"counts must be {b} ints in [0, {t}]")
        end = cache.lengths + counts
        if end.max() > min(cache.max_len, self.config.max_positions):
            raise ContextOverflowError(
                f"the sequence would reach {end.max()} positions; the cache holds {cache.max_len} and the model "
                f"{self.config.max_positions}")
        return tokens, counts

    def _run(self, tokens, counts, cache, logits, ids=None, params=None, prev=(None, None)) -> int:
        """Chunks of PREFILL_CHUNK columns through the C step; the last gives logits (and ids).
        counts None: every row takes all of tokens' columns."""
        b, t = tokens.shape
        chunk = min(t, PREFILL_CHUNK)
        state = self._state(cache, b * chunk)
        if t == 1 or (counts is None and t <= chunk):  # one call
            return state.step(logits, ids, tokens, _ones(b) if counts is None else counts, params, *prev)
        pad = np.zeros(b, np.int64) if counts is None else t - counts  # [B] padding columns of each row
        bad = 0
        for c0 in range(0, t, chunk):
            c1 = min(c0 + chunk, t)
            n = np.clip(c1 - np.maximum(pad, c0), 0, c1 - c0)  # real tokens in these columns (a suffix)
            final = c1 == t
            bad = state.step(logits if final else None, ids if final else None,
                             np.ascontiguousarray(tokens[:, c0:c1]), n, params if final else None,
                             *(prev if final else (None, None)))
        return bad

    def forward(self, tokens, cache: KVCache, counts=None, out=None) -> np.ndarray:
        """Logits ``[B, V]`` of each row's last position after appending
        ``tokens [B, T]`` (left-padded: row b's real tokens are its last
        ``counts[b]``) to ``cache``: :func:`fastdecode.model.transformer.forward`'s
        contract (``all_logits`` aside). ``out``: a C-contiguous float32
        ``[B, V]`` to write into. Raises TypeError/ValueError for bad
        tokens or counts, ContextOverflowError past the cache or the model."""
        tokens, counts = self._check(tokens, cache, counts)
        logits = self._out(out, tokens.shape[0])
        self._run(tokens, counts, cache, logits)
        return logits

    def next_tokens(self, tokens, cache: KVCache, *, do_sample=None, temperature=1.0, top_k=None, top_p=None,
                    min_p=None, repetition_penalty=None, prev_tokens=None, rng=None, counts=None, out=None):
        """Append ``tokens`` as :meth:`forward` does and choose each row's
        next token in the same C call: int64 ``[B]``. The settings are
        :func:`fastdecode.sample`'s, with its rules and errors; greedy
        (``do_sample=False`` and no penalty) is :func:`fastdecode.argmax`.
        One ``u`` per row is drawn from ``rng`` as ``sample`` draws it, so
        the id equals ``sample(logits, ..., rng=same state)`` on this step's
        logits (left in ``out`` when given)."""
        tokens, counts = self._check(tokens, cache, counts)
        rows = tokens.shape[0]
        logits = self._out(out, rows)
        penalty = None if repetition_penalty in (None, 1.0) else repetition_penalty
        params, prev = None, (None, None)
        if do_sample or penalty is not None or (do_sample is None and temperature not in (0, 0.0)):
            params, penalized, sampled = _args.sampling_params(rows, temperature, top_k, top_p, min_p, penalty,
                                                                do_sample)
            if penalized:
                prev = _args.prev_tokens_layout(prev_tokens, rows, self.config.vocab_size, False)
            if sampled:
                _args.draw_u(params, rng)
        ids = np.empty(rows, np.int64)
        if self._run(tokens, counts, cache, logits, ids, params, prev):
            neutral = np.zeros((rows, len(_args.SAMPLE_PARAMS)))
            _args.raise_bad_row(ids, logits, params if params is not None else neutral, False)
        return ids

    def _out(self, out, rows):
        v = self.config.vocab_size
        if out is None:
            return np.empty((rows, v), np.float32)
        if not isinstance(out, np.ndarray) or out.shape != (rows, v) or out.dtype != np.float32 or \
                not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {(rows, v)}")
        return out


_switch = threading.local()


def enabled() -> bool:
    """Whether generate() runs the compiled step on the C backend in this
    thread: yes, unless ``use_compiled(False)`` or ``FASTDECODE_COMPILED=0``
    (both for comparisons: the per-kernel path gives the same answers)."""
    flag = getattr(_switch, "on", None)
    return os.environ.get("FASTDECODE_COMPILED", "1") != "0" if flag is None else flag


@contextlib.contextmanager
def use_compiled(on: bool):
    """generate() in this thread uses (or not) the compiled step while inside."""
    before = getattr(_switch, "on", None)
    _switch.on = bool(on)
    try:
        yield
    finally:
        _switch.on = before


def supported(weights: Weights) -> bool:
    """Whether the compiled step runs these weights: float32 arrays, or
    QuantizedTensors whose input width is a multiple of 32 (what the block
    kernels take; the loader keeps any other matrix in float32)."""
    mats = [weights.embed, weights.head] + [m for L in weights.layers for m in (L.qkv, L.out, L.up, L.down)]
    return all(m.dtype == np.float32 and (isinstance(m, np.ndarray) or m.shape[1] % 32 == 0) for m in mats)


def for_model(model) -> CompiledModel | None:
    """The compiled step generate() and generate_many() run for ``model`` in
    this thread: on the C backend, when :func:`enabled` and :func:`supported`;
    else None (they run the NumPy forward on the active backend)."""
    from .. import backend

    if backend.active().name == "c" and enabled() and supported(model.weights):
        return model.compiled()
    return None


def compiled(model) -> CompiledModel:
    """``model``'s compiled step, built on first use and kept on the model."""
    found = getattr(model, "_compiled", None)
    if found is None:
        with _build_lock:
            found = getattr(model, "_compiled", None)
            if found is None:
                found = model._compiled = CompiledModel(model.weights, model.config)
    return found
