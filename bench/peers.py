"""fastdecode against llama.cpp, CTranslate2, onnxruntime-genai and
transformers, every weight format, each contender in its own process.
See fastdecode/benchmarks/peers.py.

    python bench/peers.py [--threads 1,2] [--rounds 3] [--peer-python llama.cpp=/path/python] [--json PATH]
"""
import sys

from fastdecode.benchmarks import peers

if __name__ == "__main__":
    sys.exit(peers.main())
