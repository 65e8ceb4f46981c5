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

# pip's own output (what it downloads and installs) is the progress of the two installs
# below, which take minutes on a fresh machine: without it the terminal sits silent.
if ! "$vpy" -c 'import torch' >/dev/null 2>&1; then
  echo "setup: installing torch==2.13.0 into .venv: the largest download (hundreds of MB," \
    "more with CUDA libraries), usually a few minutes" >&2
  "$vpy" -m pip install --disable-pip-version-check torch==2.13.0
fi

# Reinstall only when pyproject.toml or the extras changed since the last install.
stamp=.venv/.scratchlm-install
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $extras"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing scratchlm[$extras] and its dependencies into .venv" \
    "(numpy, regex, safetensors, tqdm and the extras' packages), about a minute" >&2
  "$vpy" -m pip install --disable-pip-version-check -e ".[$extras]"
  echo "$want" > "$stamp"
  echo "setup: done" >&2
else
  echo "setup: .venv is up to date" >&2
fi
