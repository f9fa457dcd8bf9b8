"""Atomic checkpoints: written to a temporary file in the same folder, then renamed over the old one.

A kill during the write leaves the previous checkpoint intact. Loading uses weights_only=True.
The random state needs no saving: every step reseeds its generators from (seed, rank, step).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch


def save_checkpoint(state: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def keep_copy(path: Path, name: str) -> Path:
    """Keep a named copy (e.g. at an evaluation point) beside the rolling checkpoint."""
    target = path.with_name(name)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.copyfile(path, tmp)
    os.replace(tmp, target)
    return target
