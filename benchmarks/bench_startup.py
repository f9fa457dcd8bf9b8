"""Startup time of every command line: wall time of `--help` (what a user waits for before anything
happens), the median of several fresh interpreters. Target: under 1 s each.

    python benchmarks/bench_startup.py                    # this checkout
    python benchmarks/bench_startup.py --root /other/checkout --repeat 3

`--help` answers before torch, mlflow or hydra are imported (tests/test_cli.py checks the imports; this
measures the time). A bare interpreter (`python -c pass`) is the floor.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from commands.cli import COMMANDS as VERBS  # parses only: no torch, mlflow or hydra

COMMANDS = [["-c", "pass"], ["-m", "harness.train", "--help"], ["-m", "harness.audit", "--help"],
            ["-m", "models.inspect", "--help"], ["run_sweep.py", "--help"],
            *[["run_sweep.py", verb, "--help"] for verb in VERBS]]


def wall_time(args: list[str], root: Path) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, root {args.root}, median of {args.repeat}")
    for command in COMMANDS:
        times = [wall_time(command, args.root) for _ in range(args.repeat)]
        print(f"{' '.join(['python', *command]):<48} {statistics.median(times):6.2f} s")


if __name__ == "__main__":
    main()
