"""The zoo beside the official codes, on the CPU: max |diff| of the outputs and the speed of a training step.

    python benchmarks/bench_official.py --pixeldit PATH --jit PATH --dit PATH --diffit PATH --repa PATH \
        [--batch 8] [--rounds 7] [--threads 1]
    python benchmarks/bench_official.py --fixtures-only       # parity on the committed fixtures, no official code

PATHs are checkouts of the official repositories (tests/fixtures/official/README.md lists the commits); the
official modules are imported from there with the fixtures' loader (tests/fixtures/official/make_fixtures.py),
nothing of them is in this repository. Each case of the fixtures is built wider (width 256, 4 heads, 64
tokens), its official weights randomised as for the fixtures and converted (`models.convert`); then

  parity: max |ours - official| of the forward in float32, eval mode, on the fixture inputs' conventions;
  speed:  forward + backward + AdamW step of a batch, in float32 on the CPU with `--threads` threads,
          ours and official alternating for `--rounds` rounds after one warm-up step each; the median.
First, the same parity on the committed golden fixtures themselves (tests/fixtures/official).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.convert import convert_state_dict  # noqa: E402
from models.families import build_model  # noqa: E402
from models.presets import model_config  # noqa: E402


def fixtures_module():
    path = ROOT / "tests" / "fixtures" / "official" / "make_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Each fixture case made wider: (official keyword changes, our overrides, image side, channels).
WIDER = {
    "pixeldit_pre": (dict(hidden_size=256, num_groups=4),
                     ["hidden_size=256", "num_heads=4", "input_size=32", "repa=false"], 32),
    "pixeldit_post": (dict(hidden_size=256, num_groups=4), ["hidden_size=256", "num_heads=4", "input_size=32"], 32),
    "jit": (dict(hidden_size=256, num_heads=4, input_size=32), ["hidden_size=256", "num_heads=4", "input_size=32"], 32),
    "dit": (dict(hidden_size=256, num_heads=4, input_size=16), ["hidden_size=256", "num_heads=4", "input_size=16"], 16),
    "diffit_latent": (dict(hidden_size=256, num_heads=4, input_size=16),
                      ["hidden_size=256", "num_heads=4", "input_size=16"], 16),
    "sit_repa": (dict(hidden_size=256, decoder_hidden_size=256, num_heads=4, input_size=16),
                 ["hidden_size=256", "num_heads=4", "input_size=16"], 16),
}


def outputs(output) -> tuple:
    """(prediction, REPA features or None) of ours (a ModelOutput), SiT ((x, [zs])) or any other official model."""
    if hasattr(output, "prediction"):
        return output.prediction, output.repa
    return (output[0], output[1][0]) if isinstance(output, tuple) else (output, None)


def step_time(model, inputs, optimizer) -> float:
    start = time.perf_counter()
    pred, features = outputs(model(*inputs))
    loss = pred.square().mean() + (features.square().mean() if features is not None else 0)   # REPA trains too
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def fixture_parity() -> None:
    """max |ours - official| of the prediction (and REPA features) on each committed fixture."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    print("golden fixtures (tests/fixtures/official), fp32: max |ours - official|")
    for path in sorted((ROOT / "tests" / "fixtures" / "official").glob("*.safetensors")):
        with safe_open(path, "pt") as handle:
            meta = handle.metadata()
        tensors = load_file(path)
        official = {k[9:]: v for k, v in tensors.items() if k.startswith("official/")}
        cfg = model_config(meta["preset"], json.loads(meta["overrides"]))
        model = build_model(cfg).eval()
        model.load_state_dict(convert_state_dict(official, meta["source"], cfg), strict=True)
        with torch.no_grad():
            out = model(tensors["input/x"], tensors["input/t"], tensors["input/y"])
        repa = (f"  repa {(out.repa - tensors['output/repa']).abs().max():.2e}" if "output/repa" in tensors else "")
        print(f"  {path.stem:15s} prediction {(out.prediction - tensors['output/prediction']).abs().max():.2e}{repa}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for repo in ("pixeldit", "jit", "dit", "diffit", "repa"):
        parser.add_argument(f"--{repo}", type=Path)
    parser.add_argument("--fixtures-only", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    fixture_parity()
    if args.fixtures_only:
        return 0
    missing = [repo for repo in ("pixeldit", "jit", "dit", "diffit", "repa") if getattr(args, repo) is None]
    if missing:
        parser.error(f"the official checkouts --{' --'.join(missing)} are needed (or --fixtures-only)")
    fx = fixtures_module()
    fx.run_on_cpu()
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, fp32, median of {args.rounds}")
    print(f"{'case':15s} {'params':>10s} {'max|diff|':>10s} {'ours ms':>9s} {'official ms':>12s} "
          f"{'ours/official':>14s}")
    for name, (changes, overrides, size) in WIDER.items():
        case = fx.CASES[name]
        module = fx.load_module(getattr(args, case["repo"]).resolve(), case["module"], f"official_{name}")
        generator = torch.Generator().manual_seed(fx.SEED)
        official = getattr(module, case["constructor"])(**{**case["kwargs"], **changes})
        fx.randomize(official, generator)
        cfg = model_config(case["preset"], case["overrides"] + overrides)
        ours = build_model(cfg)
        ours.load_state_dict(convert_state_dict(official.state_dict(), case["source"], cfg), strict=True)
        x = torch.randn(args.batch, case["channels"], size, size, generator=generator)
        t = (torch.randint(0, 1000, (args.batch,), generator=generator) if case["t"] == fx.DDPM_T
             else torch.rand(args.batch, generator=generator))
        y = torch.randint(0, 11, (args.batch,), generator=generator)
        with torch.no_grad():
            diff = (ours.eval()(x, t, y).prediction - outputs(official.eval()(x, t, y))[0]).abs().max().item()
        ours.train(), official.train()
        optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (ours, official)]
        times = {0: [], 1: []}
        for model, optimizer in zip((ours, official), optimizers):
            step_time(model, (x, t, y), optimizer)                            # warm-up
        for _ in range(args.rounds):
            for i, (model, optimizer) in enumerate(zip((ours, official), optimizers)):
                times[i].append(step_time(model, (x, t, y), optimizer))
        mine, theirs = statistics.median(times[0]), statistics.median(times[1])
        params = sum(p.numel() for p in ours.parameters())
        print(f"{name:15s} {params:10,d} {diff:10.2e} {1e3 * mine:9.1f} {1e3 * theirs:12.1f} {mine / theirs:14.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
