#!/usr/bin/env bash
# The main job: set up .venv, then run the default pipeline on the built-in data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh fast,serve   # serve: `scratchlm serve` works right after
exec .venv/bin/scratchlm train "$@"
