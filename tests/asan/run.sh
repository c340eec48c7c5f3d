#!/usr/bin/env bash
# The C++-facing tests under AddressSanitizer + UBSan (`make test-asan`).
#
# Builds csrc/ with -fsanitize=address,undefined -fno-wrapv into build/asan/ (tests/asan/build.py;
# the extension in the tree is untouched), then runs the tests that call the C++ kernels with
# that build loaded as specdecode._C (tests/asan/sitecustomize.py), child processes included.
# Any sanitizer finding aborts the process and fails the run.
#
# LD_PRELOAD: an uninstrumented python must load the ASan runtime first, and libstdc++ right
# beside it -- else ASan's interceptors resolve __cxa_throw before libstdc++ is loaded and abort
# at the first C++ exception (every TORCH_CHECK is one). detect_leaks=0: CPython and torch keep
# allocations alive at exit by design.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}

library=$("$PY" tests/asan/build.py)
export SPECDECODE_C_EXTENSION="$library"
export PYTHONPATH="$PWD/tests/asan${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"

# The Triton-only cases (their ids say triton) run no C++ code: left to `make test`.
exec "$PY" -m pytest -q -p no:cacheprovider -k "not triton" \
    tests/test_bad_input.py tests/test_rejection_sample.py tests/test_topk_prune.py tests/test_compact_kv.py \
    tests/test_losslessness.py "$@"
