"""Training objectives: interpolation, time sampling, the loss of each parametrisation, DDPM tables and VLB."""
import math

import pytest
import torch
from conftest import randomize, tiny

from harness.config import ObjectiveConfig
from harness.objectives import (
    DDPMObjective,
    FlowObjective,
    discretized_gaussian_log_likelihood,
    make_objective,
    normal_kl,
    validate_objective,
)
from models.config import ModelConfig
from models.transformer import build_model
from toolkit.errors import ConfigError


def flow(prediction="velocity", **changes) -> FlowObjective:
    return make_objective(ObjectiveConfig(kind="flow", **changes), ModelConfig(prediction=prediction))


def ddpm(learn_sigma=False, **changes) -> DDPMObjective:
    model = ModelConfig(prediction="noise", learn_sigma=learn_sigma, in_channels=3)
    return make_objective(ObjectiveConfig(kind="ddpm", **changes), model)


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(b=4, c=3, h=8):
    x = torch.rand(b, c, h, h) * 2 - 1
    eps = torch.randn(b, c, h, h)
    return x, eps


# ---- flow: interpolation and time sampling -----------------------------------------------------

def test_corrupt_endpoints_follow_the_time_convention():
    obj = flow()
    x, eps = batch()
    assert torch.allclose(obj.corrupt(x, eps, torch.ones(4)), x)
    assert torch.allclose(obj.corrupt(x, eps, torch.zeros(4)), eps)
    t = torch.tensor([0.1, 0.4, 0.6, 0.9])
    assert torch.allclose(obj.corrupt(x, eps, t), t.view(-1, 1, 1, 1) * x + (1 - t.view(-1, 1, 1, 1)) * eps)


def test_logit_normal_median_and_time_shift_moves_mass_to_noise():
    obj = flow(p_mean=-0.8, p_std=0.8)
    t = obj.sample_t(200_000, gen(), "cpu")
    assert t.dtype == torch.float32 and t.shape == (200_000,)
    assert ((t > 0) & (t < 1)).all()
    assert abs(t.median().item() - 1 / (1 + math.exp(0.8))) < 3e-3
    # the log-odds are N(p_mean, p_std)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() + 0.8) < 0.01 and abs(logit.std().item() - 0.8) < 0.01

    shifted = flow(p_mean=-0.8, p_std=0.8, time_shift=3.0).sample_t(200_000, gen(), "cpu")
    assert torch.allclose(shifted, t / (t + (1 - t) * 3.0))      # same draws, shifted
    assert shifted.median() < t.median() and (shifted <= t).all()  # toward t = 0 (noise)


def test_uniform_t_sampling_and_reproducibility():
    obj = flow(t_sampling="uniform")
    t = obj.sample_t(100_000, gen(1), "cpu")
    assert ((t >= 0) & (t < 1)).all() and abs(t.mean().item() - 0.5) < 0.01
    assert torch.equal(t, obj.sample_t(100_000, gen(1), "cpu"))


def test_uniform_t_of_a_network_in_sits_time_is_its_own_draw():
    """A model in SiT's time (t = 0 data) sees the uniform draw itself as its time, as REPA's SILoss draws it
    (time_input = torch.rand): the harness t is 1 - u, the same distribution."""
    sit = make_objective(ObjectiveConfig(t_sampling="uniform"), ModelConfig(prediction="velocity",
                                                                            flow_time="data_at_0"))
    u = torch.rand(1000, generator=gen(3))
    assert torch.allclose(sit.network_time(sit.sample_t(1000, gen(3), "cpu")), u, atol=1e-7)
    assert torch.equal(flow(t_sampling="uniform").sample_t(1000, gen(3), "cpu"), u)


def test_noise_scale():
    obj = flow(noise_scale=2.0)
    eps = obj.sample_noise(torch.zeros(64, 3, 16, 16), gen())
    assert eps.shape == (64, 3, 16, 16) and abs(eps.std().item() - 2.0) < 0.02
    assert torch.equal(eps, obj.sample_noise(torch.zeros(64, 3, 16, 16), gen()))


