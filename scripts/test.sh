#!/usr/bin/env bash
# The test command: set up .venv, install Chromium and start a real single-node SLURM (both need root
# and apt; without them those tests skip and say why), run the whole suite, stop SLURM again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
bash scripts/install_browser.sh            # Debian's Chromium for the MLflow UI test (skipped without it)
if bash scripts/local_slurm.sh start; then
    trap 'bash scripts/local_slurm.sh stop' EXIT
    eval "$(bash scripts/local_slurm.sh env)"
else
    echo "local SLURM could not start: the SLURM tests will be skipped" >&2
fi
.venv/bin/python -m pytest -q "$@"
