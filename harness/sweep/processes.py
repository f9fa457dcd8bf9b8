"""Processes and process groups the sweep layer starts: tracking servers, the UI, local jobs."""
from __future__ import annotations

import os
import signal
import time


def pid_alive(pid: int) -> bool:
    """True for a live process; False for none, or a zombie (ended, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def process_alive(pid: int, command_contains: str) -> bool:
    """A live process whose command line contains `command_contains` (a recycled pid is not our job)."""
    if not pid_alive(pid):
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return command_contains.encode() in cmdline.read()
    except OSError:
        return True


def group_alive(pgid: int) -> bool:
    """True while a live (not zombie) process of the group remains."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                    return True
            except OSError:
                continue
    return False


def stop_groups(pgids: list[int], grace: float = 10) -> None:
    """Stop process groups (a server and its workers, a job and its tasks): SIGTERM to all, then SIGKILL to
    the groups still alive after `grace` seconds."""
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + grace
    while any(group_alive(pgid) for pgid in pgids) and time.time() < deadline:
        time.sleep(0.1)
    for pgid in pgids:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
