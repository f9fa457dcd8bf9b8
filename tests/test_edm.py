"""EDM [Karras et al. 2022] as DiffiT trains and samples it: preconditioning, noise levels, the weighted
denoiser loss, the deterministic Heun / Euler samplers on fields with known solutions, CFG, validation, and a
short run through the real trainer."""
import math

import pytest
import torch
from conftest import NULL, SHAPE, TINY_OFFLINE_EVAL, Recorder, gen, labels, tiny_overrides
from mlflow.tracking import MlflowClient

from harness.config import ObjectiveConfig, SamplerConfig
from harness.configure import resolve
from harness.objectives import EDMObjective, make_objective, validate_objective
from harness.sampling import edm_sigma_grid, sample, validate_sampler
from harness.trainer import train
from models.config import ModelConfig
from toolkit.errors import ConfigError

SIGMAS = [0.002, 0.05, 0.5, 1.0, 3.0, 80.0]


def edm(sigma_data=0.5, **changes) -> EDMObjective:
    return make_objective(ObjectiveConfig(kind="edm", sigma_data=sigma_data, **changes),
                          ModelConfig(prediction="image", num_classes=NULL))


def denoiser_net(obj: EDMObjective, denoise):
    """The network F whose preconditioned output D = c_skip x + c_out F equals `denoise(x, sigma, y)`: it
    sees only c_in x and c_noise, so it recovers sigma = exp(4 c_noise) and x = (c_in x) / c_in."""
    def net(x_in, t_net, y):
        sigma = torch.exp(4 * t_net.double()).view(-1, 1, 1, 1)
        s2, sd2 = sigma ** 2, obj.sigma_data ** 2
        x = x_in.double() * torch.sqrt(s2 + sd2)
        d = denoise(x, sigma, y)
        return ((d - sd2 / (s2 + sd2) * x) / (sigma * obj.sigma_data / torch.sqrt(s2 + sd2))).float()
    return net


# ---- preconditioning and noise levels ------------------------------------------------------------

@pytest.mark.parametrize("sd", [0.5, 1.3])
def test_preconditioning_matches_edm_table_1(sd):
    obj = edm(sigma_data=sd)
    for s in SIGMAS:
        sigma = torch.tensor([s])
        assert obj.c_skip(sigma).item() == pytest.approx(sd ** 2 / (s ** 2 + sd ** 2), rel=1e-6)
        assert obj.c_out(sigma).item() == pytest.approx(s * sd / math.sqrt(s ** 2 + sd ** 2), rel=1e-6)
        assert obj.c_in(sigma).item() == pytest.approx(1 / math.sqrt(s ** 2 + sd ** 2), rel=1e-6)
        assert obj.c_noise(sigma).item() == pytest.approx(math.log(s) / 4, rel=1e-6, abs=1e-7)
        assert obj.loss_weight(sigma).item() == pytest.approx((s ** 2 + sd ** 2) / (s * sd) ** 2, rel=1e-6)
        # EDM's effective weight lambda c_out^2 is 1: the loss is a plain MSE on F's target
        assert (obj.loss_weight(sigma) * obj.c_out(sigma) ** 2).item() == pytest.approx(1.0, rel=1e-5)
        # unit variance of the network input and of the training target for data of std sigma_data
        assert (obj.c_in(sigma) ** 2 * (sd ** 2 + s ** 2)).item() == pytest.approx(1.0, rel=1e-5)
    sigma = torch.tensor(SIGMAS)
    assert obj.c_skip(sigma).dtype == torch.float32 and obj.c_skip(sigma).shape == (len(SIGMAS),)


def test_time_sigma_round_trip_and_network_time():
    obj = edm()
    sigma = torch.tensor(SIGMAS)
    t = obj.time_of(sigma)
    assert t.dtype == torch.float32 and ((t > 0) & (t < 1)).all() and (t[1:] < t[:-1]).all()  # more noise, lower t
    assert torch.allclose(t, 1 / (1 + sigma))
    assert torch.allclose(obj.sigma(t), sigma, rtol=1e-4)
    assert torch.allclose(obj.time_of(obj.sigma(torch.tensor([0.1, 0.5, 0.9]))), torch.tensor([0.1, 0.5, 0.9]))
    assert obj.sigma(torch.tensor([0.5])).item() == 1.0                 # t = 1/2: as much noise as signal
    assert torch.allclose(obj.network_time(t), torch.log(sigma) / 4, atol=1e-4)
    assert torch.equal(obj.unit_time(t), t)


