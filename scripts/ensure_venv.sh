#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and print its path.
#
# Two layers, so that clones share the big download but never each other's code:
#  - the package venv (~7 GB) lives outside the clone, keyed by a hash of
#    requirements/lock.txt: reused while the lock is unchanged, rebuilt from scratch when
#    the lock changes or the venv is missing or broken. It holds the packages only, never a
#    clone. Override its location with AMYLOIDKD_VENV=/path/to/venv.
#  - a tiny per-clone venv (a few kB), keyed by the clone's path: its site-packages points
#    at the package venv (a .pth file) and holds the editable install of this clone, so its
#    python and `amyloidkd` always run this checkout. Override with AMYLOIDKD_CLONE_VENV.
# The printed path is the per-clone venv. Builds of either layer take a lock (flock), so
# concurrent calls wait for each other instead of clobbering a half-built venv.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lock="$repo/requirements/lock.txt"
python="${PYTHON:-python3}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/amyloidkd"
key="$(sha256sum < "$lock" | cut -c1-12)"
venv="${AMYLOIDKD_VENV:-$cache/venv-$key}"
clone_key="$(printf '%s' "$repo" | sha256sum | cut -c1-12)"
clone_venv="${AMYLOIDKD_CLONE_VENV:-$cache/clones/$(basename "$repo")-$clone_key}"
log() { printf '[venv] %s\n' "$*" >&2; }

healthy() {
  [ -x "$venv/bin/python" ] && [ -f "$venv/.lock-complete" ] \
    && "$venv/bin/python" -c "import torch, torchvision, ants, open_clip, peft, nibabel" 2>/dev/null
}

mkdir -p "$(dirname "$venv")" "$(dirname "$clone_venv")"

if ! healthy; then
  exec 8>"$venv.build-lock"
  flock 8
  if ! healthy; then  # another caller may have built it while we waited
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
  flock -u 8
fi

# The per-clone venv: rebuilt when missing, half-built, pointing at another package venv,
# or no longer importing this clone's AmyloidKDLib (cheap: a few seconds).
clone_ready() {
  [ -f "$clone_venv/.amyloidkd-ready" ] \
    && [ "$(cat "$clone_venv/.amyloidkd-ready")" = "$venv $repo" ] \
    && "$clone_venv/bin/python" -I - "$repo" <<'EOF' 2>/dev/null
import os, sys
import AmyloidKDLib
sys.exit(os.path.dirname(os.path.realpath(AmyloidKDLib.__file__))
         != os.path.realpath(os.path.join(sys.argv[1], "AmyloidKDLib")))
EOF
}

if ! clone_ready; then
  exec 9>"$clone_venv.build-lock"
  flock 9
  if ! clone_ready; then
    log "linking this checkout ($repo) to $venv in $clone_venv"
    rm -rf "$clone_venv"
    "$venv/bin/python" -m venv --without-pip "$clone_venv"
    shared_site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    clone_site="$("$clone_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    # addsitedir (not a bare path) so the package venv's own .pth files are processed too;
    # this file sorts after the editable install's, so this clone comes first on the path.
    printf 'import site; site.addsitedir(%s)\n' "'$shared_site'" > "$clone_site/_amyloidkd_packages.pth"
    if ! "$clone_venv/bin/python" -m pip install --no-deps --no-build-isolation --no-index \
           -e "$repo" >"$clone_venv/editable.log" 2>&1; then
      cat "$clone_venv/editable.log" >&2
      exit 1
    fi
    echo "$venv $repo" > "$clone_venv/.amyloidkd-ready"
  fi
  flock -u 9
fi
echo "$clone_venv"
