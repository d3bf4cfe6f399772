"""Sampling contenders, one token per row at temperature 0.8: fastdecode (C,
NumPy reference), PyTorch's top-k way (``torch.topk`` + softmax +
``multinomial``) and Hugging Face's way (its warpers + softmax +
``torch.multinomial``, what ``generate()`` runs per token).

Logits are standard normal times 4 (float32): a spread like a language
model's, with a top-p 0.9 set of tens to hundreds of tokens. Each call
takes the next of WINDOWS different batches, as a decode loop does: timing
one batch over and over lets the branch predictor learn it, which flatters
a selection (by 5x for a quickselect over 2,000 entries).
"""
import itertools

import numpy as np

from .harness import Case, optional_import

TEMPERATURE = 0.8
FILTERS = {
    "top-k 50": dict(top_k=50),
    "top-p 0.9": dict(top_p=0.9),
    "top-k 50 + top-p 0.9": dict(top_k=50, top_p=0.9),
    "min-p 0.05": dict(min_p=0.05),
}
VOCABS = (32000, 50257, 128256, 151936)
BATCHES = (1, 16)
WINDOWS = 8


def _batches(shape) -> list:
    """WINDOWS different C-contiguous [B, V] batches: windows of one buffer of B + WINDOWS - 1 rows."""
    b, v = shape
    rows = np.random.default_rng(0).standard_normal((b + WINDOWS - 1, v), dtype=np.float32) * 4
    return [rows[i:i + b] for i in range(WINDOWS)]


def cases(quick: bool) -> list:
    shapes = [(1, 50257), (16, 50257), (1, 151936)] if quick else [(b, v) for v in VOCABS for b in BATCHES]
    torch = optional_import("torch")
    warpers = optional_import("transformers.generation.logits_process") if torch is not None else None
    batches = {shape: _batches(shape) for shape in shapes}
    out = []
    for label, settings in FILTERS.items():
        for shape in shapes:
            xs = batches[shape]
            gen = np.random.default_rng(1)
            c = {
                "fastdecode-c": lambda it=itertools.cycle(xs), s=settings, g=gen: _with("c", next(it), s, g),
                "fastdecode-numpy": lambda it=itertools.cycle(xs), s=settings, g=gen: _with("numpy", next(it), s, g),
            }
            if torch is not None:
                xts = [torch.from_numpy(x) for x in xs]
                tgen = torch.Generator().manual_seed(1)
                if set(settings) == {"top_k"}:
                    c["torch-topk"] = lambda it=itertools.cycle(xts), k=settings["top_k"], g=tgen: \
                        _torch_topk(torch, next(it), k, g)
                if warpers is not None:
                    chain = _hf_warpers(warpers, settings)
                    c["hf-warpers"] = lambda it=itertools.cycle(xts), chain=chain, g=tgen: \
                        _hf_sample(torch, next(it), chain, g)
            out.append(Case("sampling", f"{label} [{shape[0]}, {shape[1]}]", c,
                            {"B": shape[0], "V": shape[1], "filter": label, "temperature": TEMPERATURE}))
    return out


def _with(backend, x, settings, gen):
    import fastdecode

    with fastdecode.use_backend(backend):
        return fastdecode.sample(x, temperature=TEMPERATURE, rng=gen, **settings)


def _torch_topk(torch, xt, k, gen):  # what a PyTorch user writes for top-k sampling
    values, ids = torch.topk(xt / TEMPERATURE, k)
    pick = torch.multinomial(torch.softmax(values, dim=-1), 1, generator=gen)
    return ids.gather(-1, pick)


def _hf_warpers(warpers, settings):  # generate()'s order
    chain = [warpers.TemperatureLogitsWarper(TEMPERATURE)]
    if "top_k" in settings:
        chain.append(warpers.TopKLogitsWarper(settings["top_k"]))
    if "top_p" in settings:
        chain.append(warpers.TopPLogitsWarper(settings["top_p"]))
    if "min_p" in settings:
        chain.append(warpers.MinPLogitsWarper(settings["min_p"]))
    return chain


def _hf_sample(torch, xt, chain, gen):
    scores = xt
    for warp in chain:
        scores = warp(None, scores)
    return torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=gen)
