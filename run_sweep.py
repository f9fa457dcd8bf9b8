"""Run an ablation sweep: `python run_sweep.py sweeps/tiny_table4.yaml` (see harness/sweep/cli.py)."""
import sys

from harness.sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
