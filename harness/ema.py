"""Exponential moving averages of the weights, any number of decays (JiT keeps 0.9999 and 0.9996).

Under FSDP the averages are sharded like the parameters they follow (each rank averages its shards);
`state_dict` gathers them whole and `load_state_dict` shards them again."""
from __future__ import annotations

import copy

import torch

from .parallel import full_tensor


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

    def model_copy(self, model: torch.nn.Module, decay: float, into: torch.nn.Module | None = None) -> torch.nn.Module:
        """A copy of `model` carrying the averaged weights of `decay`, in eval mode; `into`: an unsharded
        model of the same architecture to carry them instead (for a sharded `model`; every rank calls it)."""
        averaged = (copy.deepcopy(model) if into is None else into).eval()
        with torch.no_grad():
            for param, value in zip(self._params(averaged), self.shadows[decay]):
                param.copy_(full_tensor(value))
        return averaged

    def state_dict(self) -> dict:
        """Whole tensors by parameter name (gathered from the shards under FSDP: every rank calls it)."""
        return {repr(d): {name: _whole(value) for name, value in zip(self.names, shadow)}
                for d, shadow in self.shadows.items()}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor
        for decay, shadow in self.shadows.items():
            saved = state[repr(decay)]
            with torch.no_grad():
                for name, value in zip(self.names, shadow):
                    if isinstance(value, DTensor):
                        full = saved[name].to(value.device)
                        value.copy_(distribute_tensor(full, value.device_mesh, value.placements))
                    else:
                        value.copy_(saved[name])


def _whole(tensor: torch.Tensor) -> torch.Tensor:
    """A sharded average gathered to the CPU one tensor at a time (an unsharded one as it is)."""
    whole = full_tensor(tensor)
    return whole.cpu() if whole is not tensor else tensor
