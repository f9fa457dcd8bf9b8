"""Startup time of every command line: wall time of `--help` (what a user waits for before anything
happens), the median of several fresh interpreters. Target: under 1 s each. With `--sweep`, the read-only verbs
on a finished sweep too: `logs` (target under 0.5 s), `status` and `table` (under 3 s for the 12-run demo), a
dry run, and an error about the sweep file (a misspelt key in a copy of it).

    python benchmarks/bench_startup.py                    # this checkout
    python benchmarks/bench_startup.py --root /other/checkout --repeat 3
    python benchmarks/bench_startup.py --sweep sweeps/tiny_table4.yaml --row PTC   # after the sweep has run

`--help` answers before torch, mlflow or hydra are imported, and the read-only verbs never import torch
(tests/test_cli.py and tests/test_table.py check the imports; this measures the time). A bare interpreter
(`python -c pass`) is the floor.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
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


def read_only_commands(sweep: Path, row: str, misspelt: Path) -> list[list[str]]:
    """The read-only verbs on a finished sweep, and an error about a sweep file."""
    misspelt.write_text(sweep.read_text().replace("seeds:", "sedes:", 1))
    path = str(sweep.resolve())
    return [["run_sweep.py", "logs", path, row], ["run_sweep.py", "status", path], ["run_sweep.py", "table", path],
            ["run_sweep.py", path, "--dry-run"], ["run_sweep.py", "status", str(misspelt)]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sweep", type=Path, help="a finished sweep's file: time its read-only verbs too")
    parser.add_argument("--row", default="0", help="with --sweep: the run `logs` prints (a row label, piece or index)")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, root {args.root}, median of {args.repeat}")
    with tempfile.TemporaryDirectory() as scratch:
        commands = COMMANDS + (read_only_commands(args.sweep, args.row, Path(scratch) / args.sweep.name)
                               if args.sweep else [])
        for command in commands:
            times = [wall_time(command, args.root) for _ in range(args.repeat)]
            shown = " ".join(["python", *command]).replace(scratch + os.sep, "")
            print(f"{shown:<48} {statistics.median(times):6.2f} s")


if __name__ == "__main__":
    main()
