"""End-to-end decoding: fastdecode generate() against transformers generate(),
GPT-2-124M and Llama-125M shapes, greedy and top-k + top-p, with the
bandwidth floor. See fastdecode/benchmarks/decode.py.

    python bench/decode.py [--threads 1,all] [--quick] [--rounds N] [--json PATH]
    python bench/decode.py --peers [...]   # llama.cpp, CTranslate2, onnxruntime-genai: bench/peers.py
"""
import sys

from fastdecode.benchmarks import decode

if __name__ == "__main__":
    sys.exit(decode.main())
