"""The live view of `status` and `--wait` (harness/sweep/progress.py): one line per run with its state,
step/total, last loss, last metric, ETA and job id — a rich table redrawn in place on a terminal, plain lines
without control characters otherwise (a pipe, a log). Terminals are rich's own (`Console(force_terminal=...)`)."""
import io
import time
from types import SimpleNamespace

from rich.console import Console

from harness.sweep import progress
from harness.sweep.plan import PlannedRun
from harness.sweep.state import RunState


def run_state(label: str, seed: int, state: str, step=None, loss=None, fd=None, job="4242", reason=None, more=None):
    """A run's state as `sweep_states` builds it from MLflow: tags, params and latest metrics (`more`: others)."""
    planned = PlannedRun(index=0, label=label, row=0, seed=seed, grid={}, config_overrides=[],
                         run_name=f"{label}-s{seed}", signature="0" * 16, executor=None, cfg=None)
    metrics = {"loss": loss, "images_per_s": 32.0, **({"fd": fd} if fd is not None else {}), **(more or {})}
    mlflow_run = SimpleNamespace(data=SimpleNamespace(tags={"total_steps": "400"},
                                                      params={"train.global_batch": "64"}, metrics=metrics))
    return RunState(planned, state, "id", step, loss, metrics if step is not None else {}, 3.0, job, reason,
                    mlflow_run if step is not None else None)


RUNNING = [run_state("patch-wise", 0, "running", step=150, loss=0.51234, fd=12.5),
           run_state("pixel-wise", 0, "pending")]
ENDED = [run_state("patch-wise", 0, "done", step=400, loss=0.4, fd=9.25),
         run_state("pixel-wise", 0, "failed", step=20, loss=float("nan"), reason="NonFiniteLoss: nan at step 20")]


def console(terminal: bool) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=terminal, width=140, color_system="standard" if terminal else None), out


def test_a_line_has_state_step_of_total_loss_metric_eta_and_job():
    line = progress.Line.of(RUNNING[0])
    # 250 steps left at 32 images/s with 64 images a step: 500 s
    assert line.cells()[:8] == ["patch-wise", "0", "running", "150/400", "0.5123", "fd 12.5", "8m", "4242"]
    assert progress.Line.of(ENDED[1]).cells()[-1] == "NonFiniteLoss: nan at step 20"


def test_the_metric_shown_is_the_logged_one_of_highest_display_priority(registered_metric):
    """fid before fd (harness/metric_registry.py); a metric added by its registry entry alone (tests/conftest.py)
    takes its place by its priority; the loss, which has its own column, is never shown as the metric."""
    def shown(**metrics):
        return progress.Line.of(run_state("a", 0, "running", step=1, loss=0.5, more=metrics)).cells()[5]

    assert shown(fd=12.5, fid=30.25) == "fid 30.25"
    assert shown(fd=12.5, sharpness=0.75) == "sharpness 0.75"
    assert shown(images_per_s=32.0) == "-"


def test_status_is_a_table_on_a_terminal_and_plain_lines_otherwise():
    terminal, out = console(True)
    progress.show(RUNNING, terminal)
    drawn = out.getvalue()
    assert "\x1b[" in drawn and "┃" in drawn and "150/400" in drawn and "done=0 running=1 pending=1" in drawn
    piped, out = console(False)
    progress.show(RUNNING, piped)
    lines = out.getvalue().splitlines()
    assert "\x1b" not in out.getvalue() and len(lines) == 4       # header, one line per run, the counts
    assert lines[0].split() == ["run", "seed", "state", "step", "loss", "metric", "ETA", "job"]
    assert lines[1].split()[:6] == ["patch-wise", "0", "running", "150/400", "0.5123", "fd"]
    assert lines[-1] == "done=0 running=1 pending=1 failed=0 new=0"


