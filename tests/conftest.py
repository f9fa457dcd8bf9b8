import pytest
import torch

from models.config import ModelConfig


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def tiny(**changes) -> ModelConfig:
    """A PixelDiT-shaped model small enough for exact behaviour checks on the CPU."""
    base = dict(input_size=16, patch_size=4, depth=2, hidden_size=32, num_heads=2, pixel_depth=1,
                pixel_dim=8, num_classes=10, repa_block=1, repa_hidden=32, repa_dim=24)
    return ModelConfig(**{**base, **changes}).validate()


def randomize(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Replace the zero init (which makes every modulation vanish) by random weights."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    return model


def inputs(cfg: ModelConfig, batch: int = 2):
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    t = torch.rand(batch)
    y = torch.randint(0, cfg.num_classes, (batch,))
    return x, t, y
