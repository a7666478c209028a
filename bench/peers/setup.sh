#!/usr/bin/env bash
# Create the peers' own virtualenvs under bench/peers/<peer>/venv (gitignored):
# NVIDIA FLARE and Flower at the versions the issue quotes. Their code is never
# committed here; only this script is.
#
#   bash bench/peers/setup.sh [nvflare|flwr ...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python="${PYTHON:-python3}"
declare -A pins=([nvflare]="nvflare==2.9.0" [flwr]="flwr==1.42.0")
peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(nvflare flwr)
for peer in "${peers[@]}"; do
  venv="$here/$peer/venv"
  start=$(date +%s)
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "${pins[$peer]}" numpy
  echo "$peer: $("$venv/bin/pip" show "${peer}" 2>/dev/null | grep -i '^version' || echo '?') in $venv ($(( $(date +%s) - start )) s)"
done
