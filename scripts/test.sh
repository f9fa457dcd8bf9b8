#!/usr/bin/env bash
# The test command: set up .venv, lint (ruff), install Chromium, pdflatex and Fashion-MNIST and start a real single-node
# SLURM (all need root and apt; without them those tests skip and say why), run the whole suite, stop SLURM.
# tests/test_multinode.py starts and stops its own 2-node cluster (scripts/multinode_slurm.sh: network
# namespaces, root) beside the single-node one, or skips saying why it could not.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .                                   # the linter (pyproject.toml [tool.ruff])
bash scripts/install_debian.sh browser latex datasets   # Chromium (UI test), pdflatex (LaTeX), Fashion-MNIST
if bash scripts/local_slurm.sh start; then
    trap 'bash scripts/local_slurm.sh stop' EXIT
    eval "$(bash scripts/local_slurm.sh env)"
else
    echo "local SLURM could not start: the SLURM tests will be skipped" >&2
fi
.venv/bin/python -m pytest -q "$@"
