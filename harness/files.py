"""Atomic file writes: a temporary file in the same folder, renamed over the target when complete.

A process killed mid-write leaves the previous file intact (checkpoints, caches, manifests).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)`, then rename onto `path`; the temporary file is removed if `write` fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def default_cache_dir() -> Path:
    """Where caches go when the caller names none (metric networks, reference statistics):
    $DITLAB_CACHE or ~/.cache/ditlab."""
    return Path(os.environ.get("DITLAB_CACHE", "~/.cache/ditlab")).expanduser()
