#!/usr/bin/env bash
# The main job: set up the environment, then run the offline walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
# Train a CNN on digits 0-4, register it as your own model, reuse it frozen for digits 5-9 with a
# few labels: cached features, a new head, a cut-layer sweep (plot) and a from-scratch baseline.
# Uses this checkout's project catalog, ./catalog.db (made by `zoo init`, kept if there; or $ZOO_CATALOG);
# the cache is zoo's home (ZOO_HOME). Safe to run twice.
if [ -z "${ZOO_CATALOG:-}" ]; then .venv/bin/zoo init; fi
.venv/bin/zoo walkthrough --out out/walkthrough
