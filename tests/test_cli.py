"""The command lines: `--help` answers without loading torch or mlflow, `python -m harness.train` shows its
experiments, presets and every field with its default and doc and prints resolved configs without running, a
sweep's dry run shows one run's config and its difference from the baseline row, and every command refuses bad
input in one line, `error: WHERE: KEY: reason (did you mean X?)`, with the closest valid key, preset, label,
option or verb."""
import dataclasses
import re
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_counting_imports, write_sweep

from commands import cli as sweep_cli
from harness import audit
from harness import train as train_cli
from harness.config import TrainConfig
from harness.configure import flatten, resolve
from models import inspect as models_inspect
from models.config import ModelConfig
from models.presets import preset_names
from toolkit.docs import field_docs

HELP_CALLS = [("harness.train", "--help"), ("harness.train", "-h"), ("harness.audit", "--help"),
              ("harness.latents", "--help"), ("harness.latents", "prepare --help"), ("harness.parity", "--help"),
              ("models.inspect", "--help"), ("run_sweep.py", "--help"),
              *[("run_sweep.py", f"{verb} --help") for verb in sweep_cli.COMMANDS]]


@pytest.mark.parametrize("target, args", HELP_CALLS)
def test_help_imports_neither_torch_nor_mlflow_nor_hydra(target, args):
    result, imported = run_counting_imports(target, *args.split())
    assert imported == [] and result.returncode == 0, result.stderr[-2000:]
    assert "usage:" in result.stdout


# ---- python -m harness.train --help / --cfg job / --info --------------------------------------------------

def test_field_docs_are_the_comments_beside_the_fields():
    model = field_docs(ModelConfig)
    assert model["num_classes"].startswith("class-conditional") and "0: unconditional" in model["num_classes"]
    assert model["adaln"].startswith("C: pixel-wise") and "B: patch-wise" in model["adaln"]   # continuation lines
    assert "----" not in model["input_size"]                    # a section comment belongs to no field
    documented = [name for name, doc in model.items() if doc]
    assert len(documented) >= 0.9 * len(model)


def test_help_lists_experiments_presets_and_every_field_with_its_default_and_doc(capsys):
    assert train_cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    experiments = sorted(p.stem for p in (ROOT / "harness" / "conf" / "experiment").glob("*.yaml"))
    assert all(f"  {name} " in text for name in experiments)
    assert all(name in text for name in preset_names())
    for key, value in flatten(TrainConfig()).items():
        if key != "experiment":
            assert f"  {key}=" in text, key
    assert "  model.adaln=C {C, A, B}\n      C: pixel-wise" in text
    assert train_cli.main(["--help", "optim"]) == 0
    group = capsys.readouterr().out
    assert "optim.lr=0.0001" in group and "model." not in group


def test_cfg_job_prints_the_resolved_config_and_runs_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = ["+experiment=tiny_digits", "model.adaln=B", "run.seed=3"]
    assert train_cli.main([*overrides, "--cfg", "job"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = resolve(overrides).cfg
    assert printed["model"] == dataclasses.asdict(expected.model) and printed["run"]["seed"] == 3
    assert train_cli.main([*overrides, "--info"]) == 0
    info = capsys.readouterr().out
    assert f"signature: {resolve(overrides).signature}" in info and "  model.adaln=B" in info
    assert "defaults: train_schema, model: pixeldit_xl, experiment: tiny_digits" in info
    assert list(tmp_path.iterdir()) == []                      # no run folder, no store


# ---- one error format, with suggestions ---------------------------------------------------------------

def sweep_file(folder: Path) -> Path:
    return write_sweep(folder, executor="debug")


@pytest.mark.parametrize("command, args, expected", [
    (train_cli, ["+experiment=tiny_digits", "train.lr=abc", "--cfg", "job"],
     "overrides: train.lr: .* \\(did you mean optim.lr\\?\\)"),
    (train_cli, ["model=pixeldit_xxl", "--cfg", "job"],
     "overrides: model='pixeldit_xxl': unknown option \\(did you mean pixeldit_xl\\?\\)"),
    (train_cli, ["+experiment=tiny_digit", "--cfg", "job"], "overrides: experiment='tiny_digit': .*tiny_digits\\?\\)"),
    (train_cli, ["--hlep"], "command line: --hlep: unrecognized argument \\(did you mean --help\\?\\)"),
    (train_cli, ["--help", "optm"], "command line: --help='optm': unknown config group \\(did you mean optim\\?\\)"),
    (audit, ["jitmask_cod"], "command line: experiment='jitmask_cod': .*\\(did you mean jitmask_code\\?\\)"),
    (models_inspect, ["pixeldit_xxl"], "command line: model='pixeldit_xxl': unknown preset "
                                       "\\(did you mean pixeldit_xl\\?\\)"),
    (sweep_cli, ["stauts", "x.yaml"], "command line: command='stauts': unknown command \\(did you mean status\\?\\)"),
    (sweep_cli, ["{sweep}", "--wiat"], "command line: --wiat: unrecognized argument \\(did you mean --wait\\?\\)"),
    (sweep_cli, ["table", "{sweep}", "--format", "latx"], "command line: --format='latx': unknown value "
                                                           "\\(did you mean latex\\?\\)"),
    (sweep_cli, ["{sweep}", "--executor", "locl"], "{sweep}: --executor='locl': .*\\(did you mean local\\?\\)"),
    (sweep_cli, ["{sweep}", "--dry-run", "--show", "pixelwise"],
     "{sweep}: --show='pixelwise': no row has this label; rows are \\['patch-wise', 'pixel-wise'\\] "
     "\\(did you mean pixel-wise\\?\\)"),
    (sweep_cli, ["{seed_typo}"], "{seed_typo}: seed: unknown key \\(did you mean seeds\\?\\)"),
])
def test_errors_are_one_line_naming_where_and_the_closest_fix(tmp_path, capsys, command, args, expected):
    sweep = sweep_file(tmp_path)
    seed_typo = tmp_path / "typo.yaml"
    seed_typo.write_text(sweep.read_text().replace("seeds:", "seed:"))
    paths = {"sweep": str(sweep), "seed_typo": str(seed_typo)}
    assert command.main([arg.format(**paths) for arg in args]) == 2
    err = capsys.readouterr().err
    pattern = "error: " + expected.replace("{sweep}", re.escape(str(sweep))).replace("{seed_typo}",
                                                                                   re.escape(str(seed_typo)))
    assert re.fullmatch(pattern + "\n", err), err
    assert not (tmp_path / "out").exists()


# ---- run_sweep.py SWEEP --dry-run --show LABEL --------------------------------------------------------

def test_show_prints_one_runs_config_and_its_difference_from_the_baseline(tmp_path, capsys):
    sweep = sweep_file(tmp_path)
    assert sweep_cli.main([str(sweep), "--dry-run", "--show", "pixel-wise", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    header, _, rest = out.partition("\n")
    assert header.startswith("# pixel-wise · seed 1: run pixel-wise-s1-")
    config = yaml.safe_load(rest)
    assert config["model"]["adaln"] == "C" and config["run"]["seed"] == 1
    assert config["tracking"]["run_name"] == "pixel-wise · seed 1"
    difference = [line for line in out.splitlines() if line.startswith("#   ")]
    assert difference == ["#   model.adaln  B -> C"]               # the seed and the bookkeeping left out
    assert sweep_cli.main([str(sweep), "--dry-run", "--show", "patch-wise"]) == 0
    assert "this is the baseline row" in capsys.readouterr().out
    assert not (tmp_path / "out").exists()
