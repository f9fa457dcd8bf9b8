"""DeCo's frequency-aware flow-matching loss (`objective.freq_weight`, harness/objectives.py `FrequencyLoss`): the
official loss terms to 1e-5 (golden fixture made by running DeCo's trainer: tests/fixtures/official/README.md),
what it weighs, and that it adds its term and changes nothing else."""
import json

import pytest
import torch
from conftest import ROOT
from safetensors import safe_open

from harness.config import ObjectiveConfig
from harness.objectives import FrequencyLoss, dct_matrix, jpeg_table, make_objective
from models.presets import model_config
from toolkit.errors import ConfigError

FIXTURE = ROOT / "tests" / "fixtures" / "official" / "deco_loss.safetensors"


@pytest.fixture(scope="module")
def golden():
    with safe_open(str(FIXTURE), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["official"])


def velocity_model(**changes):
    return model_config("pixeldit_xl", ["input_size=32", "patch_size=8", "num_classes=10"]).replace(**changes)


@pytest.mark.parametrize("call", ["blocks", "padded"])
def test_loss_terms_equal_decos(golden, call):
    """DeCo's defaults (weight 1, quality 85, gamma 1) on the official inputs: 32 px (whole 8x8 blocks) and 36 px
    (reflect-padded): its flow-matching loss, its frequency term and their sum with its REPA term, to 1e-5."""
    tensors, meta = golden
    get = lambda name: tensors[f"{call}/{name}"]                  # noqa: E731
    size = meta["calls"][call]["size"]
    objective = make_objective(ObjectiveConfig(freq_weight=1.0), velocity_model(input_size=size, patch_size=4))
    terms = objective.loss(get("output/velocity"), get("input/x"), get("input/noise"), get("input/x_t"),
                           get("input/t"))
    torch.testing.assert_close(terms["diffusion"], get("loss/fm_loss"), rtol=0, atol=1e-5)
    torch.testing.assert_close(terms["freq"], get("loss/fm_loss_freq"), rtol=0, atol=1e-5)
    torch.testing.assert_close(terms["loss"] + 0.5 * get("loss/cos_loss"), get("loss/loss"), rtol=0, atol=1e-5)


def test_weights_are_decos_jpeg_tables(golden):
    tensors, _ = golden
    torch.testing.assert_close(FrequencyLoss(85, 1.0).weights, tensors["freq_weights"], rtol=0, atol=1e-6)
    assert jpeg_table(((16,),), 50).item() == 16 and jpeg_table(((16,),), 100).item() == 1     # libjpeg's rule
    assert jpeg_table(((16,),), 10).item() == 80
    dct = dct_matrix()
    torch.testing.assert_close(dct @ dct.T, torch.eye(8), rtol=0, atol=1e-6)                   # orthonormal


def test_an_error_costs_its_coefficients_table_weight():
    """An error in one DCT coefficient of one YCbCr channel costs that coefficient's weight (over the 3 x 64
    coefficients of the block): low frequencies more than high ones, in luminance and chrominance; a grey error is
    its luminance (r = g = b)."""
    loss = FrequencyLoss(85, 1.0)
    dct = dct_matrix()

    def cost(channel, v, u, channels=3):
        coefficient = torch.zeros(8, 8)
        coefficient[v, u] = 1.0
        block = dct.T @ coefficient @ dct                      # the image of one coefficient
        ycbcr = torch.zeros(1, 3, 8, 8)
        ycbcr[0, channel] = block
        rgb = torch.einsum("cd,bdhw->bchw", torch.linalg.inv(loss.ycbcr), ycbcr)
        return loss(rgb[:, :channels])

    assert cost(0, 0, 0) > cost(0, 7, 7) and cost(2, 0, 1) > cost(2, 6, 6)
    for channel, v, u in ((0, 3, 5), (1, 0, 0), (2, 7, 2)):         # vertical, horizontal frequency
        torch.testing.assert_close(cost(channel, v, u), loss.weights[channel, v, u] / (3 * 64), rtol=1e-5, atol=0)
    grey = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(loss(grey), loss(grey.expand(-1, 3, -1, -1)), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("prediction", ["velocity", "image", "noise"])
def test_the_switch_adds_its_term_and_changes_nothing_else(prediction):
    model = velocity_model(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 3, 32, 32, generator=g), torch.randn(3, 3, 32, 32, generator=g)
    pred, t = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0.2, 0.5, 0.97])
    off = make_objective(ObjectiveConfig(), model)
    on = make_objective(ObjectiveConfig(freq_weight=0.5), model)
    x_t = off.corrupt(x, eps, t)
    a, b = off.loss(pred, x, eps, x_t, t), on.loss(pred, x, eps, x_t, t)
    assert set(a) == {"loss", "diffusion"} and torch.equal(a["loss"], a["diffusion"])
    assert torch.equal(a["diffusion"], b["diffusion"])
    assert torch.equal(b["loss"], b["diffusion"] + 0.5 * b["freq"]) and b["freq"] > 0
    error = on.velocity(pred, x_t, t) - on.velocity_target(x, eps, x_t, t)
    torch.testing.assert_close(b["freq"], on.frequency(error))


def test_refusals_name_the_key():
    with pytest.raises(ConfigError, match=r"^objective.freq_weight=1.0: DeCo's .* objective.kind=flow \(not edm\)"):
        make_objective(ObjectiveConfig(kind="edm", freq_weight=1.0), velocity_model(prediction="image"))
    with pytest.raises(ConfigError, match=r"^objective.freq_quality=0: a JPEG quality is an integer in \[1, 100\]"):
        make_objective(ObjectiveConfig(freq_weight=1.0, freq_quality=0), velocity_model())
    with pytest.raises(ConfigError, match=r"^objective.freq_weight=1.0: .*model.in_channels 1 or 3"):
        make_objective(ObjectiveConfig(freq_weight=1.0), velocity_model(in_channels=4))
