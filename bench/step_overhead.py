"""The fixed cost of a decode step on a tiny model: the compiled step
against the per-kernel path, timed and counted with callgrind. See
fastdecode/benchmarks/step_overhead.py.

    python bench/step_overhead.py [--time] [--callgrind] [--threads N]
"""
import sys

from fastdecode.benchmarks import step_overhead

if __name__ == "__main__":
    sys.exit(step_overhead.main())
