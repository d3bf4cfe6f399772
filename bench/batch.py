"""Batch throughput: generate_many at B = 1, 4, 16, 64 against one-by-one
generate(), and the same job on a local Ray cluster and a Dask
LocalCluster. See fastdecode/benchmarks/batch.py.

    python bench/batch.py [--prompts 256] [--prompt-tokens 16,128] [--new-tokens 32,256]
                          [--batch 1,4,16,64] [--threads 2] [--engines ray,dask|none] [--rounds 3] [--json PATH]
"""
import sys

from fastdecode.benchmarks import batch

if __name__ == "__main__":
    sys.exit(batch.main())
