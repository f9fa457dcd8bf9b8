from pathlib import Path

import pytest
import torch
import yaml

from models.config import ModelConfig


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def tiny(**changes) -> ModelConfig:
    """A PixelDiT-shaped model small enough for exact behaviour checks on the CPU."""
    base = dict(input_size=16, patch_size=4, depth=2, hidden_size=32, num_heads=2, pixel_depth=1,
                pixel_dim=8, num_classes=10, repa_block=1, repa_hidden=32, repa_dim=24)
    return ModelConfig(**{**base, **changes}).validate()


def randomize(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Replace the zero init (which makes every modulation vanish) by random weights."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    return model


def inputs(cfg: ModelConfig, batch: int = 2):
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    t = torch.rand(batch)
    y = torch.randint(0, cfg.num_classes, (batch,))
    return x, t, y


# ---- samplers: a tiny data shape, its null label, and a recording network wrapper ----------------
SHAPE = (3, 4, 4)
NULL = 10


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def labels(b=4):
    return torch.arange(b) % NULL


class Recorder:
    """Wraps a net; records the batch size and the (first) network time of every forward."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, y):
        assert x.shape[0] == t.shape[0] == y.shape[0]
        self.calls.append((x.shape[0], float(t[0])))
        return self.fn(x, t, y)


def run_evaluated_sweep(folder: Path, name: str, steps: int, eval_step: int, paper: dict, **more) -> Path:
    """A real tiny sweep, run in-process (debug executor): 3 rows x 2 seeds — patch-wise and pixel-wise
    AdaLN, and a row that diverges (lr 1e12) so its runs fail — with the offline metric at `eval_step`
    and at the end. `paper` maps labels to their `paper:` numbers."""
    from harness.sweep.cli import main
    rows = [{"label": "patch-wise", "set": {"model.adaln": "B"}}, {"label": "pixel-wise", "set": {"model.adaln": "C"}},
            {"label": "diverges", "set": {"optim.lr": 1.0e12, "optim.grad_clip": 0.0}}]
    for row in rows:
        if row["label"] in paper:
            row["paper"] = paper[row["label"]]
    sweep = {"name": name, "experiment": "tiny_digits", "output": str(folder / "out"),
             "overrides": {"train.steps": steps, "train.global_batch": 16, "train.log_every": 2, "model.depth": 2,
                           "model.hidden_size": 32, "model.num_heads": 2, "checkpoint.every_steps": eval_step,
                           "eval.metric": "offline", "eval.num_samples": 40, "eval.batch_size": 20,
                           "eval.at_steps": [eval_step], "eval.sampler.steps": 3,
                           "eval.cache_dir": str(folder / "cache")},
             **more, "rows": rows, "seeds": [0, 1], "executor": {"kind": "debug"}}
    path = folder / f"{name}.yaml"
    path.write_text(f"# the {name} test sweep\n" + yaml.safe_dump(sweep, sort_keys=False))
    assert main([str(path)]) == 0
    return path
