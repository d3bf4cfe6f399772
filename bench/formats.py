"""Weight formats against float32: KL divergence, greedy agreement, RSS per
format on the decode benchmark's checkpoints. See fastdecode/benchmarks/formats.py.

    python bench/formats.py [--models gpt2-124m,llama-125m] [--positions 256] [--json PATH]
"""
import sys

from fastdecode.benchmarks import formats

if __name__ == "__main__":
    sys.exit(formats.main())
