"""LayerNorm / RMSNorm: fastdecode's C kernel against its NumPy reference and PyTorch.

    python bench/norm.py [--threads 1,all] [--quick] [--json PATH]
"""
import sys

from fastdecode.benchmarks import harness, norm

if __name__ == "__main__":
    sys.exit(harness.main([norm], description=__doc__))
