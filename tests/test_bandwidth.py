"""The read-bandwidth probe: its C sum reads every element (every SIMD
level, any length, any thread count) and read_gbps() returns a positive
rate or refuses bad arguments. The rate itself is never asserted."""
import numpy as np
import pytest

import fastdecode as fd
from conftest import requires_c


@pytest.mark.parametrize("n", [0, 1, 15, 64, 65, 4095, 4096, 4097, 100_003])
def test_read_sum_reads_every_element(simd, rng, n):
    from fastdecode import _native

    x = rng.random(n).astype(np.float32)
    before = fd.get_num_threads()
    try:
        for threads in (1, 2, 3):
            fd.set_num_threads(threads)
            assert _native.read_sum_f32(x) == pytest.approx(x.sum(dtype=np.float64), rel=1e-6, abs=1e-6)
    finally:
        fd.set_num_threads(before)


@requires_c
def test_read_gbps_measures_and_restores_threads():
    from fastdecode.benchmarks.bandwidth import default_nbytes, read_gbps

    before = fd.get_num_threads()
    gbps = read_gbps(nbytes=1 << 20, threads=1, repeats=3)
    assert np.isfinite(gbps) and gbps > 0
    assert fd.get_num_threads() == before
    assert default_nbytes() >= 512 << 20


@requires_c
@pytest.mark.parametrize("kwargs", [dict(nbytes=100), dict(nbytes=1.5e6), dict(nbytes=True), dict(repeats=0)])
def test_read_gbps_bad_arguments(kwargs):
    from fastdecode.benchmarks.bandwidth import read_gbps

    with pytest.raises(ValueError):
        read_gbps(**{"nbytes": 1 << 16, **kwargs})
