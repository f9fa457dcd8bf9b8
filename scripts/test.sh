#!/usr/bin/env bash
# The test command: set up .venv, lint (ruff), install Chromium, pdflatex and Fashion-MNIST, start a real single-node
# SLURM and a real PostgreSQL (all need root and apt; without them those tests skip and say why), run the whole suite,
# stop SLURM and PostgreSQL.
# tests/test_multinode.py starts and stops its own 2-node cluster (scripts/multinode_slurm.sh: network
# namespaces, root) beside the single-node one, or skips saying why it could not.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check .                                   # the linter (pyproject.toml [tool.ruff])
bash scripts/install_debian.sh browser latex datasets   # Chromium (UI test), pdflatex (LaTeX), Fashion-MNIST
started=()
trap 'for service in "${started[@]}"; do bash "scripts/local_$service.sh" stop; done' EXIT
for service in slurm postgres; do
    if bash "scripts/local_$service.sh" start; then
        started+=("$service")
        eval "$(bash "scripts/local_$service.sh" env)"
    else
        echo "local $service could not start: the tests that need it will be skipped" >&2
    fi
done
.venv/bin/python -m pytest -q "$@"
