"""Checkpoints that are either whole or refused.

Written atomically (a temporary file in the same folder, renamed over the old one, so a kill mid-write
leaves the previous file intact), each carrying a SHA-256 of its contents (every tensor's bytes, dtype and
shape, and every other value), and the previous one kept beside it (`last.prev.pt`). Loading verifies the
checksum: a truncated, zero-byte or garbled file is refused in one line naming it, renamed to
`<name>.corrupt` for inspection, and resuming falls back to the previous checkpoint when that one is good.
When none is good, resuming is refused, and refused again on the next attempt (the damaged files set aside
before are still the run's only checkpoints): a run is never silently started again at step 0. A write
that fails (a full disk) is one line naming the file, the cause and the free space (`toolkit.files`).
The random state needs no saving: every step reseeds its generators from (seed, rank, step).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import LocatedError
from toolkit.files import atomic_write

CHECKSUM_KEY = "checksum_sha256"
CORRUPT_SUFFIX = ".corrupt"


class CheckpointError(LocatedError):
    """A checkpoint that cannot be trusted; the message is one line naming the file."""


class NoGoodCheckpoint(CheckpointError):
    """Every checkpoint of a run is damaged (now, or set aside as damaged by an earlier attempt)."""


def state_digest(state: Any) -> str:
    """SHA-256 of a checkpoint's contents, in a fixed order (the checksum itself excluded)."""
    digest = hashlib.sha256()

    def walk(node: Any) -> None:
        if isinstance(node, torch.Tensor):
            tensor = node.detach().cpu().contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())        # the buffer, no copy
        elif isinstance(node, dict):
            for key in sorted(node, key=str):
                if key != CHECKSUM_KEY:
                    digest.update(f"K{key!r}".encode())
                    walk(node[key])
        elif isinstance(node, (list, tuple)):
            digest.update(f"L{len(node)}".encode())
            for item in node:
                walk(item)
        else:
            digest.update(f"V{node!r}".encode())

    walk(state)
    return digest.hexdigest()


def previous_path(path: Path, age: int = 1) -> Path:
    """The checkpoint written `age` saves before `path`: last.prev.pt, last.prev2.pt, ..."""
    return path.with_name(f"{path.stem}.prev{'' if age == 1 else age}{path.suffix}")


def rolling(path: Path) -> list[Path]:
    """`path` and the checkpoints before it that are present, newest first (a gap left by a kill mid-rotation
    skipped)."""
    path = Path(path)
    pattern = re.compile(rf"{re.escape(path.stem)}\.prev(\d*){re.escape(path.suffix)}")
    older = sorted((int(m[1] or 1), p) for p in path.parent.glob(f"{path.stem}.prev*{path.suffix}")
                   if (m := pattern.fullmatch(p.name)))
    return ([path] if path.exists() else []) + [p for _, p in older]


def save_checkpoint(state: dict, path: Path, keep: int = 2) -> None:
    """Write `state` with its checksum; the `keep - 1` checkpoints before it stay as last.prev.pt, last.prev2.pt,
    ... (harness/retention.py), each renamed one slot older, the oldest first: a kill between two renames
    loses no newer file."""
    state = {**state, CHECKSUM_KEY: state_digest(state)}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())

    path = Path(path)
    if path.exists():
        for age in range(keep - 1, 1, -1):
            if previous_path(path, age - 1).exists():
                os.replace(previous_path(path, age - 1), previous_path(path, age))
        os.replace(path, previous_path(path))
    atomic_write(path, write)


def load_checkpoint(path: Path, verify: bool = True) -> dict:
    """The verified contents of one checkpoint file; CheckpointError (one line, naming it) otherwise.
    Memory-mapped: the ranks of a node resuming from the same file share its pages. `verify=False` skips
    the checksum (the other ranks of a run whose rank 0 has just verified the file)."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty checkpoint (0 bytes)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:                       # truncated zip, garbled pickle, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: unreadable checkpoint ({first[:160]})") from None
    if not isinstance(state, dict) or not ({"model", "step"} <= set(state) or CHECKSUM_KEY in state):
        raise CheckpointError(f"{path}: not a checkpoint of this harness")
    # (files older than checksums: as they are)
    if verify and CHECKSUM_KEY in state and state_digest(state) != state[CHECKSUM_KEY]:
        raise CheckpointError(f"{path}: checksum mismatch: the contents were altered or damaged after writing")
    return state


def corrupt_path(path: Path) -> Path:
    return path.with_name(path.name + CORRUPT_SUFFIX)


def load_latest(path: Path) -> tuple[dict, Path, list[str]] | None:
    """The newest good checkpoint among `path` and its previous ones: (state, file, problems with newer files),
    or None when the run has none (a new run). A bad file is kept as `<name>.corrupt`; NoGoodCheckpoint when none
    is good, or when none exists but damaged ones were set aside before (by an earlier attempt)."""
    problems = []
    for candidate in rolling(path):
        try:
            return load_checkpoint(candidate), candidate, problems
        except CheckpointError as err:
            problems.append(f"{err} (kept as {corrupt_path(candidate).name})")
            os.replace(candidate, corrupt_path(candidate))
    if not problems:
        problems = [_set_aside(corrupt) for corrupt in set_aside(Path(path))]
    if problems:
        raise NoGoodCheckpoint("; ".join(problems) + "; no good checkpoint to resume from")
    return None


def set_aside(path: Path) -> list[Path]:
    """The damaged checkpoints earlier attempts set aside (`<name>.corrupt`), newest first."""
    pattern = re.compile(rf"{re.escape(path.stem)}(?:\.prev(\d*))?{re.escape(path.suffix)}{re.escape(CORRUPT_SUFFIX)}")
    found = [(int(m[1] or 1) if m[1] is not None else 0, p) for p in path.parent.glob(f"{path.stem}*{CORRUPT_SUFFIX}")
             if (m := pattern.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _set_aside(path: Path) -> str:
    """Why a checkpoint set aside by an earlier attempt was damaged (verified again: the reason is not kept)."""
    try:
        load_checkpoint(path)
    except CheckpointError as err:
        return f"{err} (set aside by an earlier attempt)"
    return f"{path}: set aside as damaged by an earlier attempt, yet it verifies now (rename it to resume from it)"


def remove_partial_writes(folder: Path) -> list[Path]:
    """Temporary files of writes that a kill interrupted (only one trainer writes a run folder: its lock)."""
    removed = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def keep_copy(path: Path, name: str) -> Path:
    """Keep a named copy (e.g. at an evaluation point) beside the rolling checkpoint."""
    target = path.with_name(name)
    atomic_write(target, lambda tmp: shutil.copyfile(path, tmp))
    return target
