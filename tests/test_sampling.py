"""Samplers on fields whose exact solution is known: single-point data, Gaussian data; CFG; DDPM/DDIM."""

import pytest
import torch
from conftest import NULL, SHAPE, Recorder, gen, labels, randomize, tiny

from harness.config import ObjectiveConfig, SamplerConfig
from harness.objectives import make_objective
from harness.sampling import SDE_LAST_STEP, flow_time_grid, sample, sde_time_grid, validate_sampler
from models.config import ModelConfig
from models.transformer import build_model
from toolkit.errors import ConfigError


def flow(prediction="velocity", **changes):
    return make_objective(ObjectiveConfig(**changes), ModelConfig(prediction=prediction, num_classes=NULL))


def ddpm(learn_sigma=False, steps=1000):
    model = ModelConfig(prediction="noise", learn_sigma=learn_sigma, in_channels=3, num_classes=NULL)
    return make_objective(ObjectiveConfig(kind="ddpm", ddpm_steps=steps), model)


X0 = torch.linspace(-1, 1, 48).view(1, *SHAPE)


def single_point_oracle(prediction, x0=X0):
    """Exact network for data = one image x0: x_hat = x0, v = (x0 - x_t)/(1 - t), eps = (x_t - t x0)/(1 - t)."""
    def net(x, t, y):
        tb = t.view(-1, 1, 1, 1)
        if prediction == "image":
            return x0.expand_as(x)
        if prediction == "velocity":
            return (x0 - x) / (1 - tb).clamp(min=1e-6)
        return (x - tb * x0) / (1 - tb).clamp(min=1e-6)
    return net


# ---- flow samplers -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["euler", "heun", "ab2"])
@pytest.mark.parametrize("prediction", ["image", "velocity", "noise"])
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_samplers_land_on_the_single_data_point(kind, prediction, shift):
    obj = flow(prediction, noise_scale=2.0)
    cfg = SamplerConfig(kind=kind, steps=10, time_shift=shift)
    out = sample(single_point_oracle(prediction), obj, cfg, labels(), SHAPE, gen(), NULL)
    assert out.shape == (4, *SHAPE) and out.dtype == torch.float32
    # (a noise prediction cannot see x at t = 0, x_hat = 0 there, so the first step leaves the straight path;
    # the field (x0 - x)/(1 - t) contracts that error away: exactly on Euler's last step, to ~1e-8 for AB2)
    assert (out - X0).abs().max() < 1e-4


def gaussian_oracle(mu, s, sigma):
    """Exact velocity for data N(mu, s^2) per pixel and noise N(0, sigma^2): curved trajectories."""
    def net(x, t, y):
        t = t.view(-1, 1, 1, 1).double()
        x = x.double()
        var = t ** 2 * s ** 2 + (1 - t) ** 2 * sigma ** 2
        centred = x - t * mu
        return (mu + centred * (t * s ** 2 - (1 - t) * sigma ** 2) / var).float()
    return net


def gaussian_errors(steps, shift=1.0):
    mu, s, sigma = 0.3, 0.2, 1.0
    obj = flow("velocity", noise_scale=sigma)
    noise = torch.randn((4, *SHAPE), generator=gen(5)) * sigma
    exact = mu + (s / sigma) * noise                  # the ODE's flow map is x1 = mu + (s/sigma) x0
    errors = {}
    for kind in ("euler", "heun", "ab2"):
        out = sample(gaussian_oracle(mu, s, sigma), obj, SamplerConfig(kind=kind, steps=steps, time_shift=shift),
                     labels(), SHAPE, gen(5), NULL)
        errors[kind] = (out - exact).abs().max().item()
    return errors


