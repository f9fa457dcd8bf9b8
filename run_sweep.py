"""Run an ablation sweep: `python run_sweep.py sweeps/tiny_table4.yaml` (see commands/cli.py)."""
import sys

from commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
