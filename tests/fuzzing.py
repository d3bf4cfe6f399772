"""Malformed-input generators shared by the fuzz tests (tests/test_fuzz.py)
and the atheris harness (tools/fuzz_atheris.py).

`junk_arrays()` draws what a careless or hostile caller might pass where an
array is expected: every dtype NumPy has, 0-d and high-rank arrays, empty
dimensions, NaN/inf, read-only and non-contiguous views, and non-arrays.
"""
import numpy as np
from hypothesis import strategies as st

DTYPES = [np.float32, np.float64, np.float16, np.int8, np.int32, np.int64, np.uint8, np.uint64,
          np.bool_, np.complex64, np.complex128, object, "U3", "datetime64[s]"]

# how many malformed inputs each public function received in this run
COUNTS: dict = {}


def count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


@st.composite
def shapes(draw, max_rank=6, max_side=7):
    rank = draw(st.sampled_from([0, 1, 2, 3, 4, 5, max_rank, 32]))
    if rank == 32:  # huge rank, tiny size
        return (1,) * 31 + (draw(st.integers(0, 3)),)
    return tuple(draw(st.lists(st.integers(0, max_side), min_size=rank, max_size=rank)))


@st.composite
def junk_arrays(draw, float_bias=0.6, shape=None):
    """An ndarray (usually) that may be wrong in any way, or a non-array."""
    kind = draw(st.integers(0, 19))
    if kind == 0 and shape is None:
        return draw(st.sampled_from([None, "logits", 3, 2.5, [1.0, [2.0]], {"a": 1}, b"\x00\x01", [], ()]))
    shp = draw(shapes()) if shape is None else shape
    dtype = draw(st.sampled_from([np.float32, np.float64])) if draw(st.floats(0, 1)) <= float_bias \
        else draw(st.sampled_from(DTYPES))
    size = int(np.prod(shp)) if shp else 1
    if np.dtype(dtype).kind == "f":
        pool = draw(st.sampled_from([
            st.floats(-10, 10, width=32),
            st.floats(allow_nan=True, allow_infinity=True, width=32),
            st.sampled_from([0.0, -np.inf, np.inf, np.nan, 1e30, -1e30, 1e-40]),
        ]))
        values = draw(st.lists(pool, min_size=min(size, 64), max_size=min(size, 64)))
        arr = np.resize(np.array(values or [0.0], dtype=dtype), shp) if size else np.zeros(shp, dtype)
    elif dtype == object:
        arr = np.empty(shp, dtype=object)
        arr.fill(draw(st.sampled_from([None, 1.5, "x"])))
    else:
        try:
            arr = np.zeros(shp, dtype=dtype)
        except (TypeError, ValueError):
            arr = np.zeros(shp, dtype=np.int32)
    view = draw(st.integers(0, 4))
    if view == 1 and arr.ndim >= 1 and arr.shape[-1] > 1:
        arr = arr[..., ::2]
    elif view == 2 and arr.ndim >= 2:
        arr = arr.swapaxes(0, -1)
    elif view == 3:
        arr = np.asfortranarray(arr)
    if draw(st.booleans()):
        arr.flags.writeable = False
    return arr


def snapshot(*objs):
    """Copies of the array arguments, to prove the call left them untouched."""
    return [(o, o.copy()) for o in objs if isinstance(o, np.ndarray) and o.dtype != object]


def unchanged(snap) -> bool:
    return all(np.array_equal(o, c, equal_nan=o.dtype.kind in "fc") for o, c in snap)
