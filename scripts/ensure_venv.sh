#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path.
#
# The venv lives outside the clone, keyed by a hash of requirements/lock.txt: it is
# reused while the lock is unchanged and rebuilt from scratch when the lock changes or
# the venv is missing or broken. The project itself is installed editable from the
# clone that calls this script, so the `amyloidkd` command always runs this checkout.
# Override the location with AMYLOIDKD_VENV=/path/to/venv.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$repo/requirements/lock.txt"
python="${PYTHON:-python3}"
key="$(cat "$lock" | sha256sum | cut -c1-12)"
venv="${AMYLOIDKD_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/amyloidkd/venv-$key}"
log() { printf '[venv] %s\n' "$*" >&2; }

healthy() {
  [ -x "$venv/bin/python" ] && [ -f "$venv/.lock-complete" ] \
    && "$venv/bin/python" -c "import torch, torchvision, ants, open_clip, peft, nibabel" 2>/dev/null
}

if ! healthy; then
  log "building $venv from requirements/lock.txt (first run: a few minutes, ~7 GB)"
  rm -rf "$venv.partial"
  "$python" -m venv "$venv.partial"
  install_log="$venv.partial/install.log"
  if ! { "$venv.partial/bin/python" -m pip install --upgrade "pip>=24" \
         && "$venv.partial/bin/python" -m pip install -r "$lock"; } >"$install_log" 2>&1; then
    tail -n 30 "$install_log" >&2
    log "install failed; full log: $install_log"
    exit 1
  fi
  touch "$venv.partial/.lock-complete"
  rm -rf "$venv"
  mv "$venv.partial" "$venv"
  # venv scripts hard-code their interpreter path: rewrite them after the move.
  grep -rlI "$venv.partial" "$venv/bin" | xargs -r sed -i "s#$venv.partial#$venv#g"
fi

# Point the editable install at this clone (cheap; redone when the clone moves).
marker="$venv/.amyloidkd-source"
if [ "$(cat "$marker" 2>/dev/null)" != "$repo" ] || ! "$venv/bin/python" -c "import AmyloidKDLib" 2>/dev/null; then
  log "installing this checkout ($repo) into the venv (editable)"
  if ! "$venv/bin/python" -m pip install --no-deps --no-build-isolation -e "$repo" >"$venv/editable.log" 2>&1; then
    cat "$venv/editable.log" >&2
    exit 1
  fi
  echo "$repo" > "$marker"
fi
echo "$venv"
