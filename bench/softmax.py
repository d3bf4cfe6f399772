"""Softmax: fastdecode's C kernel against NumPy, SciPy and PyTorch.

    python bench/softmax.py [--threads 1,all] [--quick] [--json PATH]
"""
import sys

from fastdecode.benchmarks import harness, softmax

if __name__ == "__main__":
    sys.exit(harness.main([softmax], description=__doc__))
