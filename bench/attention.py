"""Attention: fastdecode's C kernel against its NumPy reference and PyTorch's
scaled_dot_product_attention; decode at 1024 and 4096 cached positions and
causal prefill, with the KV-cache read rate next to the machine's read
bandwidth (fastdecode.benchmarks.bandwidth.read_gbps).

    python bench/attention.py [--threads 1,all] [--quick] [--json PATH]
"""
import sys

from fastdecode.benchmarks import attention, harness

if __name__ == "__main__":
    sys.exit(harness.main([attention], description=__doc__))
