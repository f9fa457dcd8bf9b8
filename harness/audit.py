"""Every field where a configuration differs from a paper's recipe, with both values and the source.

    python -m harness.audit jitmask_code --against pixeldit_xl_paper
    python -m harness.audit runs/demo/config.yaml --against pixeldit_xl_paper   # a run's resolved config
    python -m harness.audit jit_l16_paper model.adaln=B --json

This is the hand-written code-vs-paper analysis of the jitmask codebase (the project's starting point) made automatic:
only fields that change the result are compared (paths, logging and tracking are not).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from models.papers import cite
from toolkit.cli import ArgumentParser, run
from toolkit.errors import ConfigError, unknown
from toolkit.fields import meta_at

from .config import TrainConfig

# The paper each paper recipe follows: a differing key cites its field's `cite=` for that paper
# (harness/config.py, models/config.py; paper keys of models/papers.py), else the experiment file.
PAPER_OF = {"pixeldit_xl_paper": "PixelDiT", "jit_l16_paper": "JiT", "dit_xl2_paper": "DiT",
            "diffit_cifar10_paper": "DiffiT", "sit_xl2_repa_paper": "REPA", "pixelgen_xl_paper": "PixelGen"}


def source(key: str, experiment: str) -> str:
    """Where the value of `key` in an experiment's recipe comes from."""
    paper = PAPER_OF.get(experiment)
    meta = meta_at(TrainConfig(), key)
    if paper is not None and meta is not None and paper in meta.cite:
        return cite(paper, meta.cite[paper])
    return f"harness/conf/experiment/{experiment}.yaml"


def load_flat(spec: str, overrides: list[str]) -> tuple[str, dict]:
    """An experiment name, or a YAML file holding a (resolved) config, plus overrides -> flat dict."""
    from .configure import compose_config, config_error, flatten, group_options  # hydra: not for --help
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.exists():
            raise ConfigError(None, reason="file does not exist", source=spec)
        try:
            merged = OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.load(path),
                                     OmegaConf.from_dotlist(overrides))
        except OmegaConfBaseException as err:
            raise config_error(err, spec) from None
        return str(path), flatten(merged)
    if spec not in group_options("experiment"):
        raise unknown("experiment", spec, group_options("experiment"), "experiment (or a YAML file)")
    composed, _ = compose_config([f"+experiment={spec}", *overrides], source=spec)
    return spec, flatten(composed)


def differences(ours: dict, paper: dict, paper_name: str) -> list[dict]:
    from .configure import affects_result
    rows = []
    for key in paper:
        if key == "experiment" or not affects_result(key) or ours.get(key) == paper[key]:
            continue
        rows.append({"key": key, "this": ours.get(key), paper_name: paper[key],
                     "source": source(key, paper_name)})
    return rows


def main(argv: list[str] | None = None) -> int:
    return run(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m harness.audit", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="experiment name or YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides applied to the config")
    parser.add_argument("--against", default="pixeldit_xl_paper", help="the paper recipe (an experiment name)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    name, ours = load_flat(args.config, args.overrides)
    paper_name, paper = load_flat(args.against, [])
    rows = differences(ours, paper, paper_name)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(f"{len(rows)} fields of {name} differ from {paper_name}:")
    width = max((len(r["key"]) for r in rows), default=10)
    for row in rows:
        print(f"  {row['key']:<{width}}  {_fmt(row['this']):>14} vs {_fmt(row[paper_name]):<14}  {row['source']}")
    return 0


def _fmt(value) -> str:
    return "???" if value == "???" else str(value)


if __name__ == "__main__":
    sys.exit(main())
