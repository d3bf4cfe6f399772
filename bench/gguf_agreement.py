"""GGUF agreement with llama.cpp.

Files of one Hugging Face checkpoint written two ways: by ``fastdecode
convert`` (f32, q8_0, q4_0, q4_k_m) and by llama.cpp's own
``convert_hf_to_gguf.py`` (f32) then ``llama_model_quantize`` (q8_0, q4_0,
Q4_K_M). Each file is decoded greedily by fastdecode and by llama.cpp
(llama-cpp-python, float32 KV cache) from the same prompt; the table gives
how many of the generated tokens agree. Then the tokenizer: llama.cpp's ids
and fastdecode's on the README and on ~1 MB of CPython documentation
(pydoc's topics and the standard library's docstrings), per paragraph.

    python bench/gguf_agreement.py --llama-cpp-src /path/to/llama.cpp [--model default] [--tokens 64]

``--llama-cpp-src``: a llama.cpp source tree (llama-cpp-python's sdist has
one under vendor/llama.cpp) for convert_hf_to_gguf.py. A checkpoint whose
tokenizer llama.cpp's converter does not recognise by hash (the embedded
model's is trained here) is converted with its pre-tokenizer declared
``--pre`` (default gpt-2, what the embedded model's tokenizer.json says).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import warnings

import fastdecode

WRAPPER = """
import sys, runpy
src, pre = sys.argv[1], sys.argv[2]
sys.path[:0] = [src, src + "/gguf-py"]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [src + "/convert_hf_to_gguf.py"] + sys.argv[3:]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""
FTYPES = {"q8_0": 7, "q4_0": 2, "q4_k_m": 15}  # llama.cpp's llama_ftype


def llama_cpp_files(src: str, model_dir: str, out: str, pre: str) -> dict:
    import llama_cpp

    f32 = os.path.join(out, "llama.cpp-f32.gguf")
    subprocess.run([sys.executable, "-c", WRAPPER, src, pre, model_dir, "--outfile", f32, "--outtype", "f32"],
                   check=True, capture_output=True)
    files = {"f32": f32}
    for name, ftype in FTYPES.items():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = ftype
        path = os.path.join(out, f"llama.cpp-{name}.gguf")
        if llama_cpp.llama_model_quantize(f32.encode(), path.encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize failed for {name}")
        files[name] = path
    return files


def fastdecode_files(model_dir: str, out: str) -> dict:
    model = fastdecode.load(model_dir)
    files = {}
    for name in ("f32", "q8_0", "q4_0", "q4_k_m"):
        files[name] = os.path.join(out, f"fastdecode-{name}.gguf")
        model.save(files[name], weights=name)
    return files


def llama(path):
    import llama_cpp

    return llama_cpp.Llama(model_path=path, n_ctx=512, n_threads=1, seed=0, verbose=False, type_k=0, type_v=0)


def greedy_agreement(path: str, prompt: str, n: int) -> tuple:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fastdecode.load(path)
    ids = model.encode(prompt)
    ours = model.generate(ids, max_new_tokens=n, ignore_eos=True).token_ids
    theirs = []
    for token in llama(path).generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
        theirs.append(int(token))
        if len(theirs) == n:
            break
    same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return same, ours


def cpython_docs(limit: int = 1 << 20) -> str:
    """~1 MB of CPython's documentation available offline: pydoc's topics, then stdlib docstrings."""
    import importlib
    import pkgutil

    from pydoc_data.topics import topics

    parts = list(topics.values())
    size = sum(len(p.encode()) for p in parts)
    for info in sorted(pkgutil.iter_modules(), key=lambda m: m.name):
        if size >= limit or info.name.startswith("_") or info.name in ("antigravity", "this", "idlelib"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = importlib.import_module(info.name)
        except Exception:
            continue
        for obj in [module] + [getattr(module, k, None) for k in sorted(vars(module)) if not k.startswith("_")]:
            doc = getattr(obj, "__doc__", None)
            if isinstance(doc, str) and len(doc) > 200 and doc not in parts:
                parts.append(doc)
                size += len(doc.encode())
    return "\n\n".join(parts)[:limit]


def tokenizer_agreement(path: str, texts: dict) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = fastdecode.load(path).tokenizer
    llm = llama(path)
    out = {}
    for name, text in texts.items():
        paragraphs = [p for p in text.split("\n\n") if p]
        same = sum(llm.tokenize(p.encode(), add_bos=False, special=True) == tok.encode(p, add_special_tokens=False)
                   for p in paragraphs)
        whole = llm.tokenize(text.encode(), add_bos=True, special=True) == tok.encode(text)
        out[name] = (same, len(paragraphs), len(text.encode()), whole)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--llama-cpp-src", required=True)
    p.add_argument("--model", default="default")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--pre", default="gpt-2")
    p.add_argument("--prompt", default="Once upon a time")
    args = p.parse_args(argv)
    from fastdecode.model import DEFAULT_MODEL_DIR

    model_dir = DEFAULT_MODEL_DIR if args.model == "default" else args.model
    with tempfile.TemporaryDirectory() as out:
        written = {"fastdecode convert": fastdecode_files(model_dir, out),
                   "llama.cpp convert_hf_to_gguf": llama_cpp_files(args.llama_cpp_src, model_dir, out, args.pre)}
        print(f"| file written by | weights | greedy tokens agreeing (of {args.tokens}) |\n|---|---|---|")
        for writer, files in written.items():
            for name, path in files.items():
                same, _ = greedy_agreement(path, args.prompt, args.tokens)
                print(f"| {writer} | {name} | {same} |", flush=True)
        readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8").read()
        texts = {"README.md": readme, "CPython docs": cpython_docs()}
        print("\n| file | text | bytes | paragraphs with equal ids | whole text equal |\n|---|---|---|---|---|")
        for writer, files in written.items():
            for name, (same, total, size, whole) in tokenizer_agreement(files["f32"], texts).items():
                print(f"| {writer} f32 | {name} | {size} | {same}/{total} | {whole} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
