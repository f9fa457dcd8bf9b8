"""Training objectives: rectified flow [PixelDiT, JiT], DDPM with an optional learned variance [DiT] and
EDM's preconditioned denoiser [EDM (Karras et al. 2022), DiffiT's image-space models].

Time convention (see `harness.config`): t in [0, 1], t = 1 is clean data, t = 0 is pure noise;
x_t = t * x + (1 - t) * eps;  v = x - eps.  DDPM uses integer steps k in {0..T-1} (k = 0 least noisy),
which map to t = 1 - (k + 1) / T (`Objective.unit_time`).

    objective = make_objective(cfg.objective, cfg.model)      # validated; errors name the key
    t = objective.sample_t(B, generator, device)                # flow: float t; ddpm: long k
    eps = objective.sample_noise(x, generator)
    x_t = objective.corrupt(x, eps, t)
    pred = model(x_t, objective.network_time(t), y).prediction
    losses = objective.loss(pred, x, eps, x_t, t, pixel_weight)  # {"loss", "diffusion"[, "vlb"]}

Flow, the three network outputs (`model.prediction`) and how each becomes a velocity:
    velocity  v_hat = pred                                                   [PixelDiT]
    image     v_hat = (x_hat - x_t) / clamp(1 - t, t_eps)                    [JiT]
    noise     x_hat = (x_t - (1 - t) eps_hat) / clamp(t, t_eps);  v_hat = x_hat - eps_hat
A network trained in SiT's time (`model.flow_time=data_at_0` [REPA]: t = 0 is data, its velocity is eps - x)
gets 1 - t and its velocity output is negated; nothing else changes.
`loss_space=velocity` compares velocities (for an image output this is JiT's loss, the x-MSE weighted by
1 / clamp(1 - t, t_eps)^2: the target is JiT's v = (x - x_t) / clamp(1 - t, t_eps), which is x - eps
wherever the clamp is inactive); `loss_space=native` compares the output with its own target (x, eps or v).
With `freq_weight` > 0 the loss adds DeCo's frequency-aware term on the velocity error (`FrequencyLoss`).
`clean_image` is the output as an estimate of x (what PixelGen's perceptual losses read, harness/perceptual.py).

DDPM follows improved DDPM / DiT: linear betas, eps-prediction, and with `model.learn_sigma` the hybrid
loss L_simple + vlb_weight * L_vlb where L_vlb sees the eps channels detached, so it trains the variance
channels only [IDDPM 3.1, DiT 3.1]. The schedule tables are computed in float64 and kept in float32; all
loss and sampling arithmetic is done in float32 whatever the model's output dtype.

EDM [EDM Table 1] trains a network F inside the denoiser D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) on
x + sigma eps, with ln(sigma) ~ N(p_mean, p_std) (EDM: -1.2, 1.2) and s_d = sigma_data:
    c_skip = s_d^2 / (sigma^2 + s_d^2)      c_out = sigma s_d / sqrt(sigma^2 + s_d^2)
    c_in = 1 / sqrt(sigma^2 + s_d^2)         c_noise = ln(sigma) / 4
    loss = mean(lambda (D - x)^2),  lambda = (sigma^2 + s_d^2) / (sigma s_d)^2   (= 1 / c_out^2)
so `model.prediction` must be image (D estimates x). Harness time stays t in (0, 1), t = 1 data:
t = 1 / (1 + sigma), sigma = (1 - t) / t, the noise-to-signal ratio of x_t = t x + (1 - t) eps, so CFG
intervals and logged t keep one meaning. `corrupt` returns the network input c_in (x + sigma eps) and
`network_time` is c_noise; the loss rebuilds x + sigma eps from x and eps. Losses are means over elements
(EDM sums over pixels), which only rescales the loss.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from models.config import ModelConfig
from toolkit.errors import ConfigError
from toolkit.fields import check_choices

from .config import ObjectiveConfig

# The network output an objective's loss is written for, where it fixes one: DDPM's eps [DiT]; EDM's F,
# whose preconditioned D = c_skip x + c_out F is the image [EDM]. Flow takes any of the three.
FIXED_PREDICTION = {"ddpm": "noise", "edm": "image"}


# ---- validation -------------------------------------------------------------------------------

def validate_objective(cfg: ObjectiveConfig, model: ModelConfig) -> None:
    """Refuse an invalid objective (or objective/model combination) with one line naming the key."""
    check_choices(cfg, "objective.")
    for key in ("p_std", "time_shift", "noise_scale"):
        value = getattr(cfg, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"objective.{key}", value, "must be positive")
    if not (math.isfinite(cfg.sigma_data) and cfg.sigma_data > 0):
        raise ConfigError("objective.sigma_data", cfg.sigma_data, "must be positive")
    if not math.isfinite(cfg.p_mean):
        raise ConfigError("objective.p_mean", cfg.p_mean, "must be finite")
    if not 0.0 < cfg.t_eps < 1.0:
        raise ConfigError("objective.t_eps", cfg.t_eps, "must be in (0, 1)")
    if not (math.isfinite(cfg.vlb_weight) and cfg.vlb_weight >= 0):
        raise ConfigError("objective.vlb_weight", cfg.vlb_weight, "must be >= 0")
    if isinstance(cfg.ddpm_steps, bool) or not isinstance(cfg.ddpm_steps, int) or cfg.ddpm_steps < 1:
        raise ConfigError("objective.ddpm_steps", cfg.ddpm_steps, "must be a positive integer")
    if not 0.0 < cfg.beta_start < 1.0:
        raise ConfigError("objective.beta_start", cfg.beta_start, "must be in (0, 1)")
    if not cfg.beta_start <= cfg.beta_end < 1.0:
        raise ConfigError("objective.beta_end", cfg.beta_end, f"must be in [objective.beta_start="
                          f"{cfg.beta_start}, 1)")

    if model.flow_time != "data_at_1" and cfg.kind != "flow":
        raise ConfigError("model.flow_time", model.flow_time, f"a flow time convention needs objective.kind=flow "
                          f"(objective.kind={cfg.kind} fixes its own network time)")
    if model.learn_sigma and cfg.kind != "ddpm":
        raise ConfigError("model.learn_sigma", model.learn_sigma, "a learned variance needs objective.kind=ddpm")
    if cfg.kind in FIXED_PREDICTION:
        needed = FIXED_PREDICTION[cfg.kind]
        if model.prediction != needed:
            raise ConfigError("model.prediction", model.prediction, f"objective.kind={cfg.kind} needs "
                              f"model.prediction={needed}")
        if cfg.noise_scale != 1.0:
            raise ConfigError("objective.noise_scale", cfg.noise_scale, f"objective.kind={cfg.kind} needs "
                              f"noise_scale=1 (its noise levels are fixed by the schedule or by sigma)")
    if not (math.isfinite(cfg.freq_weight) and cfg.freq_weight >= 0):
        raise ConfigError("objective.freq_weight", cfg.freq_weight, "must be >= 0")
    if cfg.freq_weight > 0:
        if cfg.kind != "flow":
            raise ConfigError("objective.freq_weight", cfg.freq_weight, f"DeCo's frequency-aware loss is a "
                              f"flow-matching loss on the velocity: it needs objective.kind=flow (not {cfg.kind})")
        if model.in_channels not in (1, 3) or model.latent_downsample != 1:
            raise ConfigError("objective.freq_weight", cfg.freq_weight, "DeCo's frequency-aware loss reads RGB (or "
                              "grey) pixels in YCbCr: it needs a pixel-space model with model.in_channels 1 or 3")
        if isinstance(cfg.freq_quality, bool) or not isinstance(cfg.freq_quality, int) or \
                not 1 <= cfg.freq_quality <= 100:
            raise ConfigError("objective.freq_quality", cfg.freq_quality, "a JPEG quality is an integer in [1, 100]")
        if not math.isfinite(cfg.freq_gamma):
            raise ConfigError("objective.freq_gamma", cfg.freq_gamma, "must be finite")
    if cfg.kind == "edm":
        if cfg.time_shift != 1.0:
            raise ConfigError("objective.time_shift", cfg.time_shift, "objective.kind=edm needs 1.0 "
                              "(ln(sigma) ~ N(p_mean, p_std) is not shifted)")
        if cfg.t_sampling != "logit_normal":
            raise ConfigError("objective.t_sampling", cfg.t_sampling, "objective.kind=edm needs logit_normal "
                              "(ln(sigma) ~ N(p_mean, p_std))")


def make_objective(cfg: ObjectiveConfig, model: ModelConfig) -> "Objective":
    """Validate, then build the objective of `cfg.kind`."""
    validate_objective(cfg, model)
    return {"flow": FlowObjective, "ddpm": DDPMObjective, "edm": EDMObjective}[cfg.kind](cfg, model)


# ---- shared helpers ---------------------------------------------------------------------------

def _bcast(t: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) values to (B, 1, 1, 1)."""
    return t.reshape(-1, 1, 1, 1)


