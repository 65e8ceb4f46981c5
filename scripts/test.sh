#!/usr/bin/env bash
# The test suite: set up .venv with test and interop extras (and the browser the page test
# drives, and the evaluation data of tests/evals), then run pytest.
# pytest exits 5 when it collected no tests; that is a failure here too.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,hf,fast,data,plot,serve,gguf,eval,tune
bash scripts/install_eval_data.sh
bash scripts/install_browser.sh
exec .venv/bin/python -m pytest "$@"
