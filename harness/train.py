"""The command line of `python -m harness.train`: one training run, or what it would be.

    python -m harness.train [+experiment=NAME] [model=PRESET] [KEY=VALUE ...] [-v]
    python -m harness.train --help [GROUP]        experiments, presets, every field with its default and doc
    python -m harness.train +experiment=tiny_digits --cfg job    the resolved config (YAML); nothing runs
    python -m harness.train +experiment=tiny_digits --info       where it comes from: defaults, signature, delta
    python -m harness.train --switch-table [--write docs/training.md]   the loss and optimizer switches as Markdown

As hydra's own flags do (`--help`, `--cfg job`, `--info`), for a config composed with hydra's compose API.
The field docs are the comments beside the fields in harness/config.py and models/config.py
(`toolkit.docs.field_docs`); the sources and the settings without effect are the fields' metadata
(`toolkit.fields`: `cite=`, `family=`, `inert_when=`). Nothing heavy is imported to answer `--help`; hydra to
resolve; torch and mlflow only to train.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import sys
import textwrap
from pathlib import Path
from typing import Any, NamedTuple

from models.papers import cite
from toolkit.cli import COMMAND_LINE, ArgumentParser, add_verbose, quiet, run
from toolkit.docs import field_docs, switch_table, value_text, write_marked_span
from toolkit.errors import unknown
from toolkit.fields import field_meta, no_effect

from .config import TrainConfig

CONF_DIR = Path(__file__).parent / "conf"
USAGE = ("python -m harness.train [+experiment=NAME] [model=PRESET] [KEY=VALUE ...] [--cfg job] [--info] [--restart] "
         "[-v]\n"
         "       python -m harness.train --help [GROUP]\n"
         "       python -m harness.train --switch-table [--write docs/training.md]")
EXIT_INTERRUPTED = 3          # SIGTERM/SIGUSR2: a checkpoint was written; the job is requeued


def parser() -> ArgumentParser:
    p = ArgumentParser(prog="python -m harness.train", usage=USAGE, add_help=False,
                       description="One training run, configured by hydra structured configs (harness/config.py) "
                                   "and the experiments of harness/conf/experiment/.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="+experiment=NAME, model=PRESET, any field")
    p.add_argument("-h", "--help", nargs="?", const="all", metavar="GROUP",
                   help="this help: experiments, presets, and every field's default and doc (GROUP: one group only)")
    p.add_argument("-c", "--cfg", choices=["job"], help="print the resolved config (YAML) and exit; nothing runs")
    p.add_argument("--info", action="store_true",
                   help="print where the config comes from (defaults, preset, overrides), its signature and its "
                        "difference from the schema defaults, and exit")
    p.add_argument("--restart", action="store_true",
                   help="a run whose every checkpoint is damaged starts again at step 0, in its MLflow run "
                        "(without it: refused)")
    p.add_argument("--switch-table", action="store_true",
                   help="print the table of the recipe's loss and optimizer switches (Markdown), generated from "
                        "harness/config.py")
    p.add_argument("--write", type=Path, metavar="FILE",
                   help=f"with --switch-table: write it into FILE between its recipe-switch-table markers "
                        f"({RECIPE_TABLE_FILE})")
    add_verbose(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    return run(lambda: _main(argv), source="overrides")


def _main(argv: list[str]) -> int:
    args = parser().parse_intermixed_args(argv)
    if args.help is not None:
        print(help_text(args.help))
        return 0
    if args.switch_table:
        if args.write:
            write_marked_span(args.write, RECIPE_TABLE_BEGIN, RECIPE_TABLE_END, recipe_switch_table())
        else:
            print(recipe_switch_table(), end="")
        return 0
    quiet(args.verbose)
    from .configure import resolve
    if args.cfg or args.info:
        resolved = resolve(args.overrides, check_paths=False)     # data paths are the run's business
        print(resolved.recorded_yaml() if args.cfg else info_text(resolved), end="")
        return 0
    from .trainer import Interrupted, train
    try:
        result = train(resolve(args.overrides), restart=args.restart)
    except Interrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"done: {result.step} steps, run {result.run_id} in {result.run_dir}"
          + "".join(f", {k}={v:.4g}" for k, v in result.metrics.items()))
    return 0


# ---- --switch-table: docs/training.md's table of the recipe's loss and optimizer switches -------------------

RECIPE_TABLE_FILE = "docs/training.md"             # where the table lives, relative to the project root
RECIPE_TABLE_COMMAND = f"python -m harness.train --switch-table --write {RECIPE_TABLE_FILE}"
RECIPE_TABLE_BEGIN = f"<!-- recipe switch table, generated (do not edit): {RECIPE_TABLE_COMMAND} -->"
RECIPE_TABLE_END = "<!-- end recipe switch table -->"
RECIPE_GROUPS = ("objective", "repa", "perceptual", "optim")   # the loss and optimizer groups (the rest: --help)


def recipe_switch_table() -> str:
    """The fields of the loss and optimizer groups as Markdown, as `python -m models.inspect --switch-table`
    gives the model's: values, doc, citations, when each has no effect."""
    defaults = TrainConfig()
    return "\n".join(switch_table(type(getattr(defaults, group)), prefix=f"{group}.", untitled=group)
                     for group in RECIPE_GROUPS)