def test_sample_t_draws_log_normal_sigma():
    obj = edm(p_mean=-1.2, p_std=1.2)
    t = obj.sample_t(200_000, gen(), "cpu")
    assert t.dtype == torch.float32 and t.shape == (200_000,) and ((t > 0) & (t < 1)).all()
    log_sigma = torch.log(obj.sigma(t).double())
    assert abs(log_sigma.mean().item() + 1.2) < 0.01 and abs(log_sigma.std().item() - 1.2) < 0.01
    assert torch.equal(t, obj.sample_t(200_000, gen(), "cpu"))
    other = edm(p_mean=0.5, p_std=0.3).sample_t(200_000, gen(), "cpu")
    log_other = torch.log(obj.sigma(other).double())
    assert abs(log_other.mean().item() - 0.5) < 0.01 and abs(log_other.std().item() - 0.3) < 0.01


def test_corrupt_is_the_preconditioned_network_input():
    obj = edm()
    x, eps = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    sigma = torch.tensor([0.01, 0.5, 2.0, 60.0]).view(-1, 1, 1, 1)
    t = obj.time_of(sigma.flatten())
    expected = (x + sigma * eps) / torch.sqrt(sigma ** 2 + 0.25)
    assert torch.allclose(obj.corrupt(x, eps, t), expected, rtol=1e-4, atol=1e-6)
    assert obj.corrupt(x.bfloat16(), eps.bfloat16(), t).dtype == torch.bfloat16


# ---- loss ----------------------------------------------------------------------------------------

def test_ideal_network_output_gives_zero_loss():
    obj = edm()
    x, eps = torch.rand(5, 3, 8, 8) * 2 - 1, torch.randn(5, 3, 8, 8)
    t = obj.time_of(torch.tensor([0.002, 0.1, 0.5, 5.0, 80.0]))
    sigma = obj.sigma(t).view(-1, 1, 1, 1)
    x_noisy = x + sigma * eps
    ideal = (x - obj.c_skip(sigma) * x_noisy) / obj.c_out(sigma)
    assert torch.allclose(obj.denoised(ideal, x_noisy, sigma), x, atol=1e-5)
    out = obj.loss(ideal, x, eps, obj.corrupt(x, eps, t), t)
    assert set(out) == {"loss", "diffusion"} and out["loss"] < 1e-6
    assert obj.loss(ideal + 0.1, x, eps, obj.corrupt(x, eps, t), t)["loss"] == pytest.approx(0.01, rel=1e-3)


def test_loss_equals_the_hand_computation_with_pixel_weight():
    obj = edm(sigma_data=0.7)
    x, eps = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    pred = torch.randn(4, 3, 8, 8)
    sig = [0.02, 0.4, 1.5, 30.0]
    t = obj.time_of(torch.tensor(sig))
    w = torch.rand(4, 1, 8, 8)
    w[2, 0, 1, 1] = 0.0
    out = obj.loss(pred, x, eps, obj.corrupt(x, eps, t), t, w)
    s = obj.sigma(t).double().view(-1, 1, 1, 1)            # the sigma the objective sees (t is float32)
    sd = 0.7
    c_skip, c_out = sd ** 2 / (s ** 2 + sd ** 2), s * sd / (s ** 2 + sd ** 2).sqrt()
    d = c_skip * (x.double() + s * eps.double()) + c_out * pred.double()
    expected = (w.double() * (s ** 2 + sd ** 2) / (s * sd) ** 2 * (d - x.double()) ** 2).mean()
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4)
    assert torch.equal(out["loss"], out["diffusion"])
    # the zero-weight pixel does not count, the unweighted loss differs
    changed = pred.clone()
    changed[2, :, 1, 1] += 5.0
    assert torch.allclose(obj.loss(changed, x, eps, None, t, w)["loss"], out["loss"])
    assert not torch.allclose(obj.loss(pred, x, eps, None, t)["loss"], out["loss"])


