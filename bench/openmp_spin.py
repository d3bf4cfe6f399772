"""Why fastdecode shortens GNU OpenMP's spin-wait (see backend.py).

A decode step alternates NumPy matmuls (OpenBLAS threads) with fastdecode
kernels (OpenMP threads). This times matmul alone, softmax alone, and the
two back to back, at all cores, once per OpenMP wait setting, each in a
fresh interpreter (libgomp reads its settings once, when loaded).

    python bench/openmp_spin.py
"""
import os
import subprocess
import sys

CHILD = r"""
import time, numpy as np, fastdecode as fd
from threadpoolctl import threadpool_limits
n = __import__("os").cpu_count()
fd.set_num_threads(n)
w = np.random.default_rng(0).standard_normal((768, 3072), dtype=np.float32)
h = np.ones((1, 768), np.float32)
x = np.random.default_rng(0).standard_normal((16, 32000), dtype=np.float32)  # large enough to go parallel
def med(f, k=300):
    ts = []
    for _ in range(k):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[k // 2] * 1e6
with threadpool_limits(n):
    print(f"{med(lambda: h @ w):.0f} {med(lambda: fd.softmax(x)):.0f} {med(lambda: (h @ w, fd.softmax(x))):.0f}")
"""

SETTINGS = [("libgomp default (300k spins)", {"GOMP_SPINCOUNT": "300000"}),
            ("GOMP_SPINCOUNT=10000", {"GOMP_SPINCOUNT": "10000"}),
            ("GOMP_SPINCOUNT=1000", {"GOMP_SPINCOUNT": "1000"}),
            ("OMP_WAIT_POLICY=passive (fastdecode's default)", {})]

if __name__ == "__main__":
    print(f"threads: {os.cpu_count()} (all cores); medians of 300 calls")
    print("| OpenMP wait | matmul [1,768]x[768,3072] | softmax [16,32000] | both, back to back |")
    print("|---|---:|---:|---:|")
    for name, extra in SETTINGS:
        env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
        env.update(extra)
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
        a, b, c = out.stdout.split()
        print(f"| {name} | {a} us | {b} us | {c} us |")