def test_wait_redraws_in_place_on_a_terminal_until_every_run_has_ended():
    polls = iter([RUNNING, RUNNING, ENDED])
    terminal, out = console(True)
    last = progress.follow(lambda: next(polls), terminal, every_s=0, sleep=lambda s: None)
    assert last is ENDED
    drawn = out.getvalue()
    assert "\x1b[2K" in drawn and "\x1b[1A" in drawn             # lines erased and the cursor moved up: in place
    assert "NonFiniteLoss" in drawn and "done=1 running=0 pending=0 failed=1" in drawn


def test_the_live_view_folds_each_rows_finished_runs_beyond_a_screen():
    """More runs than fit: each row's finished runs are one line counting them; the others are listed."""
    states = [run_state(label, seed, "done", step=400, loss=0.4, fd=9.0) for label in ("patch-wise", "pixel-wise")
              for seed in range(20)] + RUNNING
    terminal, out = console(True)
    terminal.print(progress.table(states, rows=10))
    drawn = out.getvalue()
    assert "20 done" in drawn and drawn.count("done") == 2 + 1                   # two folded rows, the caption
    assert "running" in drawn and "150/400" in drawn and "pending" in drawn      # the live runs, in full
    assert "done=40 running=1 pending=1" in drawn and "more" not in drawn
    terminal, out = console(True)
    terminal.print(progress.table(states))                                        # `status`: every run
    assert out.getvalue().count("400/400") == 40


def test_the_live_view_keeps_failed_runs_on_screen_and_counts_what_does_not_fit():
    """Still more live runs than a screen holds: the failed ones first, then running, pending, new, in the plan's
    order; one line counts the rest (the caption still counts every run)."""
    states = ([run_state("patch-wise", seed, "new") for seed in range(6)]
              + [run_state("pixel-wise", seed, "running", step=150, loss=0.5) for seed in range(6)]
              + [run_state("pixel-wise", 9, "failed", step=20, loss=0.5, reason="NonFiniteLoss: nan")])
    terminal, out = console(True)
    terminal.print(progress.table(states, rows=5))
    drawn = out.getvalue()
    assert "NonFiniteLoss" in drawn and drawn.count("150/400") == 3               # failed, then 3 running
    assert "... 9 more" in drawn and "running=3 new=6" in drawn                   # what was left out, counted
    assert "done=0 running=6 pending=0 failed=1 new=6" in drawn
    assert drawn.index("150/400") < drawn.index("NonFiniteLoss")                 # shown in the plan's order


def test_the_live_view_polls_further_apart_when_a_poll_costs_more_than_its_share_of_a_core():
    """A poll of a large sweep on a remote store can cost a second of CPU: the wait before the next one grows so
    that the watcher takes at most CPU_SHARE of a core (a login node is shared)."""
    assert progress.pause(10.0, 0.1) == 10.0
    assert progress.pause(10.0, 1.0) == 1.0 / progress.CPU_SHARE - 1.0
    polls, waits = iter([RUNNING, RUNNING, ENDED]), []

    def costly_poll():
        began = time.process_time()
        while time.process_time() - began < 0.05:                                 # 50 ms of CPU
            pass
        return next(polls)

    piped, _ = console(False)
    progress.follow(costly_poll, piped, every_s=0.1, sleep=waits.append)
    assert len(waits) == 2 and all(wait >= 0.05 * (1 / progress.CPU_SHARE - 1) for wait in waits)


def test_wait_prints_each_change_once_when_not_a_terminal():
    polls = iter([RUNNING, RUNNING, ENDED])
    piped, out = console(False)
    progress.follow(lambda: next(polls), piped, every_s=0, sleep=lambda s: None)
    lines = [line.split("  ", 1)[1] for line in out.getvalue().splitlines()]       # without the time stamps
    assert "\x1b" not in out.getvalue()
    assert [line.split()[:3] for line in lines if not line.startswith(("run", "done="))] == [
        ["patch-wise", "0", "running"], ["pixel-wise", "0", "pending"],           # the first poll: every run
        ["patch-wise", "0", "done"], ["pixel-wise", "0", "failed"]]               # the second changed nothing
    assert lines[-1] == "done=1 running=0 pending=0 failed=1 new=0"
