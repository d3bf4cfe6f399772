"""Sampling: fastdecode's sort-free C sampler against the NumPy reference,
PyTorch's topk way and Hugging Face's warpers.

    python bench/sampling.py [--threads 1,all] [--quick] [--json PATH]
"""
import sys

from fastdecode.benchmarks import harness, sampling

if __name__ == "__main__":
    sys.exit(harness.main([sampling], description=__doc__))
