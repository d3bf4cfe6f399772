"""Less work per answer: a session's second turn and a document's second
question against cold runs (time to first token), prompt-lookup decoding
against plain greedy (tokens/s). See fastdecode/benchmarks/less_work.py.

    python bench/less_work.py [--models llama-125m,gpt2-124m] [--rounds 5] [--threads 2] [--json PATH]
"""
import sys

from fastdecode.benchmarks import less_work

if __name__ == "__main__":
    sys.exit(less_work.main())
