#!/usr/bin/env bash
# Create or refresh ./.venv with zoo and everything its tests need. Safe to run twice:
# pip runs again only when pyproject.toml changed since the last install.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.zoo-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! .venv/bin/python -c "import zoo" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    # torch: the range in pyproject.toml admits the local CPU wheel, never a CUDA build.
    .venv/bin/python -m pip install --quiet -e '.[all,test]'
    touch "$stamp"
fi
