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

from toolkit.cli import ArgumentParser, run
from toolkit.errors import ConfigError, unknown

from .config import TrainConfig

_PAPER = "PixelDiT (arXiv 2511.20645)"
_DIFFIT = "DiffiT (arXiv 2312.02139)"
_JIT = "JiT (Li & He, 'Back to Basics')"
_DIT = "DiT (Peebles & Xie)"
# Where each value of a paper recipe comes from. Keys not listed cite the experiment file itself.
SOURCES: dict[str, dict[str, str]] = {
    "pixeldit_xl_paper": {
        "model.adaln": f"{_PAPER} sec. 3.2, Fig. 2(C): pixel-wise AdaLN (seeds 000 #1)",
        "model.s_cond_timestep": f"{_PAPER} sec. 3.1: s_cond := s_N + t (seeds 000 #2)",
        "model.compaction": f"{_PAPER} sec. 3.2: PTC compacts all p^2 pixels of a patch (seeds 000 #3)",
        "model.pixel_attn_dim": f"{_PAPER} sec. 3.2: attention over L tokens at width D (seeds 000 #3)",
        "model.pixel_heads": f"{_PAPER} official code: pixel attention with the patch heads",
        "model.repa": f"{_PAPER} sec. 3.4: REPA with a frozen DINOv2 (seeds 000 #4)",
        "model.repa_block": f"{_PAPER} sec. 3.4: aligned at the 8th patch block (seeds 000 #4)",
        "model.repa_projector": f"{_PAPER} official code: MLP D -> D -> D -> 768 with SiLU",
        "model.repa_hidden": f"{_PAPER} official code: projector width D",
        "repa.weight": f"{_PAPER} sec. 3.4: lambda_repa = 0.5 (seeds 000 #4)",
        "repa.encoder": f"{_PAPER} sec. 3.4: DINOv2 ViT-B/14",
        "optim.betas": f"{_PAPER} training details: AdamW beta = (0.9, 0.999) (seeds 000 #5)",
        "optim.grad_clip": f"{_PAPER} training details: clipping 1.0 (seeds 000 #6)",
        "optim.grad_clip_after_step": f"{_PAPER} training details: clipping 0.5 after the step-down (seeds 000 #6)",
        "model.prediction": f"{_PAPER} sec. 3.4: f_theta predicts v_t directly (seeds 000 #7)",
        "objective.loss_space": f"{_PAPER} sec. 3.4: L = E||f_theta - v_t||^2, uniform weight (seeds 000 #7)",
        "optim.lr": f"{_PAPER} training details: lr 1e-4 at batch 256 (seeds 000 #8)",
        "optim.blr": f"{_PAPER} training details: an absolute lr, no batch scaling (seeds 000 #8)",
        "objective.p_mean": f"{_PAPER}: logit-normal [SD3] with loc 0 (seeds 000 #9)",
        "objective.p_std": f"{_PAPER}: logit-normal [SD3] with scale 1 (seeds 000 #9)",
        "model.in_context_tokens": f"{_PAPER}: no in-context class tokens, a JiT technique (seeds 000 #10)",
        "model.in_context_start": f"{_PAPER}: no in-context class tokens (seeds 000 #10)",
        "model.hint_fraction": f"{_PAPER}: no GT pixel hints (seeds 000 #11)",
        "model.hint_loss_weight": f"{_PAPER}: no GT pixel hints (seeds 000 #11)",
        "model.hint_path": f"{_PAPER}: no GT pixel hints (seeds 000 #11)",
        "optim.schedule": f"{_PAPER} v1 training details: 1e-4 for 160 epochs, then 1e-5 (seeds 001 #1)",
        "optim.step_epoch": f"{_PAPER} v1 training details: step-down after 160 epochs (seeds 001 #1)",
        "optim.step_lr": f"{_PAPER} v1 training details: 1e-5 after the step-down (seeds 001 #1)",
        "model.depth": f"{_PAPER} Table 6: N = 26 patch blocks for XL (seeds 001 #2)",
        "model.pixel_depth": f"{_PAPER} Table 6: M = 4 pixel blocks for XL (seeds 001 #2)",
        "model.hidden_size": f"{_PAPER} Table 6: D = 1152 for XL",
        "model.num_heads": f"{_PAPER} Table 6: 16 heads for XL",
        "model.pixel_dim": f"{_PAPER} Table 6: D_pix = 16",
        "model.ffn": f"{_PAPER} official code: SwiGLU (the text describes DiT's blocks; seeds 001 #3)",
        "model.ffn_bias": f"{_PAPER} official code: SwiGLU without biases",
        "model.patch_embed": f"{_PAPER} sec. 3.1: s_0 = W_patch x_patch, one linear (seeds 001 #4)",
        "ema.decays": f"{_PAPER} training details: one EMA, 0.9999 (seeds 001 #5)",
        "ema.eval_decay": f"{_PAPER} training details: EMA 0.9999",
        "model.pos_embed": f"{_PAPER} Table 4 '+RoPE'; official code: RoPE only on patch tokens",
        "model.norm": f"{_PAPER} Table 4 '+RMSNorm'",
        "model.qk_norm": f"{_PAPER} official code: RMSNorm q/k-norm",
        "model.qkv_bias": f"{_PAPER} official code: no qkv bias",
        "model.norm_affine": f"{_PAPER} official code: RMSNorm with a learnable weight (modules.RMSNorm)",
        "model.rope_positions": f"{_PAPER} official code: RoPE positions linspace(0, 16, grid) in the patch blocks "
                                f"and the PiT attention (modules.precompute_freqs_cis_2d)",
        "model.gelu": f"{_PAPER} official code: exact GELU in the PiT MLP (modules.MLP, nn.GELU())",
        "model.flow_time": f"{_PAPER} official code: t = 1 is data, x_t = t x + (1 - t) eps, v = x - eps",
        "model.dropout": f"{_PAPER} official code: no dropout",
        "model.time_max_period": f"{_PAPER} official code: t in [0, 1], sinusoid max period 10",
        "train.global_batch": f"{_PAPER} training details: batch 256",
        "train.precision": f"{_PAPER} training details: bfloat16",
        "train.label_dropout": f"{_PAPER} training details: class drop probability 0.1",
        "optim.weight_decay": f"{_PAPER} training details: weight decay 0",
        "optim.warmup_epochs": f"{_PAPER} training details: constant LR, no warm-up",
        "eval.sampler.kind": f"{_PAPER} sec. 4: 2nd-order multistep flow solver",
        "eval.sampler.steps": f"{_PAPER} sec. 4: 100 sampling steps",
        "eval.sampler.cfg_scale": f"{_PAPER} sec. 4: CFG 3.25 for the 80/160-epoch models",
        "eval.sampler.cfg_interval": f"{_PAPER} sec. 4: guidance on t in [0.1, 1.0]",
        "eval.sampler.cfg_interval_ends": f"{_PAPER} official code (c2i/src/diffusion.py FlowDPMSolverSampler): "
                                          f"guided for guidance_interval_min < t < guidance_interval_max",
    },
    "diffit_cifar10_paper": {
        "model.tmsa_time": f"{_DIFFIT} eq. 3-5: q, k, v each take a projection of the time token (Table 6)",
        "model.rel_pos_bias": f"{_DIFFIT} eq. 6: relative position bias B",
        "model.window_size": f"{_DIFFIT} I.1 and 5.10: local windows of 4 for CIFAR-10",
        "model.unet_channels": f"{_DIFFIT} Tables S.2-S.3 and I.1: 128, then 256 kept constant",
        "model.unet_blocks": f"{_DIFFIT} H.1: L1 = L2 = L3 = 4 (I.1 says 2 per stage)",
        "model.time_embed_dim": f"{_DIFFIT} Table 3: time dimension 512",
        "model.norm_affine": f"{_DIFFIT} official code (diffit/diffit.py): LayerNorm without affine",
        "model.gelu": f"{_DIFFIT} official code (diffit/diffit.py): GELU with the tanh approximation",
        "model.num_classes": f"{_DIFFIT} I.1: image-space experiments are unconditional",
        "objective.kind": f"{_DIFFIT} I.1: EDM's training configuration",
        "objective.p_mean": f"{_DIFFIT} I.1 via EDM: ln sigma ~ N(-1.2, 1.2)",
        "objective.p_std": f"{_DIFFIT} I.1 via EDM: ln sigma ~ N(-1.2, 1.2)",
        "optim.lr": f"{_DIFFIT} I.1: learning rate 1e-3 for CIFAR-10",
        "train.global_batch": f"{_DIFFIT} I.1: batch 512 for CIFAR-10",
        "train.steps": f"{_DIFFIT} I.1: 200000 iterations",
        "eval.sampler.kind": f"{_DIFFIT} I.1: EDM's deterministic sampler",
        "eval.sampler.steps": f"{_DIFFIT} I.1: 18 steps for CIFAR-10",
    },
    "jit_l16_paper": {
        "model.rope_positions": f"{_JIT} code (util/model_util.py VisionRotaryEmbeddingFast): integer positions",
        "model.norm_affine": f"{_JIT} code (util/model_util.py RMSNorm): a learnable weight",
        "model.dropout": f"{_JIT} code: dropout after the attention projection and on the SwiGLU hidden, in the "
                         f"middle half of the blocks (0 for B and L, 0.2 for H)",
        "model.prediction": f"{_JIT}: the network predicts the clean image",
        "eval.sampler.cfg_interval_ends": f"{_JIT} code (denoiser.py _forward_sample): guided for "
                                          f"(t < high) & ((low == 0) | (t > low))",
    },
    "dit_xl2_paper": {
        "model.norm_affine": f"{_DIT} code (models.py): LayerNorm without affine",
        "model.gelu": f"{_DIT} code (models.py): GELU with the tanh approximation",
        "model.pos_embed": f"{_DIT} code (models.py): fixed 2D sin-cos table, column first (MAE)",
        "eval.sampler.cfg_channels": f"{_DIT} code (models.py forward_with_cfg): guidance on eps channels 0-2 "
                                     f"of 4, 'for exact reproducibility'",
    },
}


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
    sources = SOURCES.get(paper_name, {})
    rows = []
    for key in paper:
        if key == "experiment" or not affects_result(key) or ours.get(key) == paper[key]:
            continue
        rows.append({"key": key, "this": ours.get(key), paper_name: paper[key],
                     "source": sources.get(key, f"harness/conf/experiment/{paper_name}.yaml")})
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
