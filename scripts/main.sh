#!/usr/bin/env bash
# The main job: set up the environment, then run the offline walkthrough.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/venv.sh
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-3}
.venv/bin/zoo search resnet
.venv/bin/zoo search --framework tensorflow --limit 5
.venv/bin/zoo info bvlc_alexnet
