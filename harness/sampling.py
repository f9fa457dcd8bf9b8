"""Samplers: flow ODE solvers [PixelDiT, JiT], DDPM / DDIM with respacing [DiT, IDDPM] and EDM's
deterministic sampler [EDM Algorithm 1, DiffiT], with CFG.

    x = sample(net, objective, cfg.eval.sampler, labels, (C, H, W), generator, null_label=num_classes)

`net(x, t_net, y)` returns the raw network output (B, out_channels, H, W), `t_net` being
`objective.network_time(t)` per sample. Samples are returned in data space, float32, not clamped.

Flow (time convention of `harness.config`: integrate from t = 0, noise of std noise_scale, to t = 1):
grid t_i = shift(i / steps) with shift(t) = t / (t + (1 - t) * time_shift);
    euler  x += dt v
    heun   Heun predictor-corrector on every step but the last, which is Euler (t = 1 is never evaluated) [JiT]
    ab2    x += dt (1.5 v - 0.5 v_prev), Euler on the first step [PixelDiT]; the coefficients are the fixed
           ones of the paper's solver (exactly Adams-Bashforth 2 on the uniform grid, time_shift = 1)
    sde    Euler-Maruyama on dx = [v + (w/2) score] dt + sqrt(w) dW with w = 2 (1 - t) and the score of
           x_t, -(x - t v) / (1 - t), on t_i = shift(0.96 i / (steps - 1)), i < steps; the last step, from
           0.96 to 1, is the mean update without noise (REPA `samplers.py` euler_maruyama_sampler, SiT's
           "sigma" diffusion with last_step_size 0.04); noise_scale 1 only
DDPM: `ddpm` ancestral sampling and `ddim` (eta = 0) on `steps` evenly spaced timesteps of the T-step
schedule (IDDPM respacing: betas recomputed from the kept abar values; the network gets the original k);
learned variance (interpolated) when the model has it, the fixed small (posterior) variance otherwise.
EDM: the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma from x = sigma_max * noise down the grid
sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i < N, sigma_N = 0 (N = 1: [smax, 0]);
the network gets c_in(sigma) x at t = 1 / (1 + sigma) (so `network_time` = c_noise) and
D = `objective.denoised`. `edm_heun` is Algorithm 1 (Heun correction on every step but the last, to
sigma = 0: 2N - 1 evaluations); `edm_euler` is first order (N evaluations).

Classifier-free guidance: with cfg_scale != 1 and the current t (ddpm: 1 - (k + 1) / T) inside
cfg_interval [low, high], one forward over the concatenated batch [labels | null_label] and
guided = uncond + scale * (cond - uncond) on velocities (flow), on the eps channels (ddpm; the variance
channels come from the conditional half) or on the denoised images D (edm; cfg_interval refers to
t = 1 / (1 + sigma)). Elsewhere one forward of the conditional batch only. `cfg_interval_ends` says
whether the ends belong to the interval, as each official sampler decides it: `closed` [REPA], `open`
[PixelDiT: t = 0 is never guided], `open_closed_at_0` [JiT: open, but low = 0 includes t = 0]; ends are
compared with a 1e-6 margin, so a grid time on an end (t = 0.1 in float32 or float64) counts as on it.
`cfg_channels` = N guides only the first N channels of that quantity, the others come from the
conditional half [DiT `forward_with_cfg`: the first 3 of the 4 latent eps channels].

`sample(..., normal=fn)` makes every standard-normal draw of the sampler (the initial noise, then each
stochastic step's, in order) with fn(shape) instead of `generator`: the parity checks (`harness.parity`)
feed the official samplers' own draws through it.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from toolkit.errors import ConfigError
from toolkit.fields import check_choices

from .config import SAMPLERS, SamplerConfig
from .objectives import DDPMObjective, EDMObjective, FlowObjective, Objective, draw_normal, time_shift


def validate_sampler(cfg: SamplerConfig, objective_kind: str, num_timesteps: Optional[int] = None) -> None:
    """Refuse an invalid sampler configuration with one line naming the key. `num_timesteps` (the DDPM T,
    optional) also bounds `steps` for the DDPM samplers."""
    check_choices(cfg, "eval.sampler.")
    allowed = SAMPLERS[objective_kind]
    if cfg.kind not in allowed:
        raise ConfigError("eval.sampler.kind", cfg.kind, f"not a sampler for objective.kind={objective_kind}, "
                          f"expected one of {list(allowed)}")
    if isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise ConfigError("eval.sampler.steps", cfg.steps, "must be a positive integer")
    if objective_kind == "ddpm" and num_timesteps is not None and cfg.steps > num_timesteps:
        raise ConfigError("eval.sampler.steps", cfg.steps, f"more than the objective.ddpm_steps={num_timesteps} "
                          f"timesteps of the schedule")
    if not (math.isfinite(cfg.cfg_scale) and cfg.cfg_scale >= 0):
        raise ConfigError("eval.sampler.cfg_scale", cfg.cfg_scale, "must be >= 0 (1.0 = no guidance)")
    interval = list(cfg.cfg_interval)
    if len(interval) != 2 or not 0.0 <= interval[0] <= interval[1] <= 1.0:
        raise ConfigError("eval.sampler.cfg_interval", interval, "expected [low, high] with "
                          "0 <= low <= high <= 1")
    if not (math.isfinite(cfg.time_shift) and cfg.time_shift > 0):
        raise ConfigError("eval.sampler.time_shift", cfg.time_shift, "must be positive")
    if objective_kind != "flow" and cfg.time_shift != 1.0:
        raise ConfigError("eval.sampler.time_shift", cfg.time_shift, f"only the flow samplers shift time "
                          f"(objective.kind={objective_kind} needs 1.0)")
    if not (math.isfinite(cfg.sigma_min) and cfg.sigma_min > 0):
        raise ConfigError("eval.sampler.sigma_min", cfg.sigma_min, "must be positive")
    if not (math.isfinite(cfg.sigma_max) and cfg.sigma_max > cfg.sigma_min):
        raise ConfigError("eval.sampler.sigma_max", cfg.sigma_max, f"must be finite and greater than "
                          f"eval.sampler.sigma_min={cfg.sigma_min}")
    if not (math.isfinite(cfg.rho) and cfg.rho > 0):
        raise ConfigError("eval.sampler.rho", cfg.rho, "must be positive")
    if cfg.cfg_channels is not None and (isinstance(cfg.cfg_channels, bool) or not isinstance(cfg.cfg_channels, int)
                                         or cfg.cfg_channels < 1):
        raise ConfigError("eval.sampler.cfg_channels", cfg.cfg_channels, "must be a positive integer or null (all)")


def validate_sde_noise(cfg: SamplerConfig, noise_scale: float) -> None:
    """The SDE sampler's score is that of unit noise: refuse it with objective.noise_scale != 1."""
    if cfg.kind == "sde" and noise_scale != 1.0:
        raise ConfigError("eval.sampler.kind", cfg.kind, f"the SDE sampler's score assumes unit noise "
                          f"(objective.noise_scale={noise_scale}); use an ODE sampler")