# ---- flow: losses ------------------------------------------------------------------------------

def test_image_prediction_velocity_loss_is_weighted_x_mse_with_clamp():
    """JiT: MSE on v with v_hat = (x_hat - x_t) / clamp(1 - t, t_eps) == x-MSE weighted 1/clamp(1-t)^2,
    also for t > 1 - t_eps where the clamp is active."""
    obj = flow("image", t_eps=0.05)
    x, eps = batch()
    t = torch.tensor([0.05, 0.5, 0.97, 1.0])           # the last two are clamped
    x_t = obj.corrupt(x, eps, t)
    x_hat = torch.randn_like(x)
    loss = obj.loss(x_hat, x, eps, x_t, t)
    weight = 1 / (1 - t).clamp(min=0.05) ** 2
    expected = (weight.view(-1, 1, 1, 1) * (x_hat - x) ** 2).mean()
    assert torch.allclose(loss["loss"], expected, rtol=1e-5)
    assert torch.equal(loss["loss"], loss["diffusion"]) and "vlb" not in loss
    # where the clamp is inactive the target is exactly v = x - eps
    v_hat = obj.velocity(x_hat, x_t, t)
    mid = slice(0, 2)
    assert torch.allclose(((v_hat - (x - eps)) ** 2)[mid].mean(),
                          (weight.view(-1, 1, 1, 1) * (x_hat - x) ** 2)[mid].mean(), rtol=1e-5)


@pytest.mark.parametrize("prediction", ["velocity", "image", "noise"])
def test_exact_prediction_gives_exact_velocity_and_zero_loss(prediction):
    obj = flow(prediction)
    x, eps = batch()
    t = torch.tensor([0.1, 0.3, 0.6, 0.9])
    x_t = obj.corrupt(x, eps, t)
    exact = {"velocity": x - eps, "image": x, "noise": eps}[prediction]
    assert torch.allclose(obj.velocity(exact, x_t, t), x - eps, atol=1e-5)
    assert obj.loss(exact, x, eps, x_t, t)["loss"] < 1e-9


def test_velocity_loss_is_plain_mse_for_velocity_prediction():
    obj = flow("velocity")
    x, eps = batch()
    t = torch.rand(4)
    pred = torch.randn_like(x)
    loss = obj.loss(pred, x, eps, obj.corrupt(x, eps, t), t)["loss"]
    assert torch.allclose(loss, ((pred - (x - eps)) ** 2).mean())


def test_noise_prediction_velocity_conversion():
    obj = flow("noise", t_eps=0.05)
    x, eps = batch()
    t = torch.tensor([0.01, 0.3, 0.6, 0.9])
    x_t = obj.corrupt(x, eps, t)
    eps_hat = torch.randn_like(x)
    tb = t.view(-1, 1, 1, 1)
    x_hat = (x_t - (1 - tb) * eps_hat) / tb.clamp(min=0.05)
    assert torch.allclose(obj.velocity(eps_hat, x_t, t), x_hat - eps_hat)
    expected = ((x_hat - eps_hat - (x - eps)) ** 2).mean()
    assert torch.allclose(obj.loss(eps_hat, x, eps, x_t, t)["loss"], expected)


@pytest.mark.parametrize("prediction", ["velocity", "image", "noise"])
def test_native_loss_compares_the_output_with_its_own_target(prediction):
    obj = flow(prediction, loss_space="native")
    x, eps = batch()
    t = torch.rand(4)
    pred = torch.randn_like(x)
    target = {"velocity": x - eps, "image": x, "noise": eps}[prediction]
    loss = obj.loss(pred, x, eps, obj.corrupt(x, eps, t), t)["loss"]
    assert torch.allclose(loss, ((pred - target) ** 2).mean())


