"""Linear (x @ W.T + b) at decode shapes: fastdecode's C kernel against NumPy and PyTorch.

    python bench/linear.py [--threads 1,all] [--quick] [--json PATH]
"""
import sys

from fastdecode.benchmarks import harness, linear

if __name__ == "__main__":
    sys.exit(harness.main([linear], description=__doc__))
