"""Files: atomic writes, content hashes, the cache folder.

An atomic write goes to a temporary file in the same folder, renamed over the target when complete: a process
killed mid-write leaves the previous file intact (checkpoints, caches, manifests).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from functools import lru_cache
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


def sha256(path: str | Path) -> str:
    """A file's sha256, read once per (file, size, modification time): a run's signature, its tag and the
    metric caches all ask for the same multi-GB weights files."""
    path = Path(path).resolve()
    stat = path.stat()
    return _sha256(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
