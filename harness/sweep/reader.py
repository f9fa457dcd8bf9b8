"""A store's runs, read again and again (`status --watch`, `--wait`, the live view) without reading them all each time.

A `StoreReader` reads every run that matches its filter once; each later refresh asks the store only for the runs
that may have changed since the previous one:

- the runs RUNNING now (their latest metrics, step and heartbeat move: what the live view shows);
- the runs started or ended since the previous read (`attributes.start_time` / `end_time`, taken a margin back:
  both are stamped by the clock of the machine that logged them, a cluster node's);
- the runs that were RUNNING at the previous read and are neither (stopped without an end time): by id.

A thousand finished runs then cost nothing per poll; one reader per (store, filter) is kept by the `Sweep` of the
command that polls (`Readers`). Not seen until the next command: a run deleted or re-tagged (`run_sweep.py migrate`)
after it was read.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

CLOCK_MARGIN_MS = 5 * 60 * 1000         # how far back "since the previous read" looks: clock skew between machines
BY_ID = 100                             # run ids per `run_id IN (...)` query


def all_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> Iterator[object]:
    """Every run of the experiments that matches the filter, page after page (MLflow caps a page at 50,000)."""
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string=filter_string, max_results=50000, page_token=token)
        yield from page
        token = page.token
        if not token:
            return


def _and(*conditions: str) -> str:
    return " AND ".join(c for c in conditions if c)


class StoreReader:
    """The runs of `experiment_ids` (None: every experiment of the store, new ones included) that match
    `filter_string`, by run id, kept up to date by `refresh()`."""

    def __init__(self, client: MlflowClient, filter_string: str = "", experiment_ids: list[str] | None = None):
        self.client, self.filter, self.experiment_ids = client, filter_string, experiment_ids
        self.runs: dict[str, object] = {}
        self.read: set[str] = set()           # experiments read in full once
        self.since: int | None = None         # ms: changes from here on are read again
        self.fetched = 0                      # runs read from the store so far (what a poll costs)

    def _search(self, experiment_ids: list[str], condition: str = "") -> list:
        found = list(all_runs(self.client, experiment_ids, _and(self.filter, condition)))
        self.fetched += len(found)
        return found

    def refresh(self) -> list:
        started = int(time.time() * 1000)
        ids = self.experiment_ids if self.experiment_ids is not None else \
            [e.experiment_id for e in self.client.search_experiments()]
        new = [i for i in ids if i not in self.read]
        known = [i for i in ids if i in self.read]
        if known:
            self._changed(known)
        if new:
            self.runs.update({run.info.run_id: run for run in self._search(new)})
            self.read.update(new)
        self.since = started - CLOCK_MARGIN_MS
        return list(self.runs.values())

    def _changed(self, experiment_ids: list[str]) -> None:
        was_running = {i for i, run in self.runs.items() if run.info.status == "RUNNING"}
        found = {}
        for condition in ("attributes.status = 'RUNNING'", f"attributes.start_time >= {self.since}",
                          f"attributes.end_time >= {self.since}"):
            found.update({run.info.run_id: run for run in self._search(experiment_ids, condition)})
        missing = sorted(was_running - set(found))
        for start in range(0, len(missing), BY_ID):
            chunk = ", ".join(f"'{run_id}'" for run_id in missing[start:start + BY_ID])
            found.update({run.info.run_id: run for run in self._search(experiment_ids,
                                                                         f"attributes.run_id IN ({chunk})")})
        for run_id in set(missing) - set(found):  # deleted since, or no longer matching the filter
            del self.runs[run_id]
        self.runs.update(found)


class Readers:
    """The readers of one command that polls, one per (store, filter, experiments); a command that reads once
    makes a new one each time (everything is read)."""

    def __init__(self):
        self._readers: dict[tuple, StoreReader] = {}
        self._clients: dict[str, MlflowClient] = {}

    def client(self, uri: str) -> MlflowClient:
        """One client per store for the command's lifetime."""
        if uri not in self._clients:
            from ..tracking import mlflow_client  # mlflow: imported when a store is first read
            self._clients[uri] = mlflow_client(uri)
        return self._clients[uri]

    def runs(self, client: MlflowClient, filter_string: str = "", experiment_ids: list[str] | None = None) -> list:
        key = (client.tracking_uri, filter_string, None if experiment_ids is None else tuple(experiment_ids))
        if key not in self._readers:
            self._readers[key] = StoreReader(client, filter_string, experiment_ids)
        return self._readers[key].refresh()

    @property
    def fetched(self) -> int:
        return sum(reader.fetched for reader in self._readers.values())