@pytest.mark.parametrize("objective", ["flow_image", "ddpm_sigma"])
def test_pixel_weight(objective):
    obj = flow("image") if objective == "flow_image" else ddpm(learn_sigma=True)
    x, eps = batch()
    t = torch.tensor([0.2, 0.4, 0.6, 0.8]) if obj.kind == "flow" else torch.tensor([0, 10, 500, 999])
    x_t = obj.corrupt(x, eps, t)
    channels = 3 if obj.kind == "flow" else 6
    pred = torch.randn(4, channels, 8, 8)
    ones = torch.ones(4, 1, 8, 8)
    full = obj.loss(pred, x, eps, x_t, t)
    assert torch.allclose(obj.loss(pred, x, eps, x_t, t, ones)["loss"], full["loss"])
    assert torch.allclose(obj.loss(pred, x, eps, x_t, t, 0.25 * ones)["loss"], 0.25 * full["loss"])
    # a zero weight on a pixel removes it: changing the prediction there changes nothing
    w = ones.clone()
    w[1, 0, 3, 5] = 0
    changed = pred.clone()
    changed[1, :, 3, 5] += 10.0
    a = obj.loss(pred, x, eps, x_t, t, w)
    b = obj.loss(changed, x, eps, x_t, t, w)
    assert torch.allclose(a["loss"], b["loss"]) and not torch.allclose(a["loss"], full["loss"])
    assert not torch.allclose(obj.loss(changed, x, eps, x_t, t)["loss"], full["loss"])
    # mean(w * squared error)
    if obj.kind == "flow":
        v = obj.velocity(pred, x_t, t)
        target = (x - x_t) / (1 - t.view(-1, 1, 1, 1)).clamp(min=obj.cfg.t_eps)
        assert torch.allclose(a["loss"], (w * (v - target) ** 2).mean())


# ---- DDPM --------------------------------------------------------------------------------------

def test_ddpm_schedule_is_the_linear_schedule():
    obj = ddpm()
    abar = obj.schedule.table("alphas_cumprod")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert abar.dtype == torch.float32 and abar.shape == (1000,)
    assert torch.allclose(abar.double(), torch.cumprod(1 - betas, 0), rtol=1e-6)
    assert (abar[1:] < abar[:-1]).all() and abar[0] < 1 and abar[-1] > 0
    assert abs(abar[-1].item() - 4.04e-5) < 1e-6                  # DiT's linear schedule at T = 1000
    post = obj.schedule.table("posterior_log_variance_clipped")
    assert post[0] == post[1] and torch.isfinite(post).all()


def test_ddpm_time_sampling_corruption_and_network_time():
    obj = ddpm()
    k = obj.sample_t(50_000, gen(), "cpu")
    assert k.dtype == torch.long and k.min() == 0 and k.max() == 999
    assert abs(k.float().mean().item() - 499.5) < 5
    assert obj.network_time(k).dtype == torch.float32 and torch.equal(obj.network_time(k), k.float())
    assert torch.allclose(obj.unit_time(torch.tensor([0, 999])), torch.tensor([0.999, 0.0]))
    x, eps = batch()
    k = torch.tensor([0, 100, 500, 999])
    abar = obj.schedule.table("alphas_cumprod")[k].view(-1, 1, 1, 1)
    # (the tables come from float64, so 1 - abar in float32 here differs in the 6th digit)
    assert torch.allclose(obj.corrupt(x, eps, k), abar.sqrt() * x + (1 - abar).sqrt() * eps, atol=1e-5)
    # eps <-> x0 conversions invert each other
    x_t = obj.corrupt(x, eps, k)
    assert torch.allclose(obj.schedule.predict_x0(x_t, k, eps), x, atol=2e-3)
    assert torch.allclose(obj.schedule.predict_eps(x_t, k, x), eps, atol=1e-3)


def test_ddpm_loss_without_learned_sigma_is_eps_mse():
    obj = ddpm()
    x, eps = batch()
    k = torch.tensor([3, 30, 300, 900])
    pred = torch.randn_like(x)
    out = obj.loss(pred, x, eps, obj.corrupt(x, eps, k), k)
    assert set(out) == {"loss", "diffusion"}
    assert torch.allclose(out["loss"], ((pred - eps) ** 2).mean())


