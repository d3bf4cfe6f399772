#!/usr/bin/env bash
# Build the C extension with sanitizers into a virtual environment of its
# own (it installs what it needs from PyPI: the machine's Python only has to
# make a venv) and run tests under it. Any report fails the run.
#
#   tools/sanitize.sh [pytest args...]          AddressSanitizer + UBSan over the
#                                               kernel, sampler and model tests
#   tools/sanitize.sh --tsan [pytest args...]   ThreadSanitizer over the pool and
#                                               concurrency tests
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=address
if [ "${1:-}" = "--tsan" ]; then
  MODE=thread
  shift
fi
VENV=${SAN_VENV:-.venv-san}
PY="$VENV/bin/python"
if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV"
  "$PY" -m pip install -q --upgrade pip
fi
# build requirements (the build runs without isolation, against these) and
# fastdecode's run-time and test dependencies; no torch: tests that compare
# with it skip
"$PY" -m pip install -q "scikit-build-core>=0.10" "cython>=3.0" "cython-cmake>=0.2" cmake ninja \
    numpy scipy safetensors tokenizers tqdm jinja2 gguf pytest hypothesis
"$PY" -m pip install -q --no-build-isolation --no-deps --force-reinstall -Cbuild-dir="build/san-$MODE" \
    -Ccmake.define.FASTDECODE_SANITIZE="$MODE" .

export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
# die_after_fork=0: test_pool forks a child after the pool started (the child starts its own)
export TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:die_after_fork=0
if [ "$MODE" = address ]; then
  # Python's own allocations are not leaks worth reporting here; the kernels'
  # reads and writes out of bounds, use after free and UB are.
  PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)"
  if [ $# -eq 0 ]; then
    set -- $(ls tests/test_softmax.py tests/test_sampling*.py tests/test_attention*.py tests/test_linear.py \
      tests/test_norm.py tests/test_native_bounds.py tests/test_formats.py tests/test_fuzz.py tests/test_model_*.py 2>/dev/null)
  fi
else
  PRELOAD="$(gcc -print-file-name=libtsan.so)"
  if [ $# -eq 0 ]; then
    set -- tests/test_pool.py tests/test_threads_leaks.py
  fi
fi
# the sanitizer runtimes' mappings need the fixed address layout on some kernels
RUN=()
if command -v setarch >/dev/null && setarch "$(uname -m)" -R true 2>/dev/null; then
  RUN=(setarch "$(uname -m)" -R)
fi
# the installed build is imported (src/ is not on the path from here)
LD_PRELOAD="$PRELOAD" "${RUN[@]}" "$PY" -c "import fastdecode as fd; assert fd.get_backend() == 'c'; \
print('sanitized build:', fd.__file__, fd.backend_info()['build_flags'])"
# fd 2 stays the terminal (--capture=sys): reports are seen
LD_PRELOAD="$PRELOAD" "${RUN[@]}" "$PY" -m pytest -q -p no:cacheprovider --capture=sys "$@"
