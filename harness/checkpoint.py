"""Atomic checkpoints: written to a temporary file in the same folder, then renamed over the old one.

A kill during the write leaves the previous checkpoint intact. Loading uses weights_only=True.
The random state needs no saving: every step reseeds its generators from (seed, rank, step).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from .files import atomic_write


def save_checkpoint(state: dict, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    atomic_write(path, write)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def keep_copy(path: Path, name: str) -> Path:
    """Keep a named copy (e.g. at an evaluation point) beside the rolling checkpoint."""
    target = path.with_name(name)
    atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))
    return target
