#!/usr/bin/env bash
# Creates .venv (if absent) and installs scratchlm into it with the given extras.
# Usage: scripts/setup.sh [EXTRAS]   e.g. scripts/setup.sh dev,hf,fast
# torch is installed as the pinned CPU build only when no torch is importable, so a
# CUDA build that is already there is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=${1:-fast}

py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "error: scratchlm needs Python >= 3.11 (found $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
}
[ -x .venv/bin/python ] || "$py" -m venv .venv
vpy=.venv/bin/python

if ! "$vpy" -c 'import torch' >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0" >&2
  "$vpy" -m pip install -q torch==2.13.0
fi

# Reinstall only when pyproject.toml or the extras changed since the last install.
stamp=.venv/.scratchlm-install
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing scratchlm[$extras] into .venv" >&2
  "$vpy" -m pip install -q -e ".[$extras]"
  echo "$want" > "$stamp"
fi
