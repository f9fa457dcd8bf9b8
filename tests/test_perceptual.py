"""PixelGen's perceptual losses (harness/perceptual.py): the official loss terms to 1e-5 (golden fixture made by
running PixelGen's trainer: tests/fixtures/official/README.md), the noise gate, where the weights come from, and
that the switch changes the loss by its terms and nothing else."""

import pytest
import torch
from conftest import official_outputs, switch_fixture_maker
from safetensors.torch import save_file

from harness.config import ObjectiveConfig, PerceptualConfig
from harness.objectives import make_objective
from harness.perceptual import PerceptualLoss, lpips_network, validate_perceptual
from harness.repa import RepaEncoder, repa_loss
from models.presets import model_config
from toolkit.errors import ConfigError

PIXELGEN_XL = dict(lpips_weight=0.1, dino_weight=0.01, t_min=0.3)      # configs_c2i/PixelGen_XL.yaml



@pytest.fixture(scope="module")
def golden():
    return official_outputs("pixelgen_loss.safetensors")


@pytest.fixture(scope="module")
def networks(golden, tmp_path_factory):
    """Our LPIPS (the fixture's seeded VGG16 through a torchvision-layout file) and the narrowed DINOv2 in timm,
    with the official weights converted by timm's own DINOv2 filter."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    tensors, _ = golden
    vgg = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(switch_fixture_maker().random_vgg16(), str(vgg))
    lpips = lpips_network(str(vgg))
    for key, value in lpips.state_dict().items():           # the package's linear heads are the official ones
        if key.startswith("lin"):
            torch.testing.assert_close(value, tensors[f"lpips/{key}"], rtol=0, atol=0)
    dino = RepaEncoder("vit_base_patch14_dinov2", "random", grid_size=2, group="perceptual",
                       arch=dict(embed_dim=24, num_heads=2))
    official = {k.removeprefix("dino/"): v for k, v in tensors.items() if k.startswith("dino/")}
    dino.model.load_state_dict(checkpoint_filter_fn(official, dino.model))
    return lpips, dino


def pixelgen_model():
    """The zoo's config of the fixture's tiny PixelGen JiT (no bottleneck, 3 in-context tokens before block 1)."""
    return model_config("jit_b16", ["input_size=32", "patch_size=16", "hidden_size=32", "depth=4", "num_heads=2",
                                    "num_classes=10", "patch_embed=linear", "in_context_tokens=3",
                                    "in_context_start=1"])


@pytest.mark.parametrize("call", ["mixed", "gated_out"])
def test_loss_terms_equal_pixelgens(golden, networks, call):
    """PixelGen-XL's loss on the same inputs: the flow loss, REPA, LPIPS and P-DINO (gated at t >= 0.3: two of six
    samples pass; then none, where LPIPS is 0 and P-DINO the constant 1) and their sum, to 1e-5."""
    tensors, meta = golden
    lpips, dino = networks
    get = lambda name: tensors[f"{call}/{name}"]                  # noqa: E731
    x, t, x_t, prediction = get("input/x"), get("input/t"), get("input/x_t"), get("output/prediction")
    assert meta["trainer_kwargs"]["lpips_weight"] == 0.1 and meta["trainer_kwargs"]["percept_t_threshold"] == 0.3
    assert meta["calls"][call]["passing"] == (2 if call == "mixed" else 0)

    model = pixelgen_model()
    objective = make_objective(ObjectiveConfig(p_mean=-0.8, p_std=0.8), model)
    perceptual = PerceptualLoss(PerceptualConfig(**PIXELGEN_XL), model, lpips=lpips, dino=dino)
    with torch.no_grad():
        terms = objective.loss(prediction, x, torch.zeros_like(x), x_t, t)
        repa = repa_loss(get("output/repa_projected"), dino(x))
        ours = perceptual(objective.clean_image(prediction, x_t, t), x, t)
    total = terms["loss"] + 0.5 * repa + ours["perceptual"]
    pairs = {"fm_loss": terms["diffusion"], "cos_loss": repa, "lpips_loss": ours["lpips"],
             "dino_percept_loss": ours["pdino"], "loss": total}
    for official, value in pairs.items():
        torch.testing.assert_close(value, get(f"loss/{official}"), rtol=0, atol=1e-5, msg=official)


def test_gate_keeps_only_the_less_noisy_samples(networks):
    """LPIPS averages over the samples with t >= t_min only: changing a gated-out sample's prediction changes
    nothing; `dino_gate=sample` likewise, while PixelGen's `batch` gate averages P-DINO over every sample."""
    lpips, dino = networks
    model = pixelgen_model()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    x_hat = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    t = torch.tensor([0.9, 0.1, 0.5, 0.2])
    other = x_hat.clone()
    other[[1, 3]] = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1     # only the gated-out samples change

    def terms(gate, images):
        loss = PerceptualLoss(PerceptualConfig(**PIXELGEN_XL, dino_gate=gate), model, lpips=lpips, dino=dino)
        with torch.no_grad():
            return loss(images, x, t)

    for gate in ("batch", "sample"):
        assert torch.equal(terms(gate, x_hat)["lpips"], terms(gate, other)["lpips"])
    assert torch.equal(terms("sample", x_hat)["pdino"], terms("sample", other)["pdino"])
    assert not torch.equal(terms("batch", x_hat)["pdino"], terms("batch", other)["pdino"])
    passing = PerceptualLoss(PerceptualConfig(**{**PIXELGEN_XL, "t_min": 0.0}), model, lpips=lpips, dino=dino)
    with torch.no_grad():
        whole = passing(x_hat[[0, 2]], x[[0, 2]], t[[0, 2]])
    torch.testing.assert_close(terms("sample", x_hat)["lpips"], whole["lpips"])
    torch.testing.assert_close(terms("sample", x_hat)["pdino"], whole["pdino"])


