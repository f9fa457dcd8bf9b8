"""Polling at scale (harness/sweep/reader.py): `status --watch`, `--wait` and the live view read, after the first
poll, only the runs that changed since the previous one, and still see exactly what a full read sees."""
import time

import pytest
from conftest import STORES
from mlflow.tracking import MlflowClient

from harness.sweep.reader import StoreReader, all_runs


def snapshot(runs) -> dict:
    return {run.info.run_id: (run.info.status, dict(run.data.metrics), dict(run.data.tags)) for run in runs}


@pytest.fixture
def store(tracking, tmp_path):
    return MlflowClient(tracking.get("uri") or f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.mark.parametrize("tracking", STORES, indirect=True)
def test_a_poll_reads_only_what_changed_and_sees_what_a_full_read_sees(store):
    experiment = store.create_experiment("polled")
    other = store.create_experiment("other")
    runs = {}
    hour_ago = int(time.time() * 1000) - 3600 * 1000
    for i in range(40):                              # an hour ago: 30 finished, 5 running, 5 failed
        run = store.create_run(experiment, start_time=hour_ago, tags={"sweep": "s", "i": str(i)}).info.run_id
        store.log_metric(run, "loss", 1.0 / (i + 1), step=1)
        if i < 30:
            store.set_terminated(run, "FINISHED", end_time=hour_ago)
        elif i >= 35:
            store.set_terminated(run, "FAILED", end_time=hour_ago)
        runs[i] = run
    store.create_run(other, tags={"sweep": "s"})       # another experiment: not this reader's
    reader = StoreReader(store, "tags.sweep = 's'", [experiment])
    assert len(reader.refresh()) == 40 and reader.fetched == 40

    # between two polls: a running run logs, one finishes, one is killed without an end time, a failed run is
    # resumed and finishes, a new run starts, another sweep's run appears, and nothing else changes
    store.log_metric(runs[30], "loss", 0.01, step=2)
    store.set_terminated(runs[31], "FINISHED")
    store.update_run(runs[32], status="KILLED")
    store.update_run(runs[35], status="RUNNING")
    store.log_metric(runs[35], "loss", 0.02, step=2)
    store.set_terminated(runs[35], "FINISHED")
    new = store.create_run(experiment, tags={"sweep": "s"}).info.run_id
    store.create_run(experiment, tags={"sweep": "t"})
    fetched = reader.fetched
    polled = snapshot(reader.refresh())
    assert polled == snapshot(all_runs(store, [experiment], "tags.sweep = 's'"))      # what a full read sees
    assert polled[runs[30]][1]["loss"] == 0.01 and polled[runs[31]][0] == "FINISHED"
    assert polled[runs[32]][0] == "KILLED" and polled[runs[35]][:2] == ("FINISHED", {"loss": 0.02})
    assert new in polled and len(polled) == 41
    # read again: the runs running now (4) or at the last poll (5), and those started (1) or ended (2) since: the
    # 30 that were finished an hour ago are not read again
    assert reader.fetched - fetched <= 4 + 1 + 2 + 1

    time.sleep(0.01)
    reader.since = int(time.time() * 1000)           # as if the margin had passed: only the running runs are read
    fetched = reader.fetched
    assert snapshot(reader.refresh()) == snapshot(all_runs(store, [experiment], "tags.sweep = 's'"))
    assert reader.fetched - fetched == sum(status == "RUNNING" for status, _, _ in polled.values()) == 4


def test_a_reader_of_every_experiment_reads_new_experiments_in_full(tmp_path):
    store = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    first = store.create_experiment("a")
    store.set_terminated(store.create_run(first).info.run_id, "FINISHED")
    reader = StoreReader(store, "attributes.status = 'FINISHED'")
    assert len(reader.refresh()) == 1
    second = store.create_experiment("b")
    store.set_terminated(store.create_run(second).info.run_id, "FINISHED")
    store.create_run(second)                          # running: not FINISHED, not read
    assert {run.info.experiment_id for run in reader.refresh()} == {first, second}
    assert len(reader.runs) == 2
