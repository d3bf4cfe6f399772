"""Malformed GGUF files: mutate header counts, metadata lengths and values,
tensor offsets, types and dimensions of valid small files; every load
either gives a model or raises ValueError (never another exception, a
crash or a hang). Prints how many files were tried."""
import struct
import time
import warnings

import numpy as np
import pytest

import fastdecode
import gguf_files as gf

gguf = pytest.importorskip("gguf", reason="GGUF files are written with llama.cpp's gguf package")
ROUNDS = 150  # per source file
INTERESTING = (0, 1, 2, 3, 7, 31, 32, 255, 256, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32,
               (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


def pick(rng) -> int:
    return INTERESTING[int(rng.integers(len(INTERESTING)))]


def mutations(data: bytes, end: int, rng: np.random.Generator, names: list):
    """Mutated copies of `data` (whose tensor data starts at `end`): (what, bytes)."""
    while True:
        buf = bytearray(data)
        kind = rng.integers(7)
        if kind == 0:  # header counts: tensors at 8, metadata pairs at 16
            at = (8, 16)[rng.integers(2)]
            struct.pack_into("<Q", buf, at, pick(rng))
            what = f"count@{at}"
        elif kind == 1:  # any 8 bytes of the header region: string lengths, array counts, values
            at = int(rng.integers(24, end - 8))
            struct.pack_into("<Q", buf, at, pick(rng))
            what = f"u64@{at}"
        elif kind == 2:  # a 4-byte field: value types, n_dims, tensor types
            at = int(rng.integers(24, end - 4))
            struct.pack_into("<I", buf, at, pick(rng) & 0xFFFFFFFF)
            what = f"u32@{at}"
        else:  # one tensor record: a dimension, the type, the offset, n_dims
            name = names[rng.integers(len(names))]
            rec = gf.tensor_record(data, name)
            field = ("dims", "type", "offset", "n_dims")[kind - 3]
            if field == "dims":
                at = rec["dims"] + 8 * int(rng.integers(rec["count"]))
                struct.pack_into("<Q", buf, at, pick(rng))
            elif field == "type":
                struct.pack_into("<I", buf, rec["type"], int(rng.integers(0, 45)))
            elif field == "offset":
                struct.pack_into("<Q", buf, rec["offset"], pick(rng))
            else:
                struct.pack_into("<I", buf, rec["n_dims"], pick(rng) & 0xFFFFFFFF)
            what = f"{field} of {name}"
        if rng.random() < 0.3:  # sometimes also flip a random byte anywhere before the data
            buf[int(rng.integers(0, end))] ^= 1 << int(rng.integers(8))
            what += " + bit flip"
        yield what, bytes(buf)


@pytest.mark.parametrize("kind,weights", [("gpt2", "f32"), ("llama-gqa-tied", "q8_0")])
def test_mutated_files_load_or_raise_value_error(kind, weights, tmp_path, capsys):
    src = gf.gguf_of(kind, weights)
    with open(src, "rb") as f:
        data = f.read()
    reader = gguf.GGUFReader(src)
    names, end = [t.name for t in reader.tensors], reader.data_offset
    rng = np.random.default_rng(sum(map(ord, kind)))
    path = tmp_path / "m.gguf"
    outcomes = {"loaded": 0, "ValueError": 0}
    slowest = 0.0
    for _, (what, mutated) in zip(range(ROUNDS), mutations(data, end, rng, names)):
        path.write_bytes(mutated)
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fastdecode.load(path)
            outcomes["loaded"] += 1
        except ValueError:
            outcomes["ValueError"] += 1
        except Exception as exc:  # anything else is a bug: say which mutation
            pytest.fail(f"{what}: {type(exc).__name__}: {exc}")
        slowest = max(slowest, time.perf_counter() - start)
    with capsys.disabled():
        print(f"\nGGUF fuzz {kind} {weights}: {ROUNDS} mutated files: {outcomes}, slowest load {slowest:.2f} s")
    assert outcomes["ValueError"] > ROUNDS // 2  # most mutations break the file, and each was refused cleanly
