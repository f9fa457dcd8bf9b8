"""How a sweep's runs are doing, for `status` and `--wait`: one line per run — row label, seed, state,
step/total, last loss, last metric, ETA, job id — as a rich table refreshed in place on a terminal, and as
plain lines otherwise (a pipe, a log file, CI): all runs once, then a line for each run whose state or step
changed, so a log reads as a history.

The ETA is the steps left over the run's latest throughput (`images_per_s` / `train.global_batch`); the
total comes from the trainer's `total_steps` tag. Everything is read from the states of one MLflow query
(`state.sweep_states`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from rich.console import Console
from rich.live import Live
from rich.table import Table

from toolkit.errors import reason_line

from ..metric_registry import preferred
from .state import RunState

STATES = ("done", "running", "pending", "failed", "new")
STYLE = {"done": "green", "running": "cyan", "pending": "yellow", "failed": "bold red", "new": "dim"}
SHOWN_FIRST = ("failed", "running", "pending", "new")   # which runs a screen keeps when not all fit
CPU_SHARE = 0.05        # the most of a core the live view takes between polls: a login node is shared


def age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


@dataclass
class Line:
    """What one run shows."""
    run: str                          # row label, with the grid point
    seed: int
    state: str                        # as `status` shows it: "done (from sweep X)" for a reused run
    step: int | None
    total: int | None
    loss: float | None
    metric: tuple[str, float] | None
    eta_s: float | None
    job: str
    note: str                         # a failure's reason; the heartbeat's age of a live run; a damaged checkpoint
                                      # set aside (resumed from the previous one, or restarted at step 0)

    @classmethod
    def of(cls, s: RunState) -> "Line":
        metrics = s.metrics or {}
        run = s.mlflow_run
        tags = run.data.tags if run is not None else {}
        params = run.data.params if run is not None else {}
        total = int(tags["total_steps"]) if tags.get("total_steps", "").isdigit() else None
        eta = None
        speed, batch = metrics.get("images_per_s"), params.get("train.global_batch", "")
        if s.state == "running" and total and s.step is not None and speed and batch.isdigit():
            eta = (total - s.step) * int(batch) / speed
        grid = " " + json.dumps(s.run.grid) if s.run.grid else ""
        notes = []
        if s.state == "failed":
            notes.append(reason_line(s.reason or ""))
        elif s.state == "running" and s.heartbeat_age_s is not None:
            notes.append(f"heartbeat {age(s.heartbeat_age_s)} ago")
        if tags.get("checkpoint_fallback") and s.state != "failed":     # a damaged checkpoint was set aside
            notes.append(reason_line(tags["checkpoint_fallback"]))
        note = "; ".join(note for note in notes if note)
        shown = preferred(key for key in metrics if key != "loss")      # the loss has a column of its own
        return cls(s.run.label + grid, s.run.seed, s.shown, s.step, total, s.loss,
                   (shown, metrics[shown]) if shown else None, eta, s.job_id or "-", note)

    def cells(self) -> list[str]:
        step = "-" if self.step is None else f"{self.step}" + (f"/{self.total}" if self.total else "")
        return [self.run, str(self.seed), self.state, step, "-" if self.loss is None else f"{self.loss:.4f}",
                f"{self.metric[0]} {self.metric[1]:.4g}" if self.metric else "-",
                "-" if self.eta_s is None else age(self.eta_s), self.job, self.note]


HEADER = ["run", "seed", "state", "step", "loss", "metric", "ETA", "job", ""]


def counts(states: list[RunState], zero: bool = True) -> str:
    tally = {k: sum(s.state == k for s in states) for k in STATES}
    return " ".join(f"{k}={n}" for k, n in tally.items() if n or zero)


def table(states: list[RunState], rows: int | None = None) -> Table:
    """The rich table of a sweep's runs, with the counts as its caption. With more runs than `rows` (the live
    view: a screen), each row's finished runs fold into one line that counts them; if the rest still do not fit,
    the failed, then running, pending and new runs fill the screen (in the plan's order) and one line counts the
    others: drawing runs that a terminal crops away costs more than reading what changed (BENCHMARKS.md, the
    live case). `status` lists every run."""
    view = Table(*HEADER, caption=f"{time.strftime('%H:%M:%S')}  {counts(states)}", caption_justify="left")
    listed, folded, hidden = list(states), {}, []
    if rows is not None and len(states) > rows:
        listed = [s for s in states if s.state != "done"]
        for s in states:
            if s.state == "done":
                folded[s.run.label] = folded.get(s.run.label, 0) + 1
        room = max(1, rows - len(folded))
        if len(listed) > room:
            kept = {id(s) for s in sorted(listed, key=lambda s: SHOWN_FIRST.index(s.state))[:room - 1]}
            hidden = [s for s in listed if id(s) not in kept]
            listed = [s for s in listed if id(s) in kept]
    for s in listed:
        cells = Line.of(s).cells()
        cells[2] = f"[{STYLE.get(s.state, '')}]{cells[2]}[/]"
        view.add_row(*cells)
    for label, done in folded.items():
        view.add_row(label, "", f"[{STYLE['done']}]{done} done[/]", *[""] * (len(HEADER) - 3))
    if hidden:
        view.add_row(f"... {len(hidden)} more", "", f"[dim]{counts(hidden, zero=False)}[/]",
                     *[""] * (len(HEADER) - 4), "run_sweep.py status lists every run")
    return view


def plain(lines: list[Line], header: bool = False) -> list[str]:
    """Lines of aligned columns (under a header line), without colours or control characters."""
    rows = ([HEADER] if header else []) + [line.cells() for line in lines]
    widths = [max(len(row[i]) for row in rows) for i in range(len(HEADER) - 1)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths)).rstrip()
            + (f"  {row[-1]}" if row[-1] else "") for row in rows]


def show(states: list[RunState], console: Console) -> None:
    """`status`: the table on a terminal, plain lines and the counts otherwise."""
    if console.is_terminal:
        console.print(table(states))
    else:
        for text in plain([Line.of(s) for s in states], header=True):
            console.print(text, markup=False, highlight=False, soft_wrap=True)
        console.print(counts(states), markup=False, highlight=False)


def ended(states: list[RunState]) -> bool:
    return not any(s.state in ("running", "pending") for s in states)


def pause(every_s: float, poll_cpu_s: float) -> float:
    """Seconds until the next poll: `every_s`, or longer when the last poll cost so much CPU (a large sweep on a
    remote store) that polling every `every_s` would take more than CPU_SHARE of a core."""
    return max(every_s, poll_cpu_s * (1 / CPU_SHARE - 1))


def follow(poll: Callable[[], list[RunState]], console: Console, every_s: float = 10.0,
           sleep: Callable[[float], None] = time.sleep) -> list[RunState]:
    """Poll until no run is running or pending; returns the last states. On a terminal the table is redrawn in
    place (what fits a screen: `table`); otherwise every run is printed once, then each run whose state or step
    changed, then the counts. Polls come every `every_s` seconds, or further apart when one costs more than
    CPU_SHARE of a core over that time (`pause`)."""
    cpu = time.process_time()
    states = poll()
    if console.is_terminal:
        rows = max(10, console.height - 6)          # what fits under the header and the caption
        with Live(table(states, rows), console=console, auto_refresh=False) as live:
            while not ended(states):
                sleep(pause(every_s, time.process_time() - cpu))
                cpu = time.process_time()
                states = poll()
                live.update(table(states, rows), refresh=True)
        return states
    shown: dict[tuple, tuple] = {}
    while True:
        lines = [Line.of(s) for s in states]
        changed = [line for line in lines if shown.get((line.run, line.seed)) != (line.state, line.step)]
        if changed:
            stamp = time.strftime("%H:%M:%S")
            for text in plain(changed, header=not shown):
                console.print(f"{stamp}  {text}", markup=False, highlight=False, soft_wrap=True)
            console.print(f"{stamp}  {counts(states)}", markup=False, highlight=False)
            shown.update({(line.run, line.seed): (line.state, line.step) for line in changed})
        if ended(states):
            return states
        sleep(pause(every_s, time.process_time() - cpu))
        cpu = time.process_time()
        states = poll()
