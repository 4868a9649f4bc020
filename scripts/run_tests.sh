#!/usr/bin/env bash
# Run the pytest suite in the given venv. "No tests collected" (pytest exit 5) is a failure.
# The suite runs on two worker processes (pytest-xdist; each test file stays on one worker, so
# module fixtures are built once): on a 2-core machine that is what keeps `make test` under
# 10 minutes. AMYLOIDKD_TEST_WORKERS=N picks another number; 0 runs everything in this process.
set -uo pipefail
venv="$1"; shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 PYTHONHASHSEED=0
cores="$(nproc 2>/dev/null || echo 1)"
workers="${AMYLOIDKD_TEST_WORKERS:-$(( cores >= 2 ? 2 : 0 ))}"
parallel=()
if [ "$workers" -gt 0 ]; then
  parallel=(-n "$workers" --dist loadfile)
fi
"$venv/bin/python" -m pytest --durations=15 "${parallel[@]}" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests - treating as failure" >&2
  exit 1
fi
exit "$rc"