# ---- samplers ------------------------------------------------------------------------------------

X_STAR = torch.linspace(-1, 1, 48).view(1, *SHAPE)


def test_sigma_grid_is_edm_eq_5():
    grid = edm_sigma_grid(18, 0.002, 80.0, 7.0)
    assert len(grid) == 19 and grid[0] == pytest.approx(80.0) and grid[17] == pytest.approx(0.002) and grid[18] == 0
    i = 5
    hi, lo = 80.0 ** (1 / 7), 0.002 ** (1 / 7)
    assert grid[i] == pytest.approx((hi + i / 17 * (lo - hi)) ** 7)
    assert all(a > b for a, b in zip(grid, grid[1:]))
    assert edm_sigma_grid(1, 0.002, 80.0, 7.0) == [80.0, 0.0]


@pytest.mark.parametrize("kind", ["edm_euler", "edm_heun"])
def test_samplers_land_exactly_on_a_constant_denoiser(kind):
    """D = x* for every input: dx/dsigma = (x - x*)/sigma is solved exactly by both solvers."""
    obj = edm()
    net = Recorder(denoiser_net(obj, lambda x, sigma, y: X_STAR.double().expand_as(x)))
    out = sample(net, obj, SamplerConfig(kind=kind, steps=7), labels(), SHAPE, gen(), NULL)
    assert out.shape == (4, *SHAPE) and out.dtype == torch.float32
    assert (out - X_STAR).abs().max() < 1e-4
    # 2N - 1 evaluations for Heun (none at sigma = 0), N for Euler; the first at c_noise(sigma_max)
    assert len(net.calls) == (13 if kind == "edm_heun" else 7)
    assert net.calls[0][1] == pytest.approx(math.log(80.0) / 4, rel=1e-4)
    assert min(t for _, t in net.calls) == pytest.approx(math.log(0.002) / 4, rel=1e-3)


def gaussian_run(kind, steps, s=0.5, n=2048):
    """Data N(0, s^2) per pixel: D(x; sigma) = x s^2 / (s^2 + sigma^2), so the ODE is linear and its flow map
    from sigma_max to 0 is x -> x s / sqrt(s^2 + sigma_max^2). Returns (samples, exact flow map, discrete map)."""
    obj = edm()
    net = denoiser_net(obj, lambda x, sigma, y: x * s ** 2 / (s ** 2 + sigma ** 2))
    out = sample(net, obj, SamplerConfig(kind=kind, steps=steps), labels(n), SHAPE, gen(7), NULL)
    x_max = 80.0 * torch.randn((n, *SHAPE), generator=gen(7))
    exact = x_max * s / math.sqrt(s ** 2 + 80.0 ** 2)
    factor = 1.0                                           # Algorithm 1 by hand, on the scalar linear ODE
    grid = edm_sigma_grid(steps, 0.002, 80.0, 7.0)
    for a, b in zip(grid, grid[1:]):
        def slope(sig):                                   # d = (x - D)/sigma = x sigma / (s^2 + sigma^2)
            return sig / (s ** 2 + sig ** 2)
        step = 1 + (b - a) * slope(a)
        if kind == "edm_heun" and b > 0:
            step = 1 + (b - a) * 0.5 * (slope(a) + slope(b) * step)
        factor *= step
    return out, exact, x_max * factor


