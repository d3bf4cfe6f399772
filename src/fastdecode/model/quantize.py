"""Weights in a block format, chosen at load: ``fd.load(path, weights=...)``,
and models saved with their formats (``Model.save``).

``weights`` names a format of :data:`fastdecode.formats.FORMATS` (every
matrix a decode step streams in that format), ``"q4_k_m"`` (llama.cpp's
Q4_K_M recipe, below), or None (as stored, float32).

What gets quantized: the projections (fused QKV, attention output, MLP up
and down) and the output head. The embedding table is read one row per
token, so its size, not its speed, matters: when the head is tied to it,
the two share one table in the head's format (a lookup dequantizes its
rows, as llama.cpp's get_rows does), else the table takes the base format.
Norms, biases and GPT-2's position table stay float32.

Q4_K_M (llama.cpp's ``llama_tensor_get_type`` for ``LLAMA_FTYPE_MOSTLY_Q4_K_M``):
q6_K for the output head, and for V and ffn_down in the layers where
``use_more_bits(i, n)`` holds (i < n/8, i >= 7n/8, or (i - n/8) % 3 == 2);
q4_K for everything else. fastdecode fuses Q, K and V into one matrix, so
in those layers all of QKV is q6_K (llama.cpp: V only), a few more bytes.

A matrix whose ``in`` is not a multiple of its format's block falls back to
the nearest that fits, as llama.cpp does (q4_K -> q4_0, q6_K -> q8_0, then
f16), and ``weights.summary()`` says which and why.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from .. import formats
from ..arrays import empty_aligned

SPECS = (*formats.FORMATS, "q4_k_m")
MATRICES = ("qkv", "out", "up", "down")  # the projections of a Layer a decode step streams
FALLBACK = {"q4_K": "q4_0", "q6_K": "q8_0", "q8_0": "f16", "q4_0": "f16", "bf16": None, "f16": None}
SAVED_KEY = "fastdecode.weights"  # safetensors metadata: JSON of each tensor's format (Model.save)
CHECKPOINT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def normalize_spec(spec):
    """None, or one of SPECS (case-insensitive for the format names)."""
    if spec is None:
        return None
    if not isinstance(spec, str):
        raise TypeError(f"weights must be None or a str, one of {', '.join(SPECS)}; got {type(spec).__name__}")
    if spec.strip().lower() == "q4_k_m":
        return "q4_k_m"
    try:
        return formats.format_info(spec).name
    except ValueError:
        raise ValueError(f"weights must be None or one of {', '.join(SPECS)}; got {spec!r}") from None


def use_more_bits(i: int, n: int) -> bool:  # llama.cpp's rule for Q4_K_M's q6_K layers
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def recipe(spec: str, n_layers: int) -> dict:
    """{tensor name: wanted format} for every quantized tensor of a model."""
    want = {}
    for i in range(n_layers):
        for m in MATRICES:
            if spec == "q4_k_m":
                want[f"layers.{i}.{m}"] = "q6_K" if m in ("qkv", "down") and use_more_bits(i, n_layers) else "q4_K"
            else:
                want[f"layers.{i}.{m}"] = spec
    want["head"] = "q6_K" if spec == "q4_k_m" else spec
    want["embed"] = "q4_K" if spec == "q4_k_m" else spec
    return want


def _fitting(fmt: str, n_in: int):
    while fmt is not None and n_in % formats.FORMATS[fmt].block:
        fmt = FALLBACK[fmt]
    return fmt


def _quantized(w, fmt: str, name: str, notes: list):  # float32 [out, in] -> QuantizedTensor or the array
    got = _fitting(fmt, w.shape[1])
    if got != fmt:
        notes.append(f"{name}: in = {w.shape[1]} is not a multiple of {fmt}'s block "
                     f"({formats.FORMATS[fmt].block}); kept as {got or 'float32'}")
    if got is None:
        return w
    try:
        qt = formats.quantize(w, got)
    except ValueError as exc:  # f16 out of range, or non-finite weights: keep what the checkpoint has
        notes.append(f"{name}: {exc}; kept as float32")
        return w
    data = empty_aligned(qt.data.shape, np.uint8)  # streamed: aligned, huge pages (weights.py's _streamed)
    data[...] = qt.data
    data.flags.writeable = False
    return formats.QuantizedTensor(qt.format, qt.shape, data)


def quantize_weights(weights, spec):
    """``weights`` (float32, from weights.load_weights) with its matrices in
    format ``spec``; the float32 matrices are dropped as each is converted."""
    spec = normalize_spec(spec)
    if spec is None:
        return weights
    want = recipe(spec, len(weights.layers))
    notes = [f"weights={spec}" + (" (llama.cpp's Q4_K_M recipe: q6_K head, and QKV and MLP down in layers "
                                  "where use_more_bits holds; q4_K elsewhere)" if spec == "q4_k_m" else "")]
    layers = []
    for i, layer in enumerate(weights.layers):
        new = {m: _quantized(getattr(layer, m), want[f"layers.{i}.{m}"], f"layers.{i}.{m}", notes) for m in MATRICES}
        layers.append(dataclasses.replace(layer, **new))
        weights.layers[i] = None  # the float32 matrices go now, not at the end
    tied = weights.head is weights.embed
    head = _quantized(weights.head, want["head"], "head", notes)
    if tied:
        embed = head
        notes.append("embed: tied to the head, one table in the head's format (a lookup dequantizes rows)")
    else:
        embed = _quantized(weights.embed, want["embed"], "embed", notes)
    weights = dataclasses.replace(weights, layers=layers, head=head, embed=embed, notes=notes)
    _release_freed_memory()
    return weights


def repack(weights) -> None:
    """The projections of ``weights`` and the head rearranged in place for
    the AVX-512 int8 kernels, as :func:`repack_tensor` says. A head that is
    also the embedding table is repacked once: lookups take its rows out of
    the interleaved groups (``QuantizedTensor.__getitem__``, model.c's
    ``fd_lookup_row``), so its bytes are held once."""
    quantized = [getattr(layer, m) for layer in weights.layers for m in MATRICES] + [weights.head]
    before = [getattr(w, "layout", None) for w in quantized]
    for i, w in enumerate(quantized):
        repack_tensor(w, whole_groups=i < len(quantized) - 1)
    if [getattr(w, "layout", None) for w in quantized] != before:
        _release_freed_memory()  # GGUF's copies, freed as each tensor was repacked


def repack_tensor(w, keep_gguf: bool = False, whole_groups: bool = False):
    """``w`` in the layout ``fastdecode.load`` gives it: a q8_0, q4_0, q4_K
    or q6_K :class:`~fastdecode.QuantizedTensor` is repacked
    (:meth:`~fastdecode.QuantizedTensor.repack`) when the CPU has AVX-512
    and ``FASTDECODE_REPACK`` is not ``0`` (``whole_groups``: only with a
    multiple of 32 rows, so a gated MLP's gate/up halves split on whole
    groups). Anything else is returned as it is."""
    from .. import backend

    if isinstance(w, formats.QuantizedTensor) and w.format in ("q8_0", "q4_0", "q4_K", "q6_K") \
            and not (whole_groups and w.shape[0] % 32) \
            and os.environ.get("FASTDECODE_REPACK", "1") != "0" and backend._native is not None \
            and backend._native.cpu_max_level() == "avx512":
        w.repack(keep_gguf=keep_gguf)
    return w


def _release_freed_memory() -> None:
    """Quantizing leaves the float32 matrices' and NumPy temporaries' freed
    memory in glibc's heap (small blocks, fragmented), counted in RSS until
    reused; malloc_trim returns it to the OS (GPT-2 in q4_0: 92 -> 71 MiB
    over a bare process, 0.78 -> 0.60 bytes per weight). A no-op elsewhere."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def summary(weights) -> str:
    """One line per distinct (format, shape) of the streamed matrices, then the notes."""
    rows = {}
    named = [(f"layers.{i}.{m}", getattr(layer, m)) for i, layer in enumerate(weights.layers) for m in MATRICES]
    named += [("head", weights.head)] + ([] if weights.embed is weights.head else [("embed", weights.embed)])
    for name, t in named:
        fmt = t.format if isinstance(t, formats.QuantizedTensor) else str(t.dtype)
        key = (name.split(".")[-1], fmt, tuple(t.shape))
        count, nbytes = rows.get(key, (0, 0))
        rows[key] = (count + 1, nbytes + t.nbytes)
    lines = [f"{kind:6s} x{count:<3d} {fmt:8s} {list(shape)}  {nbytes / 2**20:8.1f} MiB"
             for (kind, fmt, shape), (count, nbytes) in rows.items()]
    total = sum(n for _, n in rows.values())
    lines.append(f"matrices: {total / 2**20:.1f} MiB; one decode step reads {weights.nbytes_per_token() / 2**20:.1f} MiB")
    return "\n".join(lines + list(getattr(weights, "notes", [])))


