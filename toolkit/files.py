"""Files: atomic writes, content hashes, the cache folder.

An atomic write goes to a temporary file in the same folder, renamed over the target when complete: a process
killed mid-write leaves the previous file intact (checkpoints, caches, manifests). A write that fails is one line
naming the file and the cause, the disk's free space included (`WriteError`): a full disk says "disk full", even
where the writer (torch's zip writer) hid the errno behind its own message.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Callable

from .errors import ConfigError, LocatedError, reason

LOW_SPACE = 1 << 20             # bytes: a write that failed with less free than this found the disk full
NO_SPACE = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EFBIG: "file size limit exceeded"}


class WriteError(LocatedError):
    """A file that could not be written: `PATH: not written: CAUSE (FREE free on MOUNT)`."""


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """`write(tmp_path)`, then rename onto `path`; the temporary file is removed if `write` fails, and the failure
    is a WriteError naming `path` and the cause."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        explained = isinstance(err, Exception) and not isinstance(err, (LocatedError, ConfigError))
        message = write_failure(path, err) if explained else None     # the free space as the write found it
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if explained:
            raise WriteError(message) from err
        raise


def write_failure(path: Path, err: BaseException) -> str:
    """Why writing `path` failed, in one line: the errno found in the exception's chain (a writer may raise its own
    error while handling the OSError), "disk full" when the disk has less than LOW_SPACE left, and the free space."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    os_error = next((e for e in chain if isinstance(e, OSError) and e.errno), None)
    free, mount = free_space(path.parent)
    space = f"{human_bytes(free)} free on {mount}" if free is not None else f"free space on {mount} unknown"
    if os_error is not None and os_error.errno in NO_SPACE:
        return f"{path}: not written: {NO_SPACE[os_error.errno]} ({errno.errorcode[os_error.errno]}; {space})"
    if os_error is None and free is not None and free < LOW_SPACE:
        return f"{path}: not written: disk full ({space}; {reason(chain[0])})"
    return f"{path}: not written: {reason(os_error if os_error is not None else chain[0])} ({space})"


def free_space(folder: Path) -> tuple[int | None, Path]:
    """(bytes free to this user, the mount point) of the file system holding `folder` (or its nearest existing
    parent)."""
    folder = Path(folder).resolve()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    mount = folder
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        return shutil.disk_usage(folder).free, mount
    except OSError:
        return None, mount


def human_bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


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