def test_vlb_is_finite_positive_and_trains_only_the_variance_channels():
    obj = ddpm(learn_sigma=True, vlb_weight=0.7)
    x, eps = batch()
    k = torch.tensor([0, 1, 400, 999])
    x_t = obj.corrupt(x, eps, k)
    pred = torch.cat([eps + 0.3 * torch.randn_like(eps), torch.rand_like(eps) * 2 - 1], dim=1)
    pred.requires_grad_(True)
    out = obj.loss(pred, x, eps, x_t, k)
    assert set(out) == {"loss", "diffusion", "vlb"}
    assert torch.isfinite(out["vlb"]) and out["vlb"] > 0
    assert torch.allclose(out["loss"], out["diffusion"] + 0.7 * out["vlb"])
    grad_vlb, = torch.autograd.grad(out["vlb"], pred, retain_graph=True)
    assert torch.count_nonzero(grad_vlb[:, :3]) == 0          # the mean is detached in the VLB
    assert torch.count_nonzero(grad_vlb[:, 3:]) > 0
    grad_total, = torch.autograd.grad(out["loss"], pred, retain_graph=True)
    grad_mse, = torch.autograd.grad(out["diffusion"], pred)
    assert torch.allclose(grad_total[:, :3], grad_mse[:, :3])
    assert torch.count_nonzero(grad_mse[:, 3:]) == 0


def test_vlb_is_zero_for_the_true_posterior_and_decoder_nll_at_k0():
    """With eps exact and the variance at the posterior end of the learned range (raw = -1), the KL of
    every k > 0 vanishes; at k = 0 the term is the discretized decoder NLL in bits."""
    obj = ddpm(learn_sigma=True)
    x, eps = batch()
    x = torch.round((x + 1) * 127.5) / 127.5 - 1                  # data on the 256-level grid
    k = torch.tensor([1, 10, 500, 999])
    x_t = obj.corrupt(x, eps, k)
    exact = torch.cat([eps, -torch.ones_like(eps)], dim=1)
    assert obj.loss(exact, x, eps, x_t, k)["vlb"].abs() < 1e-4
    k0 = torch.zeros(4, dtype=torch.long)
    x_t = obj.corrupt(x, eps, k0)
    vlb = obj.loss(exact, x, eps, x_t, k0)["vlb"]
    sched = obj.schedule
    mean, log_var, _ = sched.p_mean_variance(eps, -torch.ones_like(eps), x_t, k0)
    nll = -discretized_gaussian_log_likelihood(x, mean, 0.5 * log_var).mean() / math.log(2)
    assert torch.allclose(vlb, nll) and vlb > 0
    # the learned range spans log(posterior var clipped) .. log(beta)
    lv = sched.model_log_variance(k, torch.ones(4, 1, 1, 1), torch.zeros(4, 1, 1, 1))
    assert torch.allclose(lv.flatten(), sched.table("log_betas")[k])


def test_normal_kl_and_likelihood_helpers():
    m, lv = torch.randn(10), torch.randn(10)
    assert torch.allclose(normal_kl(m, lv, m, lv), torch.zeros(10), atol=1e-6)
    assert (normal_kl(m, lv, m + 1, lv - 0.5) > 0).all()
    x = torch.linspace(-1, 1, 256)
    sharp = discretized_gaussian_log_likelihood(x, x, torch.full_like(x, -9.0))
    assert (sharp <= 0).all() and (sharp > -1e-4).all()           # a sharp Gaussian on the bin: prob ~ 1
    ll = discretized_gaussian_log_likelihood(x, x, torch.full_like(x, -6.0))
    z = torch.tensor((1 / 255) / math.exp(-6.0))
    inner = torch.log(torch.special.ndtr(z) - torch.special.ndtr(-z))      # mass of the +-1/255 bin
    edge = torch.log(torch.special.ndtr(z))                                # the end bins run to +-inf
    assert torch.allclose(ll[1:-1], inner.expand(254), atol=1e-3)
    assert torch.allclose(ll[[0, -1]], edge.expand(2), atol=1e-3)


