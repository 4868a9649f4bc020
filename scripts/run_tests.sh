#!/usr/bin/env bash
# Run the pytest suite in the given venv. "No tests collected" (pytest exit 5) is a failure.
set -uo pipefail
venv="$1"; shift
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export MPLBACKEND=Agg HF_HUB_OFFLINE=1 PYTHONHASHSEED=0
"$venv/bin/python" -m pytest --durations=15 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run_tests: pytest collected no tests - treating as failure" >&2
  exit 1
fi
exit "$rc"