def test_gradient_reaches_the_prediction_only_through_the_passing_samples(networks):
    lpips, dino = networks
    loss = PerceptualLoss(PerceptualConfig(**PIXELGEN_XL, dino_gate="sample"), pixelgen_model(), lpips=lpips,
                          dino=dino)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x_hat = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    loss(x_hat, x, torch.tensor([0.8, 0.1]))["perceptual"].backward()
    assert x_hat.grad[0].abs().sum() > 0 and torch.equal(x_hat.grad[1], torch.zeros_like(x_hat.grad[1]))
    assert all(p.grad is None for p in loss.parameters())            # the networks stay frozen


def test_weights_come_from_a_file_the_hub_cache_or_random_with_one_line_when_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        lpips_network("hub")
    assert str(err.value).startswith("perceptual.vgg_weights='hub': no VGG16 weights in the local torch hub cache")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="perceptual.vgg_weights='.*missing.pth': file does not exist"):
        lpips_network(str(tmp_path / "missing.pth"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    state = switch_fixture_maker().random_vgg16(seed=3)
    torch.save({**state, "classifier.0.weight": torch.zeros(2, 2)}, tmp_path / "hub" / "checkpoints" /
               "vgg16-397923af.pth")
    from_hub = lpips_network("hub")
    torch.testing.assert_close(from_hub.net.slice1[0].weight, state["features.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(from_hub.net.slice5._modules["28"].bias, state["features.28.bias"], rtol=0, atol=0)
    torch.save({"features.0.weight": state["features.0.weight"]}, tmp_path / "partial.pth")
    with pytest.raises(ConfigError, match="not a torchvision VGG16 state dict"):
        lpips_network(str(tmp_path / "partial.pth"))
    first, second = lpips_network("random"), lpips_network("random")
    assert torch.equal(first.net.slice1[0].weight, second.net.slice1[0].weight)     # seeded: reproducible
    with pytest.raises(ConfigError, match="perceptual.encoder_weights='hub': no cached weights"):
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
        PerceptualLoss(PerceptualConfig(dino_weight=0.01, encoder="vit_small_patch14_dinov2.lvd142m"),
                       pixelgen_model())


def test_refusals_name_the_key():
    model = pixelgen_model()
    with pytest.raises(ConfigError, match=r"^perceptual.lpips_weight=0.1: .*objective.kind=flow \(not edm\)"):
        validate_perceptual(PerceptualConfig(lpips_weight=0.1), model, "edm")
    with pytest.raises(ConfigError, match=r"^perceptual.t_min=1.0: must be in \[0, 1\)"):
        validate_perceptual(PerceptualConfig(t_min=1.0), model, "flow")
    with pytest.raises(ConfigError, match=r"^perceptual.dino_weight=0.01: P-DINO .* multiple of 16"):
        validate_perceptual(PerceptualConfig(dino_weight=0.01), model.replace(input_size=24, patch_size=8), "flow")
    validate_perceptual(PerceptualConfig(**PIXELGEN_XL), model, "flow")


def test_audit_against_pixelgens_recipe_cites_its_code():
    from harness.audit import differences, load_flat
    _, ours = load_flat("pixelgen_xl_paper", ["perceptual.t_min=0", "perceptual.dino_weight=0",
                                              "optim.optimizer=muon"])
    name, paper = load_flat("pixelgen_xl_paper", [])
    rows = {row["key"]: row for row in differences(ours, paper, name)}
    assert set(rows) == {"perceptual.t_min", "perceptual.dino_weight", "optim.optimizer"}
    assert rows["perceptual.t_min"]["source"] == \
        "PixelGen (arXiv 2602.02493) configs_c2i/PixelGen_XL.yaml: percept_t_threshold 0.3"
    assert rows["optim.optimizer"][name] == "adamw" and "torch.optim.AdamW" in rows["optim.optimizer"]["source"]
    _, pixeldit = load_flat("pixeldit_xl_paper", [])
    keys = {row["key"] for row in differences(paper, pixeldit, "pixeldit_xl_paper")}
    assert {"perceptual.lpips_weight", "perceptual.dino_weight", "perceptual.t_min", "model.prediction"} <= keys
