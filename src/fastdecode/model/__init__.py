"""Models: load a Hugging Face checkpoint directory and decode with it.

    import fastdecode as fd
    model = fd.load("path/to/checkpoint")        # or fd.load("default")
    out = model.generate("Hello", max_new_tokens=20)
    print(out.text, out.timing.generated_tokens_per_s)
    for token in model.stream("Hello", max_new_tokens=20, do_sample=True, top_p=0.9, rng=0):
        print(token.text, end="", flush=True)
"""
from __future__ import annotations

import os

import numpy as np

from .config import ConfigError, ModelConfig, check_field, read_json
from .transformer import ContextOverflowError, KVCache, forward
from . import quantize
from .weights import Checkpoint, WeightError, Weights, load_weights

__all__ = ["Model", "load", "ModelConfig", "KVCache", "ConfigError", "WeightError", "ContextOverflowError",
           "DEFAULT_MODEL_DIR"]

DEFAULT_MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models", "default")
_SAMPLING_KEYS = ("do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty")


class Model:
    """A loaded checkpoint: ``config``, float32 ``weights``, ``tokenizer`` (or None)."""

    prefix_cache = None  # a fastdecode.prefix_cache.PrefixCache that generate() reuses prompt prefixes from

    def __init__(self, config: ModelConfig, weights: Weights, tokenizer=None, generation_defaults=None,
                 eos_token_ids=None, path: str | None = None):
        self.config = config
        self.weights = weights
        quantize.repack(weights)  # the int8 kernels' layout, where the CPU has AVX-512
        self.tokenizer = tokenizer
        self.generation_defaults = dict(generation_defaults or {})
        self.eos_token_ids = tuple(config.eos_token_ids if eos_token_ids is None else eos_token_ids)
        self.path = path

    def __repr__(self):
        c = self.config
        return (f"<fastdecode.Model {c.architecture} layers={c.num_layers} d={c.hidden_size} heads={c.num_heads}/"
                f"{c.num_kv_heads} vocab={c.vocab_size} from {self.path!r}>")

    # -- the forward pass ---------------------------------------------------

    def new_cache(self, batch: int = 1, max_len: int | None = None) -> KVCache:
        return KVCache(self.config, batch, self.config.max_positions if max_len is None else max_len)

    def forward(self, tokens, cache: KVCache, counts=None, all_logits: bool = False) -> np.ndarray:
        """Logits after appending ``tokens [B, T]`` (left-padded; ``counts[b]``
        real tokens per row) to ``cache``: ``[B, V]`` for each row's last
        position, or ``[B, T, V]`` with ``all_logits``."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.dtype.kind not in "iu":
            raise TypeError(f"tokens must be a [B, T] integer array; got {tokens.dtype} {tokens.shape}")
        if tokens.shape[0] != len(cache.lengths):
            raise ValueError(f"tokens has {tokens.shape[0]} rows but the cache {len(cache.lengths)}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(f"token ids must lie in [0, {self.config.vocab_size}); got {tokens.min()}..{tokens.max()}")
        if counts is not None:
            counts = np.asarray(counts)
            if counts.shape != (tokens.shape[0],) or counts.dtype.kind not in "iu" or \
                    (counts.size and (counts.min() < 0 or counts.max() > tokens.shape[1])):
                raise ValueError(f"counts must be {tokens.shape[0]} ints in [0, {tokens.shape[1]}]")
        return forward(self.weights, self.config, tokens, cache, counts, all_logits)

    def compiled(self):
        """The compiled decode step over these weights (C backend;
        :mod:`fastdecode.model.compiled`), built on first call and kept."""
        from .compiled import compiled

        return compiled(self)

    def save(self, path, weights: str | None = None) -> None:
        """Write the model. ``path`` ending in ``.gguf``: a GGUF file that
        llama.cpp loads, matrices as they are (``weights=None``) or in
        ``weights``: f32, f16, bf16, q8_0, q4_0, q4_k_m (see
        :mod:`fastdecode.model.gguf_write`). Any other path: a directory
        with the weights in their formats, so ``fastdecode.load(directory)``
        reads it back without quantizing again (fastdecode.model.quantize.save
        says how; ``weights`` must then be None)."""
        path = os.fspath(path)
        if path.endswith(".gguf"):
            from .gguf_write import save_gguf

            save_gguf(self, path, weights)
            return
        if weights is not None:
            raise ValueError(f"weights={weights!r} applies to a .gguf file; a directory keeps the model's formats "
                             "(choose them at load: fastdecode.load(path, weights=...))")
        from .quantize import save

        save(self, path)

    # -- text ---------------------------------------------------------------

    def encode(self, text: str) -> list:
        if self.tokenizer is None:
            raise ValueError(f"{self.path}: no tokenizer.json, so no text: pass token ids")
        return self.tokenizer.encode(text)

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            raise ValueError(f"{self.path}: no tokenizer.json, so no text")
        return self.tokenizer.decode(ids)

    # -- generation ---------------------------------------------------------

    def generate(self, prompt, *, max_new_tokens: int = 64, rng=None, config=None, **settings):
        """Continue ``prompt`` (text, token ids, or a list of either for a batch).

        Settings (keywords, or a :class:`~fastdecode.generation.GenerationConfig`
        as ``config``): do_sample, temperature, top_k, top_p, min_p,
        repetition_penalty, stop (strings and/or token ids, added to the
        checkpoint's eos), ignore_eos, logits_processors,
        prompt_lookup_num_tokens and max_matching_ngram_size (prompt-lookup
        decoding, :mod:`fastdecode.lookup`). One prompt reuses the cached
        keys and values of a shared prefix from the model's prefix cache
        (:mod:`fastdecode.prefix_cache`). ``rng``: a seed or a
        ``numpy.random.Generator``. Returns a GenerationResult (a list of them
        for a batch) with ``token_ids``, ``text``, ``finish_reason`` and
        ``timing``.
        """
        from .. import generation

        return generation.generate(self, prompt, self._settings(config, max_new_tokens, settings), rng)

    def stream(self, prompt, *, max_new_tokens: int = 64, rng=None, config=None, **settings):
        """Like :meth:`generate` for one prompt, yielding ``StreamToken(id, text)``
        as each token is made; the pieces join to the result's text."""
        from .. import generation

        return generation.stream(self, prompt, self._settings(config, max_new_tokens, settings), rng)

    # -- chat (fastdecode.chat, fastdecode.session) ----------------------------

    def chat(self, messages, *, max_new_tokens: int = 256, rng=None, config=None, template: str | None = None,
             **settings):
        """Answer a conversation, ``[{"role": "system"|"user"|"assistant", "content": str}, ...]``,
        rendered with the checkpoint's chat template (or ``template``, Jinja2
        text) under Hugging Face's conventions; stops at the template's
        end-of-turn token. Settings as :meth:`generate`. Raises
        ``fastdecode.chat.ChatTemplateError`` without a template."""
        from .. import generation
        from ..chat import prepare

        ids, gen = prepare(self, messages, self._settings(config, max_new_tokens, settings), template)
        return generation.generate(self, ids, gen, rng)

    def stream_chat(self, messages, *, max_new_tokens: int = 256, rng=None, config=None, template: str | None = None,
                    **settings):
        """Like :meth:`chat`, yielding ``StreamToken(id, text)`` per token."""
        from .. import generation
        from ..chat import prepare

        ids, gen = prepare(self, messages, self._settings(config, max_new_tokens, settings), template)
        return generation.stream(self, ids, gen, rng)

    def session(self, path=None, **options):
        """A :class:`fastdecode.session.Session` (a conversation that keeps its
        KV cache between turns), resumed from ``path`` when given."""
        from ..session import Session

        return Session(self, path, **options)

    def generate_many(self, prompts, *, max_batch: int = 8, max_new_tokens: int = 64, rng=None, config=None,
                      as_completed: bool = False, prefill_chunk: int = 128, step=None, **settings):
        """Continue many prompts with continuous batching (:mod:`fastdecode.batch`).

        ``prompts``: a list or any iterable (read as slots free up) of texts,
        token-id lists, or dicts ``{"prompt": ..., "seed": int, <setting>:
        value}`` whose settings override the keywords for that row. Up to
        ``max_batch`` rows decode together; a finished row's slot takes the
        next prompt at once; a newcomer's prompt is prefilled in chunks of at
        most ``prefill_chunk`` tokens between decode steps. ``rng``: None or an
        int seed S; a row without its own ``seed`` draws from
        ``default_rng([S, index])``, so each result equals ``generate()`` of
        that prompt alone with that seed. Returns a list of GenerationResult in
        input order, or with ``as_completed=True`` an iterator of
        ``Completion(index, result)`` in the order rows finish. ``step``: the
        per-step function (default :func:`fastdecode.batch.default_step`, the
        compiled step on the C backend).
        Raises TypeError/ValueError naming the prompt's index for a bad item.
        """
        from .. import batch

        return batch.generate_many(self, prompts, self._settings(config, max_new_tokens, settings),
                                   max_batch=max_batch, prefill_chunk=prefill_chunk, as_completed=as_completed,
                                   rng=rng, step=step)

    @staticmethod
    def _settings(config, max_new_tokens, settings):
        import dataclasses

        from ..generation import GenerationConfig

        if config is not None and not isinstance(config, GenerationConfig):
            raise TypeError(f"config must be a fastdecode.GenerationConfig or None; got {type(config).__name__}")
        base = config if config is not None else GenerationConfig(max_new_tokens=max_new_tokens)
        names = {f.name for f in dataclasses.fields(GenerationConfig)}
        unknown = set(settings) - names
        if unknown:
            raise TypeError(f"unknown generation setting(s): {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(names))}")
        return dataclasses.replace(base, **settings)


def load(path: str, weights: str | None = None, *, strict: bool = True,
         prefix_cache_mb: float | None = None) -> Model:
    """A model from a Hugging Face checkpoint directory (config.json,
    model.safetensors or shards, tokenizer.json), a ``.gguf`` file (see
    :mod:`fastdecode.model.gguf`), or ``"default"`` for the model packaged
    with fastdecode.

    Fields missing from config.json take transformers' defaults for the
    architecture. Raises FileNotFoundError for a missing file, ConfigError
    (a ValueError) naming the file and field of a bad config value, and
    WeightError (a ValueError) naming a tensor that is missing, misshapen,
    or, with ``strict`` (the default, as torch's ``load_state_dict``), one
    the config gives no place to; ``strict=False`` warns and ignores those.

    ``weights``: the format of the matrices a decode step streams, made at
    load: ``"q8_0"``, ``"q4_0"``, ``"q4_k_m"`` (llama.cpp's recipe),
    ``"q4_K"``, ``"q6_K"``, ``"bf16"``, ``"f16"``, or None (as stored, in
    float32; a GGUF's block-quantized tensors in their own formats). See
    fastdecode.model.quantize and ``model.weights.summary()``.
    A directory written by :meth:`Model.save` loads in its saved formats;
    asking it for another raises ValueError.

    ``prefix_cache_mb``: MB (2**20 bytes) of KV caches kept to reuse prompt
    prefixes across generate() calls (default
    ``fastdecode.prefix_cache.DEFAULT_MB``; 0 turns it off)."""
    from ..prefix_cache import make as _prefix_cache
    from . import quantize

    spec = quantize.normalize_spec(weights)
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False; got {strict!r}")
    prefix_cache = _prefix_cache(prefix_cache_mb)  # the argument checked before any loading
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike; got {type(path).__name__}")
    path = os.fspath(path)
    if path == "default":
        if not os.path.isdir(DEFAULT_MODEL_DIR):
            raise FileNotFoundError(f"the default model is not packaged in this build ({DEFAULT_MODEL_DIR} is "
                                    "missing); pass the path of a checkpoint directory instead")
        path = DEFAULT_MODEL_DIR
    if os.path.isfile(path) and (path.endswith(".gguf") or _is_gguf(path)):
        from .gguf import load_gguf

        model = load_gguf(path, spec)
        model.prefix_cache = prefix_cache(model.config)
        return model
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: not a directory (fastdecode.load takes a checkpoint directory "
                                "with config.json and model.safetensors)")
    config = ModelConfig.from_file(os.path.join(path, "config.json"))
    saved = quantize.saved_info(path)
    if saved is not None:
        as_saved = next((n.split("=", 1)[1].split()[0] for n in saved.get("notes", []) if n.startswith("weights=")),
                        None)
        if spec is not None and spec != as_saved:
            raise ValueError(f"{path} was saved with weights={as_saved!r}; load it with weights=None "
                             f"(or {as_saved!r}), or load the original checkpoint with weights={spec!r}")
        weights = quantize.load_saved(path, config, saved)
    else:
        weights = quantize.quantize_weights(load_weights(config, Checkpoint(path), strict), spec)
    tokenizer = None
    if os.path.isfile(os.path.join(path, "tokenizer.json")):
        from ..tokenizer import Tokenizer

        tokenizer = Tokenizer(path)
    gen_file = os.path.join(path, "generation_config.json")
    gen_defaults = read_json(gen_file)
    try:
        eos = _eos_ids(gen_defaults.get("eos_token_id"), config, tokenizer)
        defaults = _sampling_defaults({k: gen_defaults[k] for k in _SAMPLING_KEYS if gen_defaults.get(k) is not None})
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{gen_file}: {exc}") from None
    model = Model(config, weights, tokenizer, defaults, eos, path)
    model.prefix_cache = prefix_cache(config)
    return model


def _sampling_defaults(defaults: dict) -> dict:
    """generation_config.json's sampling settings, checked by generate()'s rules (do_sample with
    temperature 0, a combination some files hold, is left for generate() to refuse if used)."""
    from ..generation import GenerationConfig, validate

    validate(GenerationConfig(**dict(defaults, do_sample=None)))
    if not isinstance(defaults.get("do_sample", False), bool):
        raise ConfigError(f"do_sample must be true or false; got {defaults['do_sample']!r}")
    return defaults


def _is_gguf(path: str) -> bool:
    from .gguf import is_gguf

    return is_gguf(path)


def _eos_ids(from_generation_config, config: ModelConfig, tokenizer) -> tuple:
    """eos ids: generation_config.json, else config.json, else tokenizer_config.json."""
    if from_generation_config is not None:
        return check_field("eos_token_id", from_generation_config, "ids")
    if config.eos_token_ids:
        return config.eos_token_ids
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        return (tokenizer.eos_token_id,)
    return ()
