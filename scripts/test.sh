#!/usr/bin/env bash
# The whole test suite (slow tests included): set up the environment, then run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
exec .venv/bin/python -m pytest -q "$@"
