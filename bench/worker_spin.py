"""What fastdecode's idle worker threads should do between two kernel calls
(fastdecode.set_worker_spin; csrc/pool.c says why it matters).

Two decode loops, at all cores, once per setting, each in a fresh
interpreter:
  - a user's own loop: a NumPy matmul (OpenBLAS threads) then a parallel
    fastdecode kernel, back to back: polling workers hold the cores
    OpenBLAS needs;
  - fastdecode's kind of loop: Python work between parallel fastdecode
    projections, nothing else threaded: sleeping workers make every call
    pay a wake-up.

    python bench/worker_spin.py
"""
import os
import subprocess
import sys

CHILD = r"""
import sys, time, numpy as np, fastdecode as fd
from threadpoolctl import threadpool_limits
n = __import__("os").cpu_count()
fd.set_num_threads(n)
fd.set_worker_spin(float(sys.argv[1]))
rng = np.random.default_rng(0)
w = rng.standard_normal((768, 3072), dtype=np.float32)
h = np.ones((1, 768), np.float32)
x = rng.standard_normal((16, 32000), dtype=np.float32)  # large enough to go parallel
# 24 GPT-2-sized projections, 240 MB: each call streams its weight from memory
ws = [rng.standard_normal((2304, 768), dtype=np.float32) for _ in range(24)]
g = np.ones((1, 768), np.float32)
def med(f, k=300):
    ts = []
    for _ in range(k):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[k // 2] * 1e6
def projections():
    for wi in ws:
        y = fd.linear(g, wi)
        np.tanh(y[:, :768] * 0.5)  # the Python/NumPy work of a decode step between projections
with threadpool_limits(n):
    print(f"{med(lambda: (h @ w, fd.softmax(x))):.0f} {med(projections, 30) / len(ws):.0f}")
"""

SETTINGS = [0, 50, 300, 2000]

if __name__ == "__main__":
    print(f"threads: {os.cpu_count()} (all cores); medians")
    print("| worker spin | NumPy matmul + fd.softmax, back to back | fd.linear [2304,768] between NumPy work |")
    print("|---:|---:|---:|")
    for us in SETTINGS:
        out = subprocess.run([sys.executable, "-c", CHILD, str(us)], capture_output=True, text=True, check=True)
        a, b = out.stdout.split()
        note = " (default)" if us == 0 else " (generate()'s decode steps)" if us == 300 else ""
        print(f"| {us} us{note} | {a} us | {b} us per call |")