def weighted_mean(values: torch.Tensor, pixel_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """mean(w * values) over every element; w is (B, 1, H, W), broadcast over channels."""
    if pixel_weight is None:
        return values.mean()
    return (pixel_weight.to(values.dtype) * values).expand_as(values).mean()


def time_shift(t: torch.Tensor, shift: float) -> torch.Tensor:
    """t -> t / (t + (1 - t) * shift); shift > 1 moves t toward noise (t = 0) [SD3, PixelDiT]."""
    if shift == 1.0:
        return t
    return t / (t + (1.0 - t) * shift)


def draw_normal(shape, generator: torch.Generator, device, dtype=torch.float32) -> torch.Tensor:
    """Normal draws from `generator` (on its own device), then moved: CPU generators work with CUDA."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


class Objective:
    """Common interface; `make_objective` returns a `FlowObjective`, a `DDPMObjective` or an `EDMObjective`."""

    kind: str

    def __init__(self, cfg: ObjectiveConfig, model: ModelConfig):
        self.cfg = cfg
        self.prediction = model.prediction
        self.learn_sigma = bool(model.learn_sigma)
        self.channels = model.in_channels           # data channels C; the output has 2C with learn_sigma

    # -- interface (overridden) --
    def sample_t(self, batch: int, generator: torch.Generator, device) -> torch.Tensor:
        raise NotImplementedError

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def unit_time(self, t: torch.Tensor) -> torch.Tensor:
        """t in the harness convention (float in [0, 1], 1 = data): what CFG intervals refer to."""
        raise NotImplementedError

    def corrupt(self, x: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, prediction, x, eps, x_t, t, pixel_weight=None) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- shared --
    def sample_noise(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """eps ~ N(0, noise_scale^2), shape, device and dtype of x."""
        eps = draw_normal(x.shape, generator, x.device)
        if self.cfg.noise_scale != 1.0:
            eps = eps * self.cfg.noise_scale
        return eps.to(x.dtype) if x.is_floating_point() else eps


# ---- rectified flow [PixelDiT, JiT] -----------------------------------------------------------

class FlowObjective(Objective):
    kind = "flow"

    def __init__(self, cfg: ObjectiveConfig, model: ModelConfig):
        super().__init__(cfg, model)
        self.reversed = model.flow_time == "data_at_0"      # SiT's time: t_net = 1 - t, v_net = -v
        self.frequency = FrequencyLoss(cfg.freq_quality, cfg.freq_gamma) if cfg.freq_weight > 0 else None

    def sample_t(self, batch: int, generator: torch.Generator, device) -> torch.Tensor:
        """Float t in (0, 1): sigmoid(N(p_mean, p_std)) or uniform (in SiT's time: 1 - u), then the time shift."""
        cfg = self.cfg
        if cfg.t_sampling == "logit_normal":
            t = torch.sigmoid(draw_normal((batch,), generator, device) * cfg.p_std + cfg.p_mean)
        else:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            t = torch.rand((batch,), generator=generator, device=gen_device, dtype=torch.float32).to(device)
            if self.reversed:       # the draw is the network's own time [REPA loss.py: time_input = torch.rand]:
                t = 1.0 - t         # the same distribution, and a generator gives the official code's times
        return time_shift(t, cfg.time_shift)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - t.float() if self.reversed else t.float()

    def unit_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def corrupt(self, x, eps, t):
        t = _bcast(t).to(x.dtype)
        return t * x + (1 - t) * eps

    def clean_image(self, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Any network output as an estimate of the clean image x (float32): x_t + (1 - t) v for a velocity."""
        pred, x_t, tb = prediction.float(), x_t.float(), _bcast(t.float())
        if self.prediction == "image":
            return pred
        if self.prediction == "noise":
            return (x_t - (1 - tb) * pred) / tb.clamp(min=self.cfg.t_eps)
        return x_t + (1 - tb) * self.velocity(pred, x_t, t)

    def velocity(self, prediction: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Any network output as a velocity (float32); the samplers integrate this."""
        pred, x_t, t = prediction.float(), x_t.float(), _bcast(t.float())
        if self.prediction == "velocity":
            return -pred if self.reversed else pred
        if self.prediction == "image":
            return (pred - x_t) / (1 - t).clamp(min=self.cfg.t_eps)
        x_hat = (x_t - (1 - t) * pred) / t.clamp(min=self.cfg.t_eps)     # noise prediction
        return x_hat - pred

    def velocity_target(self, x, eps, x_t, t) -> torch.Tensor:
        """The velocity the loss compares with: x - eps; for an image output JiT's (x - x_t) / clamp(1 - t)."""
        if self.prediction == "image":
            return (x - x_t) / (1 - _bcast(t.float())).clamp(min=self.cfg.t_eps)
        return x - eps

    def loss(self, prediction, x, eps, x_t, t, pixel_weight=None) -> Dict[str, torch.Tensor]:
        pred, x, eps, x_t = prediction.float(), x.float(), eps.float(), x_t.float()
        if self.cfg.loss_space == "native":
            target = {"image": x, "noise": eps, "velocity": eps - x if self.reversed else x - eps}[self.prediction]
            error = (pred - target) ** 2
        else:
            error = (self.velocity(pred, x_t, t) - self.velocity_target(x, eps, x_t, t)) ** 2
        diffusion = weighted_mean(error, pixel_weight)
        terms = {"loss": diffusion, "diffusion": diffusion}
        if self.frequency is not None:          # DeCo: on the velocity error, whatever loss_space (unweighted)
            terms["freq"] = self.frequency(self.velocity(pred, x_t, t) - self.velocity_target(x, eps, x_t, t))
            terms["loss"] = diffusion + self.cfg.freq_weight * terms["freq"]
        return terms


# ---- DeCo's frequency-aware loss [DeCo] -------------------------------------------------------

# JPEG's base quantisation tables, luminance and chrominance (ITU-T T.81, Annex K, Tables K.1 and K.2)
JPEG_LUMINANCE = ((16, 11, 10, 16, 24, 40, 51, 61), (12, 12, 14, 19, 26, 58, 60, 55),
                  (14, 13, 16, 24, 40, 57, 69, 56), (14, 17, 22, 29, 51, 87, 80, 62),
                  (18, 22, 37, 56, 68, 109, 103, 77), (24, 35, 55, 64, 81, 104, 113, 92),
                  (49, 64, 78, 87, 103, 121, 120, 101), (72, 92, 95, 98, 112, 100, 103, 99))
JPEG_CHROMINANCE = ((17, 18, 24, 47, 99, 99, 99, 99), (18, 21, 26, 66, 99, 99, 99, 99),
                    (24, 26, 56, 99, 99, 99, 99, 99), (47, 66, 99, 99, 99, 99, 99, 99),
                    (99, 99, 99, 99, 99, 99, 99, 99), (99, 99, 99, 99, 99, 99, 99, 99),
                    (99, 99, 99, 99, 99, 99, 99, 99), (99, 99, 99, 99, 99, 99, 99, 99))
# RGB -> YCbCr (JFIF, without the offsets: the loss reads differences)
YCBCR = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))
DCT_BLOCK = 8


def jpeg_table(base, quality: int) -> torch.Tensor:
    """A base table at a JPEG quality (libjpeg's scaling: 5000 / q below 50, 200 - 2 q above), in [1, 255]."""
    q = min(100, max(1, int(quality)))
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return torch.floor((torch.tensor(base, dtype=torch.float32) * scale + 50) / 100).clamp(1, 255)


def dct_matrix(n: int = DCT_BLOCK) -> torch.Tensor:
    """The orthonormal DCT-II: D[k, i] = a_k cos(pi (2 i + 1) k / 2n), a_0 = sqrt(1/n), a_k = sqrt(2/n)."""
    k, i = torch.arange(n, dtype=torch.float64)[:, None], torch.arange(n, dtype=torch.float64)[None]
    scale = torch.full((n, 1), math.sqrt(2.0 / n), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / n)
    return (scale * torch.cos(math.pi * (2 * i + 1) * k / (2 * n))).float()


class FrequencyLoss:
    """DeCo's frequency-aware flow-matching term (code: `flow_matching/training_repa_DeCo.py`): the velocity
    error in YCbCr, its 8x8 block DCT (reflect-padded to whole blocks), each coefficient squared and weighted by
    (mean(Q) / Q)^gamma of its JPEG quantisation table Q at `quality` (luminance for Y, chrominance for Cb and
    Cr; each table's weights normalised to mean 1), averaged over every coefficient. A grey channel is the RGB
    image r = g = b: its Y, with Cb = Cr = 0."""

    def __init__(self, quality: int, gamma: float):
        weights = []
        for base in (JPEG_LUMINANCE, JPEG_CHROMINANCE, JPEG_CHROMINANCE):
            q = jpeg_table(base, quality)
            w = (q.mean() / q) ** gamma
            weights.append(w / w.mean())
        self.weights = torch.stack(weights)                 # (3, 8, 8): channel, vertical, horizontal frequency
        self.dct = dct_matrix()
        self.ycbcr = torch.tensor(YCBCR)

    def __call__(self, error: torch.Tensor) -> torch.Tensor:
        error = error.float()
        if error.shape[1] == 1:                              # grey: Y = the channel, Cb = Cr = 0
            error = torch.cat([error, torch.zeros_like(error), torch.zeros_like(error)], dim=1)
        else:
            error = torch.einsum("dc,bchw->bdhw", self.ycbcr.to(error.device), error)
        n = DCT_BLOCK
        pad_h, pad_w = -error.shape[2] % n, -error.shape[3] % n
        if pad_h or pad_w:
            error = F.pad(error, (0, pad_w, 0, pad_h), mode="reflect")
        b, c, h, w = error.shape
        blocks = error.reshape(b, c, h // n, n, w // n, n)
        dct = self.dct.to(error.device)
        coefficients = torch.einsum("ki,bcyixj,lj->bcyxkl", dct, blocks, dct)
        return (self.weights.to(error.device)[None, :, None, None] * coefficients ** 2).mean()


# ---- DDPM [DiT, IDDPM] ------------------------------------------------------------------------

def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales) -> torch.Tensor:
    """log-likelihood of data in [-1, 1] quantised to 256 bins under N(means, e^(2 log_scales)) [IDDPM]."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


class DiffusionSchedule:
    """The tables of a (possibly respaced) discrete diffusion, indexed by its own step index."""

    def __init__(self, betas: torch.Tensor):
        betas = betas.double().cpu()
        n = betas.numel()
        alphas = 1.0 - betas
        abar = torch.cumprod(alphas, 0)
        abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        # the posterior variance is 0 at step 0: its log is clipped to the next step's [IDDPM]
        clip_source = post_var[1] if n > 1 else betas[0]
        post_log_var = torch.log(torch.cat([clip_source.reshape(1), post_var[1:]]))
        tables = {
            "betas": betas,
            "log_betas": torch.log(betas),
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1.0 - abar).sqrt(),
            "sqrt_recip_alphas_cumprod": (1.0 / abar).sqrt(),
            "sqrt_recipm1_alphas_cumprod": (1.0 / abar - 1.0).sqrt(),
            "posterior_variance": post_var,
            "posterior_log_variance_clipped": post_log_var,
            "posterior_mean_coef1": betas * abar_prev.sqrt() / (1.0 - abar),
            "posterior_mean_coef2": (1.0 - abar_prev) * alphas.sqrt() / (1.0 - abar),
        }
        self.num_timesteps = n
        self._abar64 = abar                     # float64, for respacing
        self._tables = {name: value.float() for name, value in tables.items()}
        self._on_device: Dict[Tuple[str, str], torch.Tensor] = {}

    def table(self, name: str, device=None) -> torch.Tensor:
        device = torch.device(device or "cpu")
        key = (name, str(device))
        if key not in self._on_device:
            self._on_device[key] = self._tables[name].to(device)
        return self._on_device[key]

    def take(self, name: str, idx: torch.Tensor, device) -> torch.Tensor:
        """Per-sample values of a table, shaped (B, 1, 1, 1) float32."""
        return _bcast(self.table(name, device)[idx.to(device).long()])

    # -- forward process and posterior --
    def q_sample(self, x0, eps, idx):
        d = x0.device
        return self.take("sqrt_alphas_cumprod", idx, d) * x0 + self.take("sqrt_one_minus_alphas_cumprod", idx, d) * eps

    def predict_x0(self, x_t, idx, eps):
        d = x_t.device
        recip = self.take("sqrt_recip_alphas_cumprod", idx, d)
        recipm1 = self.take("sqrt_recipm1_alphas_cumprod", idx, d)
        return recip * x_t - recipm1 * eps

    def predict_eps(self, x_t, idx, x0):
        d = x_t.device
        recip = self.take("sqrt_recip_alphas_cumprod", idx, d)
        recipm1 = self.take("sqrt_recipm1_alphas_cumprod", idx, d)
        return (recip * x_t - x0) / recipm1

    def q_posterior(self, x0, x_t, idx):
        """Mean, variance and clipped log-variance of q(x_{k-1} | x_k, x_0)."""
        d = x_t.device
        mean = self.take("posterior_mean_coef1", idx, d) * x0 + self.take("posterior_mean_coef2", idx, d) * x_t
        return mean, self.take("posterior_variance", idx, d), self.take("posterior_log_variance_clipped", idx, d)

    def model_log_variance(self, idx, var_raw: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Learned range [IDDPM]: frac = (raw + 1) / 2 interpolates log(posterior var, clipped) and log(beta);
        without variance channels, the fixed small variance (the clipped posterior)."""
        d = like.device
        min_log = self.take("posterior_log_variance_clipped", idx, d)
        if var_raw is None:
            return min_log.expand_as(like)
        frac = (var_raw.float() + 1.0) / 2.0
        return frac * self.take("log_betas", idx, d) + (1.0 - frac) * min_log

    def p_mean_variance(self, eps_hat, var_raw, x_t, idx):
        """Model mean, log-variance and predicted x0 of p(x_{k-1} | x_k) (no clipping of x0, as DiT)."""
        x0 = self.predict_x0(x_t, idx, eps_hat)
        mean, _, _ = self.q_posterior(x0, x_t, idx)
        return mean, self.model_log_variance(idx, var_raw, x_t), x0

    def respace(self, steps: int) -> Tuple["DiffusionSchedule", torch.Tensor]:
        """IDDPM respacing: keep `steps` evenly spaced timesteps (round(i (T-1)/(steps-1)), always 0 and
        T-1 for steps > 1) and recompute betas from the kept abar values. Returns the new schedule and the
        map from its step index to the original k (what the network is given)."""
        T = self.num_timesteps
        if not 1 <= steps <= T:
            raise ConfigError("eval.sampler.steps", steps, f"must be in [1, objective.ddpm_steps={T}]")
        stride = (T - 1) / (steps - 1) if steps > 1 else 1.0
        kept = sorted({round(i * stride) for i in range(steps)})
        abar = self._abar64[kept]
        prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
        return DiffusionSchedule(1.0 - abar / prev), torch.tensor(kept, dtype=torch.long)


class DDPMObjective(Objective):
    kind = "ddpm"

    def __init__(self, cfg: ObjectiveConfig, model: ModelConfig):
        super().__init__(cfg, model)
        self.num_timesteps = cfg.ddpm_steps
        betas = torch.linspace(cfg.beta_start, cfg.beta_end, cfg.ddpm_steps, dtype=torch.float64)
        self.schedule = DiffusionSchedule(betas)

    def sample_t(self, batch: int, generator: torch.Generator, device) -> torch.Tensor:
        """Long k uniform in [0, T)."""
        gen_device = generator.device if generator is not None else torch.device("cpu")
        return torch.randint(0, self.num_timesteps, (batch,), generator=generator, device=gen_device).to(device)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()                     # the integer step k, as DiT feeds it

    def unit_time(self, t: torch.Tensor) -> torch.Tensor:
        return 1.0 - (t.float() + 1.0) / self.num_timesteps

    def corrupt(self, x, eps, t):
        return self.schedule.q_sample(x.float(), eps.float(), t).to(x.dtype)

    def split(self, prediction: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(eps_hat, var_raw or None) from the raw output: the first C channels are eps."""
        C = self.channels
        eps_hat = prediction[:, :C].float()
        return eps_hat, (prediction[:, C:2 * C].float() if self.learn_sigma else None)

    def vlb(self, eps_hat, var_raw, x, x_t, k, pixel_weight=None) -> torch.Tensor:
        """L_vlb term in bits/dim [IDDPM]: KL(q posterior || p) for k > 0, the discretized decoder NLL at k = 0."""
        s = self.schedule
        true_mean, _, true_log_var = s.q_posterior(x, x_t, k)
        mean, log_var, _ = s.p_mean_variance(eps_hat, var_raw, x_t, k)
        kl = normal_kl(true_mean, true_log_var, mean, log_var) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x, mean, 0.5 * log_var) / math.log(2.0)
        terms = torch.where(_bcast(k.to(x.device)) == 0, nll, kl)
        return weighted_mean(terms, pixel_weight)

    def loss(self, prediction, x, eps, x_t, t, pixel_weight=None) -> Dict[str, torch.Tensor]:
        x, eps, x_t = x.float(), eps.float(), x_t.float()
        eps_hat, var_raw = self.split(prediction)
        diffusion = weighted_mean((eps_hat - eps) ** 2, pixel_weight)
        out = {"diffusion": diffusion}
        if self.learn_sigma:
            # DiT's hybrid loss: the VLB sees a detached mean, so it only trains the variance channels
            out["vlb"] = self.vlb(eps_hat.detach(), var_raw, x, x_t, t, pixel_weight)
            out["loss"] = diffusion + self.cfg.vlb_weight * out["vlb"]
        else:
            out["loss"] = diffusion
        return out


# ---- EDM [EDM Table 1, DiffiT I.1] --------------------------------------------------------------

def _f32(value) -> torch.Tensor:
    return torch.as_tensor(value, dtype=torch.float32)


class EDMObjective(Objective):
    kind = "edm"

    def __init__(self, cfg: ObjectiveConfig, model: ModelConfig):
        super().__init__(cfg, model)
        self.sigma_data = float(cfg.sigma_data)

    # -- noise level <-> harness time --
    @staticmethod
    def sigma(t: torch.Tensor) -> torch.Tensor:
        """sigma = (1 - t) / t (float32): the noise-to-signal ratio of x_t = t x + (1 - t) eps."""
        t = _f32(t)
        return (1.0 - t) / t

    @staticmethod
    def time_of(sigma: torch.Tensor) -> torch.Tensor:
        """t = 1 / (1 + sigma) (float32), the inverse of `sigma`."""
        return 1.0 / (1.0 + _f32(sigma))

    # -- preconditioning (elementwise in sigma, float32) --
    def c_skip(self, sigma) -> torch.Tensor:
        s, sd = _f32(sigma), self.sigma_data
        return sd ** 2 / (s ** 2 + sd ** 2)

    def c_out(self, sigma) -> torch.Tensor:
        s, sd = _f32(sigma), self.sigma_data
        return s * sd / torch.sqrt(s ** 2 + sd ** 2)

    def c_in(self, sigma) -> torch.Tensor:
        s, sd = _f32(sigma), self.sigma_data
        return 1.0 / torch.sqrt(s ** 2 + sd ** 2)

    @staticmethod
    def c_noise(sigma) -> torch.Tensor:
        return torch.log(_f32(sigma)) / 4.0

    def loss_weight(self, sigma) -> torch.Tensor:
        """lambda(sigma) = (sigma^2 + s_d^2) / (sigma s_d)^2 = 1 / c_out^2."""
        s, sd = _f32(sigma), self.sigma_data
        return (s ** 2 + sd ** 2) / (s * sd) ** 2

    # -- interface --
    def sample_t(self, batch: int, generator: torch.Generator, device) -> torch.Tensor:
        """t = 1 / (1 + sigma) with ln(sigma) ~ N(p_mean, p_std) [EDM]."""
        sigma = torch.exp(draw_normal((batch,), generator, device) * self.cfg.p_std + self.cfg.p_mean)
        return self.time_of(sigma)

    def network_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.c_noise(self.sigma(t))

    def unit_time(self, t: torch.Tensor) -> torch.Tensor:
        return t.float()

    def corrupt(self, x, eps, t):
        """The network input c_in (x + sigma eps), in x's dtype."""
        sigma = _bcast(self.sigma(t).to(x.device))
        return (self.c_in(sigma) * (x.float() + sigma * eps.float())).to(x.dtype)

    def denoised(self, prediction: torch.Tensor, x_noisy: torch.Tensor, sigma) -> torch.Tensor:
        """D = c_skip x_noisy + c_out F (float32); sigma is a float, per sample (B,) or (B, 1, 1, 1)."""
        sigma = _f32(sigma).to(x_noisy.device)
        sigma = _bcast(sigma.expand(x_noisy.shape[0])) if sigma.ndim <= 1 else sigma
        return self.c_skip(sigma) * x_noisy.float() + self.c_out(sigma) * prediction.float()

    def loss(self, prediction, x, eps, x_t, t, pixel_weight=None) -> Dict[str, torch.Tensor]:
        x, eps = x.float(), eps.float()
        sigma = _bcast(self.sigma(t).to(x.device))
        d = self.denoised(prediction, x + sigma * eps, sigma)
        diffusion = weighted_mean(self.loss_weight(sigma) * (d - x) ** 2, pixel_weight)
        return {"loss": diffusion, "diffusion": diffusion}