def flow_time_grid(steps: int, shift: float) -> list:
    """t_0 = 0 < ... < t_steps = 1, shifted; python floats (computed in float64)."""
    grid = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    return time_shift(grid, shift).tolist()


# SiT's SDE stops its noise 0.04 before the data and takes the last step as the mean update [REPA
# `samplers.py` euler_maruyama_sampler: linspace(1, 0.04, steps) then 0; SiT `transport` last_step_size]
SDE_LAST_STEP = 0.04


def sde_time_grid(steps: int, shift: float) -> list:
    """t_i = shift((1 - SDE_LAST_STEP) i / (steps - 1)) for i < steps, then t_steps = 1; python floats
    (float64). One step: [0, 1]."""
    grid = torch.linspace(0.0, 1.0 - SDE_LAST_STEP, steps, dtype=torch.float64)
    return time_shift(torch.cat([grid, torch.ones(1, dtype=torch.float64)]), shift).tolist()


def edm_sigma_grid(steps: int, sigma_min: float, sigma_max: float, rho: float) -> list:
    """sigma_0 = sigma_max > ... > sigma_{steps-1} = sigma_min, then sigma_steps = 0 [EDM eq. 5]; python
    floats (computed in float64). One step: [sigma_max, 0]."""
    if steps == 1:
        return [float(sigma_max), 0.0]
    i = torch.arange(steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sigmas = (hi + i / (steps - 1) * (lo - hi)) ** rho
    return sigmas.tolist() + [0.0]


class Guidance:
    """The network at a shared time with classifier-free guidance where it applies: the quantity each sampler
    integrates (flow: the velocity; ddpm: eps and the variance channels; edm: the denoised image D)."""

    MARGIN = 1e-6           # interval ends are compared with this margin (float32 grid times on an end)

    def __init__(self, net: Callable, objective: Objective, cfg: SamplerConfig, labels: torch.Tensor,
                 null_label: int):
        self.net, self.objective, self.labels = net, objective, labels
        self.scale = float(cfg.cfg_scale)
        self.low, self.high = (float(v) for v in cfg.cfg_interval)
        self.ends = cfg.cfg_interval_ends
        self.channels = cfg.cfg_channels
        self.doubled_labels = torch.cat([labels, torch.full_like(labels, null_label)])

    def guided_at(self, t: torch.Tensor) -> bool:
        if self.scale == 1.0:
            return False
        u = float(self.objective.unit_time(t[:1])[0])
        if self.ends == "closed":
            return self.low - self.MARGIN <= u <= self.high + self.MARGIN
        above_low = u > self.low + self.MARGIN or (self.ends == "open_closed_at_0" and self.low == 0.0)
        return above_low and u < self.high - self.MARGIN

    def outputs(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(conditional output, unconditional output or None), float32; t is per sample (B,)."""
        t_net = self.objective.network_time(t)
        if self.guided_at(t):
            out = self.net(torch.cat([x, x]), torch.cat([t_net, t_net]), self.doubled_labels).float()
            cond, uncond = out.chunk(2)
            return cond, uncond
        return self.net(x, t_net, self.labels).float(), None

    def mix(self, cond: torch.Tensor, uncond: Optional[torch.Tensor]) -> torch.Tensor:
        """uncond + scale (cond - uncond) on the first `cfg_channels` channels (all by default), cond on the rest."""
        if uncond is None:
            return cond
        n = self.channels or cond.shape[1]
        guided = uncond[:, :n] + self.scale * (cond[:, :n] - uncond[:, :n])
        return torch.cat([guided, cond[:, n:]], dim=1) if n < cond.shape[1] else guided

    def velocity(self, x: torch.Tensor, t_value: float) -> torch.Tensor:
        """Flow: the guided velocity at harness time t_value."""
        objective = self.objective
        t = torch.full((x.shape[0],), t_value, dtype=torch.float32, device=x.device)
        cond, uncond = self.outputs(x, t)
        return self.mix(objective.velocity(cond, x, t), None if uncond is None else objective.velocity(uncond, x, t))

    def eps(self, x: torch.Tensor, k: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """DDPM: (guided eps, the conditional variance channels or None) at the original step k."""
        objective = self.objective
        cond, uncond = self.outputs(x, torch.full((x.shape[0],), k, dtype=torch.long, device=x.device))
        eps, var_raw = objective.split(cond)
        return self.mix(eps, None if uncond is None else objective.split(uncond)[0]), var_raw

    def denoised(self, x: torch.Tensor, sigma_value: float) -> torch.Tensor:
        """EDM: the guided denoised image D at noise level sigma_value."""
        objective = self.objective
        sigma = torch.full((x.shape[0],), sigma_value, dtype=torch.float32, device=x.device)
        cond, uncond = self.outputs(objective.c_in(sigma).view(-1, 1, 1, 1) * x, objective.time_of(sigma))
        d_u = None if uncond is None else objective.denoised(uncond, x, sigma)
        return self.mix(objective.denoised(cond, x, sigma), d_u)


@torch.no_grad()
def sample(net: Callable, objective: Objective, cfg: SamplerConfig, labels: torch.Tensor,
           shape: Sequence[int], generator: torch.Generator, null_label: int,
           normal: Optional[Callable[[Sequence[int]], torch.Tensor]] = None) -> torch.Tensor:
    """(B, C, H, W) samples in data space (float32, not clamped) for the B `labels`; `normal(shape)`, if
    given, makes the standard-normal draws instead of `generator` (module docstring)."""
    validate_sampler(cfg, objective.kind, getattr(objective, "num_timesteps", None))
    device = labels.device
    batch = labels.shape[0]
    draw = normal or (lambda size: draw_normal(size, generator, device))
    guidance = Guidance(net, objective, cfg, labels, null_label)
    noise = draw((batch, *shape)).to(device)
    if isinstance(objective, FlowObjective):
        x = noise * objective.cfg.noise_scale
        if cfg.kind == "sde":
            return _sample_sde(guidance, objective, cfg, x, draw)
        return _sample_flow(guidance, cfg, x)
    if isinstance(objective, DDPMObjective):
        return _sample_ddpm(guidance, objective, cfg, noise, draw)
    if isinstance(objective, EDMObjective):
        return _sample_edm(guidance, cfg, noise)
    raise ConfigError("objective.kind", objective.kind, "no sampler for this objective")


def _sample_flow(guidance: Guidance, cfg: SamplerConfig, x: torch.Tensor) -> torch.Tensor:
    steps = cfg.steps
    ts = flow_time_grid(steps, cfg.time_shift)
    v_prev = None
    for i in range(steps):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        v = guidance.velocity(x, t)
        if cfg.kind == "heun" and i < steps - 1:
            v_next = guidance.velocity(x + dt * v, t_next)
            x = x + dt * 0.5 * (v + v_next)
        elif cfg.kind == "ab2" and v_prev is not None:
            x = x + dt * (1.5 * v - 0.5 * v_prev)
        else:                                     # euler; heun's last step; ab2's first step
            x = x + dt * v
        v_prev = v
    return x


def _sample_sde(guidance: Guidance, objective: FlowObjective, cfg: SamplerConfig, x: torch.Tensor,
                draw: Callable) -> torch.Tensor:
    validate_sde_noise(cfg, objective.cfg.noise_scale)
    ts = sde_time_grid(cfg.steps, cfg.time_shift)
    for i in range(cfg.steps):
        t, t_next = ts[i], ts[i + 1]
        dt = t_next - t
        v = guidance.velocity(x, t)
        score = -(x - t * v) / (1.0 - t)          # -eps_hat / (1 - t), eps_hat = x_t - t v
        x = x + dt * (v + (1.0 - t) * score)      # drift v + (w / 2) score, w = 2 (1 - t)
        if i < cfg.steps - 1:                     # the last step is the mean update
            x = x + math.sqrt(2.0 * (1.0 - t) * dt) * draw(x.shape).to(x.device)
    return x


def _sample_ddpm(guidance: Guidance, objective: DDPMObjective, cfg: SamplerConfig, x: torch.Tensor,
                 draw: Callable) -> torch.Tensor:
    schedule, timestep_map = objective.schedule.respace(cfg.steps)
    batch, device = x.shape[0], x.device
    for idx in reversed(range(schedule.num_timesteps)):
        idx_vec = torch.full((batch,), idx, dtype=torch.long, device=device)
        eps, var_raw = guidance.eps(x, int(timestep_map[idx]))
        if cfg.kind == "ddpm":
            mean, log_var, _ = schedule.p_mean_variance(eps, var_raw, x, idx_vec)
            if idx > 0:
                x = mean + torch.exp(0.5 * log_var) * draw(x.shape).to(device)
            else:
                x = mean
        else:                                     # ddim, eta = 0
            x0 = schedule.predict_x0(x, idx_vec, eps)
            abar_prev = schedule.take("alphas_cumprod_prev", idx_vec, device)
            x = abar_prev.sqrt() * x0 + (1.0 - abar_prev).sqrt() * eps
    return x


def _sample_edm(guidance: Guidance, cfg: SamplerConfig, noise: torch.Tensor) -> torch.Tensor:
    sigmas = edm_sigma_grid(cfg.steps, cfg.sigma_min, cfg.sigma_max, cfg.rho)
    x = noise * sigmas[0]
    for i in range(cfg.steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        d = (x - guidance.denoised(x, sigma)) / sigma
        x_next = x + (sigma_next - sigma) * d
        if cfg.kind == "edm_heun" and sigma_next > 0:        # 2nd-order correction [EDM Algorithm 1]
            d_next = (x_next - guidance.denoised(x_next, sigma_next)) / sigma_next
            x_next = x + (sigma_next - sigma) * 0.5 * (d + d_next)
        x = x_next
    return x