# ---- --help ------------------------------------------------------------------------------------------

def experiments() -> dict[str, str]:
    """Experiment name -> the first sentence of its file's header comment."""
    out = {}
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        lines = []
        for line in path.read_text().splitlines():
            if not line.startswith("#"):
                break
            if not line.startswith("# @package"):
                lines.append(line.lstrip("#").strip())
        text = " ".join(lines)
        out[path.stem] = re.split(r"\.\s+(?=[A-Z])", text)[0].rstrip(".")
    return out


def groups() -> list[str]:
    """The config groups: the sections of `TrainConfig` (model, objective, data, ...)."""
    defaults = TrainConfig()
    return [f.name for f in dataclasses.fields(defaults) if dataclasses.is_dataclass(getattr(defaults, f.name))]


class FieldHelp(NamedTuple):
    key: str                   # dotted
    default: Any
    choices: tuple | None      # the allowed values, None: any of its type
    doc: str                   # its comment
    cite: dict                 # paper key -> where that paper sets it
    no_effect: str             # when it has no effect ("" when it always acts)


def fields(node, prefix: str = ""):
    """Every leaf field's `FieldHelp`, in declaration order."""
    cls = type(node)
    docs, metas = field_docs(cls), field_meta(cls)
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            yield from fields(value, f"{prefix}{f.name}.")
        else:
            meta = metas[f.name]
            yield FieldHelp(f"{prefix}{f.name}", value, meta.choices, docs.get(f.name, ""), meta.cite,
                            no_effect(cls, f.name))


def help_text(group: str = "all") -> str:
    from models.presets import preset_names
    names = groups()
    if group not in ("all", *names):
        raise unknown("--help", group, ["all", *names], "config group").at(source=COMMAND_LINE)
    width = shutil.get_terminal_size((120, 24)).columns
    wrap = lambda text, indent: textwrap.fill(text, width, initial_indent=indent,          # noqa: E731
                                              subsequent_indent=indent, break_on_hyphens=False)
    out = [f"usage: {USAGE}"]
    if group == "all":
        out += ["", parser().description, "",
                "options:",
                "  -h, --help [GROUP]  this help, or one config group's fields (" + ", ".join(names) + ")",
                "  -c, --cfg job       print the resolved config (YAML) and exit; nothing runs",
                "  --info              where the config comes from, its signature and difference from the defaults",
                "  --restart           a run whose every checkpoint is damaged starts again at step 0 (else refused)",
                "  -v, --verbose       let libraries talk (MLflow INFO lines, run links)", "",
                "experiments (+experiment=NAME, harness/conf/experiment/):"]
        described = experiments()
        name_width = max(map(len, described))
        for name, text in described.items():
            line = f"  {name:<{name_width}}  {text}"
            out.append(line if len(line) <= width else line[:width - 4].rsplit(" ", 1)[0] + " ...")
        out += ["", "model presets (model=PRESET, models/presets.py; default pixeldit_xl):",
                wrap(", ".join(preset_names()), "  "), "",
                "config groups: KEY=VALUE overrides any field below (its default; {its allowed values}; its doc;",
                "where each paper sets it, [KEY] of models/papers.py; the settings under which it has no effect).",
                "An experiment or preset changes some defaults: --cfg job shows the resolved values."]
    for name in names if group == "all" else [group]:
        out += ["", f"{name}:"]
        for item in fields(getattr(TrainConfig(), name), f"{name}."):
            out.append(f"  {item.key}={value_text(item.default)}" + (" {" + ", ".join(item.choices) + "}"
                                                                  if item.choices else ""))
            if item.doc:
                out.append(wrap(item.doc, "      "))
            if item.cite:
                out.append(wrap("sources: " + "; ".join(cite(paper, where, short=True)
                                                        for paper, where in item.cite.items()), "      "))
            if item.no_effect:
                out.append(wrap(f"no effect when {item.no_effect}", "      "))
    return "\n".join(out)


# ---- --info ------------------------------------------------------------------------------------------

def info_text(resolved) -> str:
    from .configure import SIGNATURE_VERSION, result_delta
    from .tracking import tracking_uri
    cfg = resolved.cfg
    run_dir = Path(cfg.run.out_dir) / cfg.run.name
    delta = resolved.interpolated.shown(result_delta(cfg))      # `${oc.env:...}` as written, never its value
    lines = [f"config search path: {CONF_DIR} (train.yaml, experiment/*.yaml)",
             "schema: harness/config.py TrainConfig; model presets: models/presets.py",
             f"defaults: train_schema, model: {resolved.model_preset}, experiment: {cfg.experiment}",
             f"overrides: {' '.join(resolved.overrides) or '(none)'}",
             f"run folder: {run_dir}",
             f"tracking: {tracking_uri(cfg.tracking, run_dir)}, experiment {cfg.tracking.experiment!r}",
             f"signature: {resolved.signature} (version {SIGNATURE_VERSION})",
             f"differences from the schema defaults that change the result ({len(delta)}; they make the signature):"]
    lines += [f"  {key}={value_text(value)}" for key, value in delta.items()]
    return resolved.interpolated.hide("\n".join(lines) + "\n")



if __name__ == "__main__":
    sys.exit(main())