def test_second_order_samplers_beat_euler_on_a_curved_field():
    coarse, fine = gaussian_errors(10), gaussian_errors(20)
    assert coarse["heun"] < coarse["euler"] / 2 and coarse["ab2"] < coarse["euler"] / 2
    assert fine["heun"] < fine["euler"] / 4 and fine["ab2"] < fine["euler"] / 4
    # orders: halving the step divides Euler's error by ~2, Heun's and AB2's by ~4
    assert 1.6 < coarse["euler"] / fine["euler"] < 2.5
    assert coarse["heun"] / fine["heun"] > 3.5 and coarse["ab2"] / fine["ab2"] > 3.5
    # on the shifted (smoothly non-uniform) grid AB2's fixed 1.5/-0.5 weights stay second order
    coarse, fine = gaussian_errors(20, shift=3.0), gaussian_errors(40, shift=3.0)
    assert coarse["ab2"] / fine["ab2"] > 3.0 and fine["ab2"] < fine["euler"] / 3


def test_time_grid_and_evaluation_counts():
    assert flow_time_grid(4, 1.0) == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    shifted = flow_time_grid(4, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and shifted[2] == pytest.approx(0.25)   # 0.5 -> 1/4
    obj = flow("velocity")
    for kind, nfe in (("euler", 8), ("heun", 15), ("ab2", 8)):
        net = Recorder(single_point_oracle("velocity"))
        sample(net, obj, SamplerConfig(kind=kind, steps=8), labels(), SHAPE, gen(), NULL)
        assert len(net.calls) == nfe
        assert max(t for _, t in net.calls) < 1.0          # t = 1 is never evaluated (Heun's last is Euler)


def test_samples_are_reproducible_from_the_generator():
    obj = flow("velocity")
    net = gaussian_oracle(0.0, 0.5, 1.0)
    a = sample(net, obj, SamplerConfig(steps=5), labels(), SHAPE, gen(3), NULL)
    b = sample(net, obj, SamplerConfig(steps=5), labels(), SHAPE, gen(3), NULL)
    c = sample(net, obj, SamplerConfig(steps=5), labels(), SHAPE, gen(4), NULL)
    assert torch.equal(a, b) and not torch.equal(a, c)


# ---- classifier-free guidance ------------------------------------------------------------------

def label_net(channels=3):
    """A network whose output depends on x, t and the label (the null label included)."""
    def net(x, t, y):
        yb = y.float().view(-1, 1, 1, 1)
        tb = t.float().view(-1, 1, 1, 1)
        out = 0.05 * yb * x[:, :3] + 0.1 * torch.sin(yb + tb) - 0.2 * x[:, :3]
        if channels == 6:                      # variance channels in [-1, 1], label dependent
            out = torch.cat([out, torch.tanh(0.3 * yb - tb / 1000 + 0 * x)], dim=1)
        return out
    return net


def guided_reference(net, scale, channels=3, guided=3):
    """Guidance done inside the net: uncond + s (cond - uncond) on the first `guided` channels, the rest from
    cond."""
    def ref(x, t, y):
        cond, uncond = net(x, t, y), net(x, t, torch.full_like(y, NULL))
        out = cond.clone()
        out[:, :guided] = uncond[:, :guided] + scale * (cond[:, :guided] - uncond[:, :guided])
        return out
    return ref


@pytest.mark.parametrize("kind, prediction", [("euler", "velocity"), ("heun", "image"), ("ab2", "noise"),
                                              ("ddpm", None), ("ddim", None)])
def test_cfg_mixes_uncond_plus_scale_times_difference(kind, prediction):
    if kind in ("ddpm", "ddim"):
        obj, channels, steps = ddpm(learn_sigma=True), 6, 20
    else:
        obj, channels, steps = flow(prediction), 3, 6
    net = label_net(channels)
    guided = sample(Recorder(net), obj, SamplerConfig(kind=kind, steps=steps, cfg_scale=2.5), labels(),
                    SHAPE, gen(), NULL)
    # the same mixing done inside the network (velocity mixing is linear in any prediction at fixed x_t, t)
    ref = sample(guided_reference(net, 2.5, channels), obj, SamplerConfig(kind=kind, steps=steps), labels(),
                 SHAPE, gen(), NULL)
    assert torch.isfinite(guided).all()
    assert torch.allclose(guided, ref, atol=1e-4, rtol=1e-4)
    unguided = sample(net, obj, SamplerConfig(kind=kind, steps=steps), labels(), SHAPE, gen(), NULL)
    assert not torch.allclose(guided, unguided, atol=1e-3)


def test_cfg_scale_one_is_off_and_makes_one_forward_of_batch_b():
    obj = flow("velocity")
    net = Recorder(label_net())
    a = sample(net, obj, SamplerConfig(kind="heun", steps=5, cfg_scale=1.0), labels(), SHAPE, gen(), NULL)
    assert [b for b, _ in net.calls] == [4] * 9
    b = sample(label_net(), obj, SamplerConfig(kind="heun", steps=5), labels(), SHAPE, gen(), NULL)
    c = sample(guided_reference(label_net(), 1.0), obj, SamplerConfig(kind="heun", steps=5), labels(), SHAPE,
               gen(), NULL)
    assert torch.equal(a, b) and torch.allclose(a, c, atol=1e-6)


def test_cfg_interval_flow():
    obj = flow("velocity")
    net = Recorder(label_net())
    sample(net, obj, SamplerConfig(kind="euler", steps=10, cfg_scale=3.0, cfg_interval=[0.5, 1.0]), labels(),
           SHAPE, gen(), NULL)
    assert len(net.calls) == 10
    for batch, t in net.calls:
        assert batch == (8 if t >= 0.5 - 1e-6 else 4)
    assert sum(b == 8 for b, _ in net.calls) == 5          # t = 0.5 .. 0.9 guided, 0 .. 0.4 not


@pytest.mark.parametrize("interval, ends, guided", [
    ([0.1, 0.5], "closed", [0.1, 0.2, 0.3, 0.4, 0.5]),       # REPA
    ([0.1, 0.5], "open", [0.2, 0.3, 0.4]),                   # PixelDiT: the grid times on the ends are out
    ([0.1, 0.5], "open_closed_at_0", [0.2, 0.3, 0.4]),       # JiT
    ([0.0, 0.5], "closed", [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
    ([0.0, 0.5], "open", [0.1, 0.2, 0.3, 0.4]),              # PixelDiT never guides t = 0
    ([0.0, 0.5], "open_closed_at_0", [0.0, 0.1, 0.2, 0.3, 0.4]),   # JiT does when low = 0
])
def test_cfg_interval_ends(interval, ends, guided):
    net = Recorder(label_net())
    sample(net, flow("velocity"), SamplerConfig(kind="euler", steps=10, cfg_scale=3.0, cfg_interval=interval,
                                                cfg_interval_ends=ends), labels(), SHAPE, gen(), NULL)
    assert [round(t, 6) for batch, t in net.calls if batch == 8] == guided


@pytest.mark.parametrize("kind, prediction", [("euler", "velocity"), ("ddpm", None)])
def test_cfg_channels_guides_only_the_first_channels(kind, prediction):
    """DiT's forward_with_cfg: eps channels 0-1 (here) guided, channel 2 and the variance from the conditional
    half; equal to the mixing done inside the network."""
    obj, channels, steps = (ddpm(learn_sigma=True), 6, 10) if kind == "ddpm" else (flow(prediction), 3, 6)
    net = label_net(channels)
    cfg = SamplerConfig(kind=kind, steps=steps, cfg_scale=2.5, cfg_channels=2)
    partly = sample(net, obj, cfg, labels(), SHAPE, gen(), NULL)
    ref = sample(guided_reference(net, 2.5, guided=2), obj, SamplerConfig(kind=kind, steps=steps), labels(), SHAPE,
                 gen(), NULL)
    assert torch.allclose(partly, ref, atol=1e-5)
    every = sample(net, obj, SamplerConfig(kind=kind, steps=steps, cfg_scale=2.5), labels(), SHAPE, gen(), NULL)
    assert not torch.allclose(partly, every, atol=1e-3)


def test_cfg_interval_ddpm_uses_t_of_k():
    obj = ddpm(learn_sigma=True, steps=100)
    net = Recorder(label_net(6))
    sample(net, obj, SamplerConfig(kind="ddpm", steps=100, cfg_scale=4.0, cfg_interval=[0.0, 0.3]), labels(),
           SHAPE, gen(), NULL)
    assert len(net.calls) == 100
    for batch, k in net.calls:                              # t = 1 - (k + 1)/T
        assert batch == (8 if 1 - (k + 1) / 100 <= 0.3 + 1e-6 else 4)
    assert sum(b == 8 for b, _ in net.calls) == 31          # k = 69 .. 99


# ---- SDE [SiT, REPA] ----------------------------------------------------------------------------

def test_sde_grid_draws_and_evaluations():
    """REPA's Euler-Maruyama: times 0 .. 1 - 0.04 evenly, then 1; one evaluation per step; a noise draw on
    every step but the last (the mean update), after the initial noise."""
    assert SDE_LAST_STEP == 0.04 and sde_time_grid(5, 1.0) == pytest.approx([0, 0.24, 0.48, 0.72, 0.96, 1.0])
    assert sde_time_grid(1, 1.0) == [0.0, 1.0]
    draws, net = [], Recorder(single_point_oracle("velocity"))
    def normal(shape):
        draws.append(tuple(shape))
        return torch.randn(shape, generator=generator)
    generator = gen()
    sample(net, flow("velocity"), SamplerConfig(kind="sde", steps=5), labels(), SHAPE, gen(), NULL, normal=normal)
    assert [round(t, 6) for _, t in net.calls] == [0.0, 0.24, 0.48, 0.72, 0.96]
    assert draws == [(4, *SHAPE)] * 5


def test_sde_samples_gaussian_data():
    """Data N(mu, s^2) with the exact velocity: the SDE's samples have the data's mean, their std a little
    under s (the last step is the mean update, as SiT's), and differ from the ODE's."""
    mu, s = 0.3, 0.2
    many = torch.arange(4096) % NULL
    out = sample(gaussian_oracle(mu, s, 1.0), flow("velocity"), SamplerConfig(kind="sde", steps=50), many, SHAPE,
                 gen(1), NULL)
    assert abs(out.mean().item() - mu) < 0.005 and 0.17 < out.std().item() < 0.205
    ode = sample(gaussian_oracle(mu, s, 1.0), flow("velocity"), SamplerConfig(kind="euler", steps=50), many, SHAPE,
                 gen(1), NULL)
    assert (out - ode).abs().mean() > 0.05


def test_sde_refuses_scaled_noise():
    with pytest.raises(ConfigError, match=r"^eval\.sampler\.kind='sde'.*noise_scale"):
        sample(single_point_oracle("velocity"), flow("velocity", noise_scale=2.0), SamplerConfig(kind="sde"),
               labels(), SHAPE, gen(), NULL)


# ---- DDPM / DDIM -------------------------------------------------------------------------------

def ddpm_oracle(obj, x0=X0, learn_sigma=False):
    """Exact eps for data = x0, using the original schedule at the original k (what the network gets)."""
    abar = obj.schedule.table("alphas_cumprod")

    def net(x, t, y):
        a = abar[t.round().long()].view(-1, 1, 1, 1)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return torch.cat([eps, torch.zeros_like(eps)], dim=1) if learn_sigma else eps
    return net


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
@pytest.mark.parametrize("learn_sigma", [False, True])
def test_ddpm_samplers_recover_the_single_data_point(kind, learn_sigma):
    obj = ddpm(learn_sigma)
    net = Recorder(ddpm_oracle(obj, learn_sigma=learn_sigma))
    out = sample(net, obj, SamplerConfig(kind=kind, steps=25), labels(), SHAPE, gen(), NULL)
    assert out.shape == (4, *SHAPE) and torch.isfinite(out).all()
    assert (out - X0).abs().max() < 1e-3
    ks = [k for _, k in net.calls]
    assert len(ks) == 25 and ks[0] == 999 and ks[-1] == 0 and ks == sorted(ks, reverse=True)


@pytest.mark.parametrize("variance", ["fixed", "learned_small", "learned_large"])
def test_ddpm_ancestral_variance_on_gaussian_data(variance):
    """Data N(0, 1): the exact eps is sqrt(1 - abar) x_k and the model mean is sqrt(alpha') x_k on the
    respaced chain, so Var(x_{k-1}) = alpha' Var(x_k) + sigma_k^2 with sigma^2 = beta' (raw = +1) or the
    posterior variance (raw = -1, also the fixed variance); no noise on the last step."""
    learn_sigma = variance != "fixed"
    obj = ddpm(learn_sigma)
    abar = obj.schedule.table("alphas_cumprod")

    def net(x, t, y):
        eps = x * (1 - abar[t.round().long()]).sqrt().view(-1, 1, 1, 1)
        if not learn_sigma:
            return eps
        return torch.cat([eps, torch.full_like(eps, 1.0 if variance == "learned_large" else -1.0)], dim=1)

    many = torch.arange(512) % NULL
    out = sample(net, obj, SamplerConfig(kind="ddpm", steps=50), many, SHAPE, gen(), NULL)
    spaced, _ = obj.schedule.respace(50)
    betas = spaced.table("betas").double()
    noise_var = betas if variance == "learned_large" else spaced.table("posterior_variance").double()
    expected = 1.0
    for idx in reversed(range(50)):
        expected = (1 - betas[idx]) * expected + (noise_var[idx] if idx > 0 else 0.0)
    assert abs(out.var().item() - float(expected)) < 0.03 and abs(out.mean().item()) < 0.02
    if variance == "learned_large":
        assert abs(float(expected) - 1.0) < 1e-3                # the exact reverse chain keeps N(0, 1)
    else:
        assert float(expected) < 0.9


def test_ddim_update_on_gaussian_data():
    """For N(0, 1) data eps_hat = sqrt(1 - abar) x and x0_hat = sqrt(abar) x, so each DDIM step multiplies x by
    sqrt(abar' abar) + sqrt((1 - abar')(1 - abar)) <= 1 (abar' = previous kept step): deterministic, and the
    identity map of the continuous probability flow in the limit of many steps."""
    obj = ddpm()
    abar = obj.schedule.table("alphas_cumprod")
    def net(x, t, y):
        return x * (1 - abar[t.round().long()]).sqrt().view(-1, 1, 1, 1)
    noise = torch.randn((4, *SHAPE), generator=gen())
    gaps = {}
    for steps in (10, 50, 1000):
        out = sample(net, obj, SamplerConfig(kind="ddim", steps=steps), labels(), SHAPE, gen(), NULL)
        spaced, _ = obj.schedule.respace(steps)
        a, a_prev = spaced.table("alphas_cumprod").double(), spaced.table("alphas_cumprod_prev").double()
        factor = torch.prod((a * a_prev).sqrt() + ((1 - a) * (1 - a_prev)).sqrt())
        assert torch.allclose(out, float(factor) * noise, atol=1e-4)
        gaps[steps] = 1 - float(factor)
    assert gaps[10] > gaps[50] > gaps[1000] > 0 and gaps[1000] < 0.01


@pytest.mark.parametrize("kind", ["ddpm", "ddim"])
def test_ddpm_samplers_with_the_real_model(kind):
    cfg = tiny(pixel_pathway=False, prediction="noise", learn_sigma=True, norm="layernorm",
               pos_embed="abs_sincos", time_max_period=10000.0)
    model = randomize(build_model(cfg), std=0.02).eval()
    obj = make_objective(ObjectiveConfig(kind="ddpm"), cfg)
    def net(x, t, y):
        return model(x, t, y).prediction
    out = sample(net, obj, SamplerConfig(kind=kind, steps=5, cfg_scale=1.5), torch.tensor([0, 3]), (3, 16, 16),
                 gen(), cfg.num_classes)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


def test_flow_sampler_with_the_real_model():
    cfg = tiny(prediction="image")
    model = randomize(build_model(cfg), std=0.02).eval()
    obj = make_objective(ObjectiveConfig(), cfg)
    def net(x, t, y):
        return model(x, t, y).prediction
    out = sample(net, obj, SamplerConfig(kind="heun", steps=3, cfg_scale=2.0, cfg_interval=[0.1, 1.0]),
                 torch.tensor([0, 3]), (3, 16, 16), gen(), cfg.num_classes)
    assert out.shape == (2, 3, 16, 16) and torch.isfinite(out).all()


# ---- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, objective, key", [
    (dict(kind="rk4"), "flow", "eval.sampler.kind='rk4': unknown value"),
    (dict(kind="ddpm"), "flow", "eval.sampler.kind='ddpm': not a sampler for objective.kind=flow"),
    (dict(kind="ddim"), "flow", "eval.sampler.kind='ddim'"),
    (dict(kind="ab2"), "ddpm", "eval.sampler.kind='ab2': not a sampler for objective.kind=ddpm"),
    (dict(kind="heun", steps=0), "flow", "eval.sampler.steps=0"),
    (dict(kind="ddpm", steps=2000), "ddpm", "eval.sampler.steps=2000"),
    (dict(cfg_scale=-1.0), "flow", "eval.sampler.cfg_scale="),
    (dict(cfg_interval=[0.6, 0.2]), "flow", "eval.sampler.cfg_interval="),
    (dict(cfg_interval=[0.1, 1.5]), "flow", "eval.sampler.cfg_interval="),
    (dict(cfg_interval=[0.1]), "flow", "eval.sampler.cfg_interval="),
    (dict(time_shift=0.0), "flow", "eval.sampler.time_shift="),
    (dict(kind="ddim", time_shift=3.0), "ddpm", "eval.sampler.time_shift=3.0"),
    (dict(cfg_interval_ends="half"), "flow", "eval.sampler.cfg_interval_ends='half': unknown value"),
    (dict(kind="ddpm", cfg_channels=0), "ddpm", "eval.sampler.cfg_channels=0"),
])
def test_invalid_samplers_name_the_key(changes, objective, key):
    with pytest.raises(ConfigError) as err:
        validate_sampler(SamplerConfig(**changes), objective, num_timesteps=1000)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_sample_refuses_a_sampler_of_the_other_family():
    with pytest.raises(ConfigError, match=r"^eval\.sampler\.kind"):
        sample(single_point_oracle("velocity"), flow(), SamplerConfig(kind="ddim"), labels(), SHAPE, gen(), NULL)
    with pytest.raises(ConfigError, match=r"^eval\.sampler\.kind"):
        sample(ddpm_oracle(ddpm()), ddpm(), SamplerConfig(kind="euler"), labels(), SHAPE, gen(), NULL)
    with pytest.raises(ConfigError, match=r"^eval\.sampler\.steps"):
        sample(ddpm_oracle(ddpm(steps=10)), ddpm(steps=10), SamplerConfig(kind="ddim", steps=11), labels(), SHAPE,
               gen(), NULL)


def test_paper_samplers_are_valid():
    validate_sampler(SamplerConfig(kind="ab2", steps=100, cfg_scale=3.25, cfg_interval=[0.1, 1.0]), "flow")
    validate_sampler(SamplerConfig(kind="heun", steps=50, cfg_scale=2.9, cfg_interval=[0.1, 1.0]), "flow")
    validate_sampler(SamplerConfig(kind="ddpm", steps=250, cfg_scale=1.5, cfg_channels=3), "ddpm",
                     num_timesteps=1000)
    validate_sampler(SamplerConfig(kind="sde", steps=250, cfg_scale=1.8, cfg_interval=[0.3, 1.0]), "flow")