def test_heun_18_steps_reproduces_gaussian_data_and_beats_euler():
    heun, exact, discrete = gaussian_run("edm_heun", 18)
    assert torch.allclose(heun, discrete, rtol=1e-4, atol=1e-5)      # exactly Algorithm 1
    assert abs(heun.std().item() / 0.5 - 1) < 0.07                   # EDM's 18 steps: std within a few %
    assert abs(heun.mean().item()) < 0.02
    fine, _, _ = gaussian_run("edm_heun", 40)
    assert abs(fine.std().item() / 0.5 - 1) < 0.015                  # and it converges
    euler, _, euler_discrete = gaussian_run("edm_euler", 18)
    assert torch.allclose(euler, euler_discrete, rtol=1e-4, atol=1e-5)
    err = {name: (v - exact).abs().max().item() for name, v in (("heun", heun), ("euler", euler), ("fine", fine))}
    assert err["heun"] < err["euler"] / 2 and err["fine"] < err["heun"] / 4          # second order
    assert abs(euler.std().item() / 0.5 - 1) > 2 * abs(heun.std().item() / 0.5 - 1)
    few, _, _ = gaussian_run("edm_euler", 6)
    assert abs(few.std().item() / 0.5 - 1) > 0.3                    # few Euler steps: far off


# ---- classifier-free guidance --------------------------------------------------------------------

def label_denoiser(x, sigma, y):
    """A denoiser depending on x, sigma and the label (the null label included)."""
    yb = y.double().view(-1, 1, 1, 1)
    return 0.2 * x / (1 + sigma ** 2) + 0.1 * torch.sin(yb + sigma) - 0.05 * yb


def test_cfg_guides_the_denoised_image():
    obj = edm()
    net = Recorder(denoiser_net(obj, label_denoiser))
    # one step from sigma_max to 0 returns D(sigma_max * noise) itself
    out = sample(net, obj, SamplerConfig(kind="edm_euler", steps=1, cfg_scale=2.5), labels(), SHAPE, gen(), NULL)
    x = 80.0 * torch.randn((4, *SHAPE), generator=gen()).double()
    sigma = torch.full((4, 1, 1, 1), 80.0, dtype=torch.float64)
    cond, uncond = label_denoiser(x, sigma, labels()), label_denoiser(x, sigma, torch.full((4,), NULL))
    assert torch.allclose(out.double(), uncond + 2.5 * (cond - uncond), atol=1e-4)
    assert not torch.allclose(out.double(), cond, atol=1e-2)
    assert [b for b, _ in net.calls] == [8]                          # one forward of [labels | null]
    # over a whole Heun run: the same as the mixing done inside the denoiser
    guided = sample(denoiser_net(obj, label_denoiser), obj, SamplerConfig(kind="edm_heun", steps=6, cfg_scale=2.5),
                    labels(), SHAPE, gen(), NULL)

    def mixed(x, sigma, y):
        c, u = label_denoiser(x, sigma, y), label_denoiser(x, sigma, torch.full_like(y, NULL))
        return u + 2.5 * (c - u)
    ref = sample(denoiser_net(obj, mixed), obj, SamplerConfig(kind="edm_heun", steps=6), labels(), SHAPE, gen(), NULL)
    assert torch.allclose(guided, ref, atol=1e-4, rtol=1e-4)


def test_cfg_interval_is_on_t_of_sigma():
    obj = edm()
    net = Recorder(denoiser_net(obj, label_denoiser))
    cfg = SamplerConfig(kind="edm_heun", steps=10, cfg_scale=3.0, cfg_interval=[0.5, 1.0])
    sample(net, obj, cfg, labels(), SHAPE, gen(), NULL)
    assert len(net.calls) == 19
    for batch, c_noise in net.calls:                     # t = 1/(1 + sigma) >= 0.5  <=>  sigma <= 1
        assert batch == (8 if math.exp(4 * c_noise) <= 1 + 1e-4 else 4)
    grid = edm_sigma_grid(10, 0.002, 80.0, 7.0)
    evaluated = grid[:10] + grid[1:10]                   # first evaluations, then the Heun corrections
    assert sum(b == 8 for b, _ in net.calls) == sum(s <= 1 for s in evaluated) > 0
    assert sum(b == 4 for b, _ in net.calls) > 0


