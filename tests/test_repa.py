"""REPA's frozen encoder (timm, offline weights) and its alignment loss."""
import os
import time

import pytest
import torch
from safetensors.torch import save_file

from harness.repa import RepaEncoder, repa_loss
from toolkit.errors import ConfigError

SMALL = "vit_small_patch14_dinov2.lvd142m"


@pytest.fixture(scope="module")
def small_encoder():
    return RepaEncoder(SMALL, "random", grid_size=2)


def test_random_encoder_is_frozen_and_returns_patch_tokens(small_encoder):
    enc = small_encoder
    assert enc.random_weights and enc.dim == 384 and enc.image_size == 28
    assert not enc.training and all(not p.requires_grad for p in enc.parameters())
    enc.train()                                   # a parent's .train() does not unfreeze it
    assert not enc.training and not enc.model.training
    images = torch.rand(3, 3, 32, 32) * 2 - 1
    tokens = enc(images)
    assert tokens.shape == (3, 4, 384) and not tokens.requires_grad
    assert torch.isfinite(tokens).all()


def test_forward_normalises_and_resizes_like_repa(small_encoder, monkeypatch):
    """Input [-1, 1] -> [0, 1] -> ImageNet mean/std -> bicubic to 14 * grid; prefix tokens dropped."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    enc = small_encoder
    seen = {}
    original = enc.model.forward_features

    def spy(x):
        seen["x"] = x
        out = original(x)
        seen["out"] = out
        return out

    monkeypatch.setattr(enc.model, "forward_features", spy)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    tokens = enc(images)
    mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
    expected = torch.nn.functional.interpolate(((images + 1) / 2 - mean) / std, size=(28, 28), mode="bicubic",
                                               align_corners=False)
    torch.testing.assert_close(seen["x"], expected)
    assert seen["out"].shape[1] == 4 + enc.num_prefix_tokens and enc.num_prefix_tokens == 1
    torch.testing.assert_close(tokens, seen["out"][:, 1:])


def test_default_encoder_at_256px_grid():
    t0 = time.time()
    enc = RepaEncoder("vit_base_patch14_dinov2.lvd142m", "random", grid_size=16)
    assert enc.image_size == 224 and enc.dim == 768
    assert enc.model.patch_embed.grid_size == (16, 16)
    tokens = enc(torch.rand(1, 3, 256, 256) * 2 - 1)
    assert tokens.shape == (1, 256, 768)
    assert time.time() - t0 < 30


def test_local_file_weights_load_through_timm(small_encoder, tmp_path):
    source = small_encoder
    path = tmp_path / "dinov2_small.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))

    loaded = RepaEncoder(SMALL, str(path), grid_size=2)
    assert not loaded.random_weights
    src, dst = source.model.state_dict(), loaded.model.state_dict()
    assert src.keys() == dst.keys()
    fresh = torch.nn.init.trunc_normal_(torch.empty_like(src["blocks.0.attn.qkv.weight"]), std=0.02)
    assert not torch.equal(fresh, src["blocks.0.attn.qkv.weight"])   # random inits differ: equality means loaded
    for k in src:
        torch.testing.assert_close(dst[k], src[k], rtol=0, atol=0)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(images), source(images))

    # a file saved at another grid: timm's checkpoint filter resamples the position embedding
    other = RepaEncoder(SMALL, str(path), grid_size=3)
    assert other.model.pos_embed.shape[1] == 1 + 9
    assert other(torch.rand(1, 3, 48, 48) * 2 - 1).shape == (1, 9, 384)


def test_missing_file_and_unknown_model_are_config_errors(tmp_path):
    missing = str(tmp_path / "nope.safetensors")
    with pytest.raises(ConfigError) as err:
        RepaEncoder(SMALL, missing, grid_size=2)
    assert str(err.value) == f"repa.encoder_weights='{missing}': file does not exist"
    with pytest.raises(ConfigError) as err:
        RepaEncoder("no_such_vit_xyz", "random", grid_size=2)
    assert str(err.value).startswith("repa.encoder='no_such_vit_xyz': unknown timm model")
    with pytest.raises(ConfigError, match=r"^repa\.encoder=.*unknown timm model"):
        RepaEncoder("vit_small_patch14_dinov2.no_such_tag", "random", grid_size=2)


def test_hub_without_cache_fails_fast_and_restores_the_environment(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    offline_before = constants.HF_HUB_OFFLINE
    t0 = time.time()
    with pytest.raises(ConfigError) as err:
        RepaEncoder(SMALL, "hub", grid_size=2)
    assert time.time() - t0 < 10
    assert str(err.value) == (f"repa.encoder_weights='hub': no cached weights for {SMALL} and the hub is "
                              "unreachable; give a local file or 'random'")
    assert "\n" not in str(err.value)
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE == offline_before


def test_repa_loss_values_and_gradient():
    target = torch.randn(2, 5, 8)
    assert repa_loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-6)
    assert repa_loss(-target, target).item() == pytest.approx(2.0, abs=1e-6)
    assert repa_loss(3.0 * target, target).item() == pytest.approx(0.0, abs=1e-6)   # scale-free

    projected = torch.randn(2, 5, 8, requires_grad=True)
    target = torch.randn(2, 5, 8, requires_grad=True)
    loss = repa_loss(projected, target)
    manual = (1 - torch.nn.functional.cosine_similarity(projected, target, dim=-1)).mean()
    torch.testing.assert_close(loss, manual)
    loss.backward()
    assert projected.grad is not None and projected.grad.abs().sum() > 0
    assert target.grad is None
    with pytest.raises(ValueError):
        repa_loss(torch.randn(2, 5, 8), torch.randn(2, 4, 8))