# ---------------------------------------------------------------------------
# Saving and loading a model with its formats
# ---------------------------------------------------------------------------

def _tensors(weights) -> dict:  # name -> ndarray or QuantizedTensor, every tensor of Weights
    out = {}
    for f in dataclasses.fields(weights):
        value = getattr(weights, f.name)
        if f.name == "layers":
            for i, layer in enumerate(value):
                for g in dataclasses.fields(layer):
                    if getattr(layer, g.name) is not None:
                        out[f"layers.{i}.{g.name}"] = getattr(layer, g.name)
        elif isinstance(value, (np.ndarray, formats.QuantizedTensor)) and not (f.name == "head" and value is weights.embed):
            out[f.name] = value
    return out


def save(model, directory: str) -> None:
    """Write ``model`` to ``directory``: its checkpoint files (config.json,
    tokenizer, generation_config.json, copied from the directory it was
    loaded from) and ``model.safetensors`` in fastdecode's arranged layout
    (QKV fused, every matrix ``[out, in]``), quantized tensors as their raw
    GGUF blocks (uint8 ``[out, row bytes]``) with the safetensors metadata
    ``fastdecode.weights`` naming each one's format and shape.
    ``fd.load(directory)`` reads it back as it was, without quantizing;
    transformers cannot read it (a GGUF file is the format to share)."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    tensors, meta = {}, {}
    for name, t in _tensors(model.weights).items():
        if isinstance(t, formats.QuantizedTensor):
            tensors[name] = np.ascontiguousarray(t.data)
            meta[name] = [t.format, *t.shape]
        else:
            tensors[name] = np.ascontiguousarray(t)
    info = {"formats": meta, "tied": model.weights.head is model.weights.embed,
            "notes": list(getattr(model.weights, "notes", []))}
    for name in CHECKPOINT_FILES:
        src = os.path.join(model.path or "", name)
        if model.path and os.path.isfile(src) and os.path.abspath(src) != os.path.abspath(os.path.join(directory, name)):
            shutil.copyfile(src, os.path.join(directory, name))
    save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={SAVED_KEY: json.dumps(info)})


def saved_info(directory: str):
    """The metadata of a model written by :func:`save`, or None for any other checkpoint."""
    path = os.path.join(directory, "model.safetensors")
    if not os.path.isfile(path):
        return None
    from safetensors import safe_open

    try:
        with safe_open(path, framework="np") as f:
            meta = f.metadata() or {}
    except Exception:  # not ours to judge: the checkpoint reader reports a corrupt file
        return None
    return json.loads(meta[SAVED_KEY]) if SAVED_KEY in meta else None


def load_saved(directory: str, config, info: dict):
    """The Weights of a model written by :func:`save` (ValueError when a tensor does not fit its shape)."""
    from safetensors import safe_open

    from .weights import Layer, Weights

    path = os.path.join(directory, "model.safetensors")
    with safe_open(path, framework="np") as f:
        def get(name):
            if name not in f.keys():
                return None
            a = f.get_tensor(name)
            if name in info["formats"]:
                fmt, n_out, n_in = info["formats"][name]
                try:
                    qt = formats.QuantizedTensor(fmt, (n_out, n_in), a)
                except (TypeError, ValueError) as exc:
                    raise ValueError(f"{path}: tensor {name!r}: {exc}") from None
                data = empty_aligned(qt.data.shape, np.uint8)
                data[...] = qt.data
                data.flags.writeable = False
                return formats.QuantizedTensor(fmt, (n_out, n_in), data)
            a.flags.writeable = False
            return a

        layers = [Layer(**{g.name: get(f"layers.{i}.{g.name}") for g in dataclasses.fields(Layer)})
                  for i in range(config.num_layers)]
        embed = get("embed")
        head = embed if info.get("tied") else get("head")
        weights = Weights(embed=embed, positions=get("positions"), layers=layers, final_norm=get("final_norm"),
                          final_norm_bias=get("final_norm_bias"), head=head, notes=list(info.get("notes", [])))
    for name, value in [("embed", embed), ("head", head), ("final_norm", weights.final_norm)] + \
            [(f"layers.{i}.{m}", getattr(layer, m)) for i, layer in enumerate(layers) for m in MATRICES]:
        if value is None:
            raise ValueError(f"{path}: saved model lacks tensor {name!r}")
    return weights
