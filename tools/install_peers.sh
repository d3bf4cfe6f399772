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
# the `peers` extra, built here as CI builds it (.ci/llama-cpp: every SIMD
# extension this CPU lists, AMX off, cached per machine and CPU).
# A peer that is missing at run time is reported as "not installed: <name>".
set -euo pipefail
PY=${1:-python3}
"$PY" -m pip install "ctranslate2>=4.5" "onnxruntime-genai>=0.9" "onnxruntime>=1.20" "onnx>=1.16" "onnx-ir>=0.1"
WHEEL=$("$(dirname "$0")/../.ci/llama-cpp" "$PY" | head -n 1)
"$PY" -m pip install "$WHEEL"
"$PY" -c "import ctranslate2, onnxruntime_genai, llama_cpp; print('peers installed:', ctranslate2.__version__, \
onnxruntime_genai.__version__, llama_cpp.__version__)"