def test_respacing_keeps_abar_of_the_kept_steps():
    obj = ddpm()
    full = obj.schedule.table("alphas_cumprod")
    spaced, kept = obj.schedule.respace(50)
    assert kept.numel() == 50 and kept[0] == 0 and kept[-1] == 999 and (kept[1:] > kept[:-1]).all()
    assert torch.allclose(spaced.table("alphas_cumprod"), full[kept], rtol=1e-5)
    same, kept_all = obj.schedule.respace(1000)
    assert torch.equal(kept_all, torch.arange(1000))
    assert torch.allclose(same.table("betas"), obj.schedule.table("betas"), rtol=1e-4)
    one, kept_one = obj.schedule.respace(1)
    assert kept_one.tolist() == [0] and torch.isfinite(one.table("posterior_log_variance_clipped")).all()


# ---- with the real model -----------------------------------------------------------------------

@pytest.mark.parametrize("case", ["pixeldit_velocity", "jit_image", "dit_sigma"])
def test_objective_trains_the_real_model(case):
    if case == "dit_sigma":
        cfg = tiny(pixel_pathway=False, prediction="noise", learn_sigma=True, norm="layernorm",
                   pos_embed="abs_sincos", time_max_period=10000.0)
        obj = make_objective(ObjectiveConfig(kind="ddpm"), cfg)
    else:
        cfg = tiny(prediction="velocity" if case == "pixeldit_velocity" else "image")
        obj = make_objective(ObjectiveConfig(), cfg)
    model = randomize(build_model(cfg), std=0.05)
    g = gen()
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    t = obj.sample_t(3, g, "cpu")
    eps = obj.sample_noise(x, g)
    x_t = obj.corrupt(x, eps, t)
    pred = model(x_t, obj.network_time(t), torch.tensor([1, 2, 10])).prediction
    out = obj.loss(pred, x, eps, x_t, t)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["loss"].ndim == 0
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    assert ("vlb" in out) == (case == "dit_sigma")


# ---- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, model, key", [
    (dict(kind="foo"), {}, "objective.kind='foo': unknown value, expected one of ['flow', 'ddpm', 'edm']"),
    (dict(loss_space="x"), {}, "objective.loss_space="),
    (dict(t_sampling="beta"), {}, "objective.t_sampling="),
    (dict(p_std=0.0), {}, "objective.p_std="),
    (dict(time_shift=-1.0), {}, "objective.time_shift="),
    (dict(noise_scale=0.0), {}, "objective.noise_scale="),
    (dict(t_eps=0.0), {}, "objective.t_eps="),
    (dict(t_eps=1.0), {}, "objective.t_eps="),
    (dict(vlb_weight=-1.0), {}, "objective.vlb_weight="),
    (dict(ddpm_steps=0), {}, "objective.ddpm_steps="),
    (dict(beta_start=0.0), {}, "objective.beta_start="),
    (dict(beta_start=0.02, beta_end=0.01), {}, "objective.beta_end="),
    (dict(beta_end=1.0), {}, "objective.beta_end="),
    ({}, dict(learn_sigma=True, prediction="noise"),
     "model.learn_sigma=true: a learned variance needs objective.kind=ddpm"),
    (dict(kind="ddpm"), dict(prediction="image"),
     "model.prediction='image': objective.kind=ddpm needs model.prediction=noise"),
    (dict(kind="ddpm", noise_scale=2.0), dict(prediction="noise"), "objective.noise_scale=2.0"),
])
def test_invalid_objectives_name_the_key(changes, model, key):
    with pytest.raises(ConfigError) as err:
        make_objective(ObjectiveConfig(**changes), ModelConfig(**model))
    message = str(err.value)
    assert message.startswith(key) and "\n" not in message


def test_valid_paper_objectives():
    validate_objective(ObjectiveConfig(), ModelConfig())                                    # PixelDiT
    validate_objective(ObjectiveConfig(p_mean=-0.8, p_std=0.8), ModelConfig(prediction="image"))   # JiT
    validate_objective(ObjectiveConfig(kind="ddpm"), ModelConfig(prediction="noise", learn_sigma=True))  # DiT
