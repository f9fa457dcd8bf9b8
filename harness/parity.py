"""Parity with the official codes beyond the forward pass: training losses, time sampling, guidance and samplers,
on golden fixtures made by running the official code (tests/fixtures/official/make_parity_fixtures.py; the
format is documented in tests/fixtures/official/README.md, "Parity fixtures").

    python -m harness.parity tests/fixtures/official/dit_parity.safetensors          # a table
    python -m harness.parity tests/fixtures/official/dit_parity.safetensors --json   # {"loss/vlb": 2.4e-07, ...}

For each case of the fixture the harness config (the fixture's overrides, e.g. `+experiment=dit_xl2_paper` and
the tiny model's sizes, plus the case's) is composed, the official weights are converted (`models.convert`) and
our code computes what the official code did:
  loss      `harness.losses.training_losses`, one sample at a time, on the official x, labels, noise, time
            (and REPA target tokens): every per-sample term the official code reports;
  time      `objective.sample_t` from a torch.Generator seeded as the official code's stream: the times the
            network sees;
  guidance  `harness.sampling.Guidance` at the official states and times: flow, the guided velocity in the
            official time's direction; ddpm, the guided eps and the conditional variance channels;
  sample    `harness.sampling.sample` from the official initial noise (a stochastic sampler's later draws
            regenerated from the recorded seed, shape and dtype): the final samples.
It prints the largest difference of every quantity, max |ours - official| / max(1, max |official|) (absolute
for values of order one, relative for larger ones); the exit status is 1 when one exceeds its kind's
tolerance (TOLERANCES), 2 for a file it cannot read. `key=value` overrides after the file are added to every
case: `python -m harness.parity dit_parity.safetensors eval.sampler.cfg_channels=null` shows what DiT's
guided channels change.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

from toolkit.cli import ArgumentParser, run
from toolkit.errors import ConfigError

FORMAT = "ditlab-parity/1"
# the largest difference (`max_diff`) accepted in float32 (loss terms 1e-5, sampled images 1e-4)
TOLERANCES = {"loss": 1e-5, "time": 1e-6, "guidance": 1e-5, "sample": 1e-4}
# REPA logs its projection term as mean(-cos); ours (and PixelDiT's) is mean(1 - cos): the same gradients
REPA_TERMS = {"1-cos": 0.0, "-cos": -1.0}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of a parity fixture, its JSON fields parsed; a file of another format is refused."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise ConfigError(None, reason="file does not exist", source=str(path))
    try:
        with safe_open(str(path), "pt") as handle:
            meta = dict(handle.metadata() or {})
    except Exception as err:        # safetensors raises its own error types for unreadable files
        raise ConfigError(None, reason=f"not a safetensors file ({err})", source=str(path)) from None
    if meta.get("format") != FORMAT:
        raise ConfigError("format", meta.get("format"), f"not a parity fixture (expected {FORMAT!r})",
                          source=str(path))
    for key in ("config", "cases", "official"):
        meta[key] = json.loads(meta[key])
    return meta


def case_config(overrides: list[str], source: str):
    """The harness config of a case: hydra composition of the overrides, then the checks of the model, the
    objective and the sampler (not of data paths or VAE latents: nothing is trained)."""
    from omegaconf import OmegaConf

    from .configure import compose_config
    from .objectives import validate_objective
    from .sampling import validate_sampler
    cfg = OmegaConf.to_object(compose_config(overrides, source)[0])
    cfg.model.validate()
    validate_objective(cfg.objective, cfg.model)
    validate_sampler(cfg.eval.sampler, cfg.objective.kind, cfg.objective.ddpm_steps)
    return cfg


def harness_time(objective, t_official):
    """The official code's time as the harness's: the DDPM step k, or flow t (SiT's reversed)."""
    if objective.kind == "ddpm":
        return t_official.long()
    if objective.kind == "flow":
        return 1.0 - t_official.float() if objective.reversed else t_official.float()
    raise ConfigError("objective.kind", objective.kind, "no parity fixtures for this objective")


def max_diff(ours, official) -> float:
    """max |ours - official| / max(1, max |official|): the absolute difference for values of order one, the
    relative one for larger values (a velocity near t = 1, a random tiny model's far-off samples)."""
    if ours.shape != official.shape:
        raise ConfigError(None, reason=f"ours has shape {tuple(ours.shape)}, the official {tuple(official.shape)}")
    official = official.float()
    return float((ours.float() - official).abs().max() / official.abs().max().clamp(min=1.0))


def check_loss(model, objective, cfg, data: dict, spec: dict) -> dict[str, float]:
    import torch

    from .losses import training_losses
    t = harness_time(objective, data["t"])
    features = data.get("features") if cfg.model.repa and cfg.repa.weight > 0 else None   # as the trainer
    ours: dict[str, list] = {}
    for i in range(data["x"].shape[0]):
        draws = {"drop": torch.zeros(1, dtype=torch.bool), "t": t[i:i + 1], "eps": data["noise"][i:i + 1]}
        encoder = None if features is None else (lambda x, f=features[i:i + 1]: f)
        terms = training_losses(model, objective, cfg, data["x"][i:i + 1], data["y"][i:i + 1], draws, encoder)
        for key, value in terms.items():
            ours.setdefault(key, []).append(value.reshape(1))
    offset = REPA_TERMS[spec.get("repa_term", "1-cos")]
    out = {}
    for term, official in data["loss"].items():
        if term not in ours:
            raise ConfigError(None, reason=f"the official loss has a term {term!r}, ours only {sorted(ours)}")
        out[term] = max_diff(torch.cat(ours[term]) + (offset if term == "repa" else 0.0), official)
    return out


def check_time(objective, data: dict, spec: dict) -> dict[str, float]:
    import torch
    t = objective.sample_t(spec["n"], torch.Generator().manual_seed(spec["seed"]), "cpu")
    return {"t": max_diff(objective.network_time(t), data["t"].float())}


def check_guidance(net, objective, cfg, data: dict) -> dict[str, float]:
    import torch

    from .sampling import Guidance
    guidance = Guidance(net, objective, cfg.eval.sampler, data["y"], cfg.model.num_classes)
    ours = []
    for x, t_official in zip(data["x"], data["t"]):
        t = harness_time(objective, t_official.reshape(1))
        if objective.kind == "flow":             # the velocity along the official time
            v = guidance.velocity(x, float(t))
            ours.append(-v if objective.reversed else v)
        else:
            eps, var_raw = guidance.eps(x, int(t))
            ours.append(eps if var_raw is None else torch.cat([eps, var_raw], dim=1))
    return {"output": max_diff(torch.stack(ours), data["output"])}


def official_draws(noise, spec: dict | None) -> Callable:
    """The normal draws of the official sampler: first its initial noise, then (a stochastic sampler) its own
    draws, regenerated: torch's CPU stream from `seed`, each draw of `shape` and `dtype`, its first `rows` rows."""
    import torch
    generator = torch.Generator().manual_seed(spec["seed"]) if spec else None
    calls = []

    def draw(shape):
        calls.append(shape)
        if len(calls) == 1:
            if tuple(shape) != tuple(noise.shape):
                raise ConfigError(None, reason=f"the sampler draws {tuple(shape)}, the fixture's noise is "
                                               f"{tuple(noise.shape)}")
            return noise
        if spec is None:
            raise ConfigError(None, reason="our sampler is stochastic, the fixture has no official draws")
        value = torch.randn(spec["shape"], generator=generator, dtype=getattr(torch, spec["dtype"]))
        return value[:spec["rows"]].float().reshape(shape)
    return draw


def check_sample(net, objective, cfg, data: dict, spec: dict) -> dict[str, float]:
    from .sampling import sample
    noise = data["noise"]
    out = sample(net, objective, cfg.eval.sampler, data["y"], tuple(noise.shape[1:]), None, cfg.model.num_classes,
                 normal=official_draws(noise, spec.get("draws")))
    return {"output": max_diff(out, data["output"])}


def check(path: str | Path, overrides: list[str] = (), cases: list[str] | None = None) -> dict[str, float]:
    """{"<case>/<quantity>": max_diff(ours, official)} of a parity fixture (of the named `cases`, default all);
    `overrides` are added to every case's config (to see what a setting changes)."""
    import torch
    from safetensors.torch import load_file

    from models.convert import convert_state_dict
    from models.transformer import build_model

    from .objectives import make_objective
    meta = read_metadata(path)
    tensors = load_file(str(path))
    official = {k[len("official/"):]: v for k, v in tensors.items() if k.startswith("official/")}
    unknown = sorted(set(cases or ()) - set(meta["cases"]))
    if unknown:
        raise ConfigError("cases", unknown[0], f"no case of that name, expected one of {list(meta['cases'])}",
                          source=str(path))
    results: dict[str, float] = {}
    for case, spec in meta["cases"].items():
        if cases is not None and case not in cases:
            continue
        if spec.get("kind") not in TOLERANCES:
            raise ConfigError(f"cases.{case}.kind", spec.get("kind"), f"expected one of {list(TOLERANCES)}",
                              source=str(path))
        if spec.get("repa_term", "1-cos") not in REPA_TERMS:
            raise ConfigError(f"cases.{case}.repa_term", spec["repa_term"], f"expected one of {list(REPA_TERMS)}",
                              source=str(path))
        cfg = case_config(meta["config"] + spec.get("overrides", []) + list(overrides), str(path))
        objective = make_objective(cfg.objective, cfg.model)
        model = build_model(cfg.model).eval()
        model.load_state_dict(convert_state_dict(official, meta["source"], cfg.model), strict=True)
        net = lambda x, t, y: model(x, t, y).prediction.float()     # noqa: E731 (as evaluation samples)
        data = nested({k[len(case) + 1:]: v for k, v in tensors.items() if k.startswith(f"{case}/")})
        with torch.no_grad():
            found = {"loss": lambda: check_loss(model, objective, cfg, data, spec),
                     "time": lambda: check_time(objective, data, spec),
                     "guidance": lambda: check_guidance(net, objective, cfg, data),
                     "sample": lambda: check_sample(net, objective, cfg, data, spec)}[spec["kind"]]()
        results.update({f"{case}/{quantity}": value for quantity, value in found.items()})
    return results


def nested(flat: dict) -> dict:
    """{"loss/vlb": v, "x": x} -> {"loss": {"vlb": v}, "x": x} (one level)."""
    out: dict = {}
    for key, value in flat.items():
        if "/" in key:
            head, tail = key.split("/", 1)
            out.setdefault(head, {})[tail] = value
        else:
            out[key] = value
    return out


def exceeded(path: str | Path, results: dict[str, float]) -> list[str]:
    """The quantities beyond their kind's tolerance."""
    kinds = {case: spec["kind"] for case, spec in read_metadata(path)["cases"].items()}
    return [key for key, value in results.items() if not value <= TOLERANCES[kinds[key.split("/")[0]]]]


def main(argv: list[str] | None = None) -> int:
    return run(lambda: _main(sys.argv[1:] if argv is None else argv))


def _main(argv: list[str]) -> int:
    parser = ArgumentParser(prog="python -m harness.parity", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fixture", help="a parity fixture (.safetensors)")
    parser.add_argument("overrides", nargs="*", help="key=value added to every case's config, e.g. "
                                                     "eval.sampler.cfg_channels=null")
    parser.add_argument("--json", action="store_true", help="print one JSON object: quantity -> max |diff|")
    args = parser.parse_args(argv)
    results = check(args.fixture, args.overrides)
    over = exceeded(args.fixture, results)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        width = max(len(key) for key in results)
        for key, value in results.items():
            print(f"{key:<{width}}  {value:.2e}" + ("  over tolerance" if key in over else ""))
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
