"""Processes and process groups the sweep layer starts: tracking servers, the UI, local jobs.

A pid alone never says a process is ours: pids are recycled, and another sweep's job is a "submitit" process
too. A process is ours only if its command line names our own folder (a local job's controller and task both
name `<sweep folder>/submitit/local/...`) and, where its start was recorded, it is the process that started
then: its start identity (the boot and the start time in clock ticks, /proc/<pid>/stat) is the recorded one.
Every signal the sweep layer sends goes through these checks (`OwnedProcess`).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path


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


def start_identity(pid: int) -> str | None:
    """`<boot id>/<start time in clock ticks>` of a process: the same pid in another boot, or started at another
    time, is another process. None when there is no such process (or no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            started = stat.read().rsplit(")", 1)[-1].split()[19]      # field 22, starttime
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}/{started}"
    except (OSError, IndexError):
        return None


EXEC_RETRIES = 100              # reads of an empty command line (a process inside execve), 10 ms apart


def command_names(pid: int, folder: str | Path) -> bool:
    """The process's command line has an argument that is `folder` or a path inside it. A process caught inside
    `execve` (just started: its command line still empty) is read again, briefly."""
    folder = str(folder).rstrip("/")
    for _ in range(EXEC_RETRIES):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                arguments = cmdline.read()
        except OSError:
            return False
        if arguments:
            break
        time.sleep(0.01)
    arguments = arguments.decode(errors="replace").split("\0")
    return any(arg == folder or arg.startswith(folder + "/") for arg in arguments)


@dataclass(frozen=True)
class OwnedProcess:
    """A process we started, as recorded: its pid, the folder its command line names (None: a process whose
    arguments name no folder of ours, a tracking server), and its start identity (None where none was recorded:
    then the folder alone decides)."""
    pid: int
    folder: str | None
    started: str | None = None

    def alive(self) -> bool:
        """Alive, and ours: a recycled pid (another sweep's job, anything else) is not."""
        return (pid_alive(self.pid) and (self.folder is None or command_names(self.pid, self.folder))
                and (self.started is None or start_identity(self.pid) == self.started))


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


KILL_WAIT_S = 5.0               # how long a SIGKILLed group may take to vanish


def stop_groups(pgids: list[int], grace: float = 10) -> None:
    """Stop process groups (a server and its workers, a job and its tasks) the caller checked are ours: SIGTERM
    (and SIGCONT, so a stopped process acts on it) to all, then SIGKILL to the groups still alive after `grace`
    seconds (and waits up to KILL_WAIT_S for them to be gone)."""
    for pgid in pgids:
        for signum in (signal.SIGTERM, signal.SIGCONT):
            try:
                os.killpg(pgid, signum)
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
    deadline = time.time() + KILL_WAIT_S          # SIGKILL is delivered asynchronously: gone when we return
    while any(group_alive(pgid) for pgid in pgids) and time.time() < deadline:
        time.sleep(0.05)
