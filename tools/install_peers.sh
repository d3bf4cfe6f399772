#!/usr/bin/env bash
# Install the peers of bench/peers.py into one interpreter (default: python3
# on PATH; give a venv's python as $1).
#
#   tools/install_peers.sh [PYTHON]
#
# CTranslate2 and onnxruntime-genai are binary wheels (also in the `bench`
# extra: ~90 MB together with onnxruntime, onnx and onnx-ir, which the
# onnxruntime-genai model builder imports). llama-cpp-python is compiled from
# its source distribution (several minutes), so it is not in `bench`: it is
# the `peers` extra, installed here with llama.cpp's own default build for
# this CPU (GGML_NATIVE=ON). Set CMAKE_ARGS to build otherwise, e.g.
# CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON" as docs/gguf.md's build.
# A peer that is missing at run time is reported as "not installed: <name>".
set -euo pipefail
PY=${1:-python3}
"$PY" -m pip install "ctranslate2>=4.5" "onnxruntime-genai>=0.9" "onnxruntime>=1.20" "onnx>=1.16" "onnx-ir>=0.1"
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" "$PY" -m pip install --no-binary llama-cpp-python "llama-cpp-python>=0.3"
"$PY" -c "import ctranslate2, onnxruntime_genai, llama_cpp; print('peers installed:', ctranslate2.__version__, \
onnxruntime_genai.__version__, llama_cpp.__version__)"
