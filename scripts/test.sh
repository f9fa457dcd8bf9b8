#!/usr/bin/env bash
# The test command: set up .venv, start a real single-node SLURM (needs root and apt; without them the
# SLURM tests skip and say why), run the whole suite, stop SLURM again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if bash scripts/local_slurm.sh start; then
    trap 'bash scripts/local_slurm.sh stop' EXIT
    eval "$(bash scripts/local_slurm.sh env)"
else
    echo "local SLURM could not start: the SLURM tests will be skipped" >&2
fi
.venv/bin/python -m pytest -q "$@"
