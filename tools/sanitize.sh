#!/usr/bin/env bash
# Build the C extension with AddressSanitizer + UndefinedBehaviorSanitizer
# into its own virtual environment and run the kernel tests under it.
# Any report fails the run (halt_on_error / -fno-sanitize-recover).
#
#   tools/sanitize.sh [pytest args...]     (default: the kernel test files)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${SAN_VENV:-.venv-asan}
[ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
FASTDECODE_SANITIZE=ON "$VENV/bin/pip" install -q --no-build-isolation \
    -Cbuild-dir=build/asan -Ccmake.define.FASTDECODE_SANITIZE=ON -e .
ASAN_LIB=$(gcc -print-file-name=libasan.so)
UBSAN_LIB=$(gcc -print-file-name=libubsan.so)
if [ $# -eq 0 ]; then
  set -- $(ls tests/test_softmax.py tests/test_sampling*.py tests/test_attention*.py tests/test_formats.py tests/test_fuzz*.py 2>/dev/null)
fi
# Python's own allocations are not leaks worth reporting here; the kernels'
# reads and writes out of bounds, use after free and UB are.
export ASAN_OPTIONS=detect_leaks=0:halt_on_error=1:abort_on_error=1:strict_string_checks=1
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" "$VENV/bin/python" -c \
    "import fastdecode, sys; assert fastdecode.get_backend() == 'c'; print('sanitized build:', fastdecode.backend_info()['build_flags'])"
LD_PRELOAD="$ASAN_LIB $UBSAN_LIB" "$VENV/bin/python" -m pytest -q -p no:cacheprovider --capture=sys "$@"  # fd 2 stays the terminal: reports are seen
