"""Exponential moving averages of the weights, any number of decays (JiT keeps 0.9999 and 0.9996)."""
from __future__ import annotations

import copy

import torch


class EMA:
    def __init__(self, model: torch.nn.Module, decays: list[float]):
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        params = self._params(model)
        self.decays = list(decays)
        self.shadows = {d: [p.detach().clone() for p in params] for d in self.decays}

    def _params(self, model):
        named = dict(model.named_parameters())
        return [named[name] for name in self.names]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        params = [p.detach() for p in self._params(model)]
        for decay, shadow in self.shadows.items():
            torch._foreach_lerp_(shadow, params, 1.0 - decay)

    def model_copy(self, model: torch.nn.Module, decay: float) -> torch.nn.Module:
        """A copy of `model` carrying the averaged weights of `decay`, in eval mode."""
        averaged = copy.deepcopy(model).eval()
        with torch.no_grad():
            for param, value in zip(self._params(averaged), self.shadows[decay]):
                param.copy_(value)
        return averaged

    def state_dict(self) -> dict:
        return {repr(d): dict(zip(self.names, shadow)) for d, shadow in self.shadows.items()}

    def load_state_dict(self, state: dict) -> None:
        for decay, shadow in self.shadows.items():
            saved = state[repr(decay)]
            with torch.no_grad():
                for name, value in zip(self.names, shadow):
                    value.copy_(saved[name])