# ---- validation ----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, model, key", [
    ({}, dict(prediction="velocity"), "model.prediction='velocity': objective.kind=edm needs model.prediction=image"),
    ({}, dict(prediction="noise"), "model.prediction='noise'"),
    (dict(noise_scale=2.0), {}, "objective.noise_scale=2.0: objective.kind=edm"),
    (dict(sigma_data=0.0), {}, "objective.sigma_data=0.0"),
    (dict(sigma_data=float("inf")), {}, "objective.sigma_data=inf"),
    (dict(time_shift=3.0), {}, "objective.time_shift=3.0: objective.kind=edm"),
    (dict(t_sampling="uniform"), {}, "objective.t_sampling='uniform': objective.kind=edm"),
    ({}, dict(learn_sigma=True), "model.learn_sigma=true"),
])
def test_invalid_edm_objectives_name_the_key(changes, model, key):
    with pytest.raises(ConfigError) as err:
        make_objective(ObjectiveConfig(kind="edm", **changes), ModelConfig(**{"prediction": "image", **model}))
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


@pytest.mark.parametrize("changes, objective, key", [
    (dict(kind="ddim"), "edm", "eval.sampler.kind='ddim': not a sampler for objective.kind=edm"),
    (dict(kind="heun"), "edm", "eval.sampler.kind='heun': not a sampler for objective.kind=edm"),
    (dict(kind="edm_heun"), "flow", "eval.sampler.kind='edm_heun': not a sampler for objective.kind=flow"),
    (dict(kind="edm_euler"), "ddpm", "eval.sampler.kind='edm_euler'"),
    (dict(kind="edm_heun", sigma_min=80.0), "edm", "eval.sampler.sigma_max=80.0: must be finite and greater"),
    (dict(kind="edm_heun", sigma_min=1.0, sigma_max=0.5), "edm", "eval.sampler.sigma_max=0.5"),
    (dict(kind="edm_heun", sigma_min=0.0), "edm", "eval.sampler.sigma_min=0.0"),
    (dict(kind="edm_heun", rho=0.0), "edm", "eval.sampler.rho=0.0"),
    (dict(kind="edm_heun", time_shift=3.0), "edm", "eval.sampler.time_shift=3.0"),
])
def test_invalid_edm_samplers_name_the_key(changes, objective, key):
    with pytest.raises(ConfigError) as err:
        validate_sampler(SamplerConfig(**changes), objective, num_timesteps=1000)
    assert str(err.value).startswith(key) and "\n" not in str(err.value)


def test_edm_recipes_validate_and_mismatches_are_refused():
    validate_objective(ObjectiveConfig(kind="edm", p_mean=-1.2, p_std=1.2), ModelConfig(prediction="image"))
    validate_sampler(SamplerConfig(kind="edm_heun", steps=18), "edm")                # CIFAR-10
    validate_sampler(SamplerConfig(kind="edm_heun", steps=40, cfg_scale=1.5), "edm")  # FFHQ-64
    with pytest.raises(ConfigError, match=r"^model\.prediction='velocity': objective\.kind=edm"):
        resolve(["+experiment=tiny_digits", "model.prediction=velocity", "objective.kind=edm",
                 "eval.sampler.kind=edm_heun"])
    with pytest.raises(ConfigError, match=r"^eval\.sampler\.kind='ab2': not a sampler for objective\.kind=edm"):
        resolve(["+experiment=tiny_digits", "model.prediction=image", "objective.kind=edm"])
    with pytest.raises(ConfigError, match=r"^eval\.sampler\.kind='ddim'"):
        sample(lambda x, t, y: x, edm(), SamplerConfig(kind="ddim"), labels(), SHAPE, gen(), NULL)


# ---- through the real trainer --------------------------------------------------------------------

def test_edm_trains_and_evaluates_through_the_trainer(tmp_path):
    result = train(resolve(tiny_overrides(tmp_path, "edm", steps=10, **{
        **TINY_OFFLINE_EVAL, "eval.num_samples": 20, "train.log_every": 1, "checkpoint.every_steps": 100,
        "model.prediction": "image", "objective.kind": "edm", "objective.p_mean": -1.2, "objective.p_std": 1.2,
        "eval.sampler.kind": "edm_heun"})))
    client = MlflowClient(f"sqlite:///{result.run_dir / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["objective.kind"] == "edm"
    losses = [m.value for m in sorted(client.get_metric_history(result.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 10 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3])
    assert result.metrics.keys() == {"fd", "class_acc"} and math.isfinite(result.metrics["fd"])
