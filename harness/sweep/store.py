"""The sweep's MLflow store: where it is, that it is still the one the sweep was submitted to, and runs
finished in other stores that this sweep may reuse.

The store is `<sweep folder>/mlflow.db` (sqlite) unless `tracking.uri` names another (a PostgreSQL database, or a
tracking server's URL). Its experiment
carries a random `ditlab.store_id` tag, written at the first submission and recorded in the manifest;
every later command checks both before reading, so a deleted or replaced store (or manifest) is reported
instead of being silently recreated empty — opening a missing sqlite file with MLflow would create it. A
submission without a manifest (or with another sweep's) into a store that already holds this sweep's runs is
refused too, saying what the store holds: a new manifest would lose the job ids of those runs.

MLflow is imported when a store is first opened: a verb that reads no store (`logs`, an error about the file) never
imports it.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.errors import ConfigError

from .reader import Readers, all_runs
from .spec import SweepSpec

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

STORE_ID_TAG = "ditlab.store_id"


class NotSubmitted(ConfigError):
    """A command that reads a sweep's results on a sweep that was never submitted (from this folder)."""


class StoreProblem(ConfigError):
    """The store or manifest a sweep was submitted with is gone or was replaced."""


def store_uri(spec: SweepSpec) -> str:
    """Where runs are read from: the configured URI, else the sweep's own sqlite file."""
    return spec.tracking.uri or f"sqlite:///{spec.folder / 'mlflow.db'}"


def served(uri: str) -> bool:
    """A tracking server's URL (its clients log to it as it is), not a database a server of the sweep's serves."""
    return uri.startswith(("http://", "https://"))


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def prepare_store(spec: SweepSpec, manifest: dict) -> str:
    """Create (first submission) or check (later ones) the store and the experiment, before any job fans out;
    records the store's identity in the manifest; returns the experiment id."""
    from ..tracking import ensure_experiment, mlflow_client
    check_manifest_of(spec, manifest)
    if manifest["runs"] or manifest.get("store"):
        client = open_store(spec, manifest)       # refuses a store that is gone or was replaced
        experiment_id = client.get_experiment_by_name(spec.experiment_name).experiment_id
    else:
        check_no_earlier_runs(spec)
        spec.folder.mkdir(parents=True, exist_ok=True)
        client = mlflow_client(store_uri(spec))
        experiment_id = ensure_experiment(client, spec.experiment_name, spec.folder / "mlartifacts")
    store_id = client.get_experiment(experiment_id).tags.get(STORE_ID_TAG)
    if store_id is None:                          # a new store, or one written before store ids
        store_id = uuid.uuid4().hex
        client.set_experiment_tag(experiment_id, STORE_ID_TAG, store_id)
    manifest["store"] = {"uri": store_uri(spec), "store_id": store_id}
    return experiment_id


def check_no_earlier_runs(spec: SweepSpec) -> None:
    """A first submission (no submission in the manifest) into a store that already holds runs of this sweep means
    its manifest was deleted or replaced: refused, with what the store holds. Creates no file."""
    from ..tracking import mlflow_client
    uri = store_uri(spec)
    if sqlite_path(uri) is not None and not sqlite_path(uri).exists():
        return
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    if experiment is None:
        return
    runs = [run for run in all_runs(client, [experiment.experiment_id], f"tags.sweep = '{spec.name}'")
            if run.data.tags.get("sweep_role") != "parent"]
    if runs:
        counts = {}
        for run in runs:
            counts[run.info.status.lower()] = counts.get(run.info.status.lower(), 0) + 1
        held = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        raise StoreProblem(None, reason=f"no submission recorded in {spec.folder / 'manifest.json'}, but the store "
                                        f"{uri} (store id {experiment.tags.get(STORE_ID_TAG, 'none')}) holds "
                                        f"{len(runs)} runs of sweep {spec.name} ({held}): the manifest was deleted "
                                        f"or replaced and their job ids are lost; restore it (`cancel` finds live "
                                        f"jobs without it), or move {spec.folder} away to start the sweep over",
                           source=str(spec.path))


def check_manifest_of(spec: SweepSpec, manifest: dict) -> None:
    """Refuse another sweep's manifest in this sweep's folder (copied or replaced), before its store is read."""
    if manifest.get("sweep") != spec.name:
        raise StoreProblem(None, reason=f"{spec.folder / 'manifest.json'} is the manifest of sweep "
                                        f"{manifest.get('sweep')!r}, not of {spec.name}: it was replaced; restore "
                                        f"this sweep's manifest", source=str(spec.path))


def _exists(uri: str) -> bool:
    path = sqlite_path(uri)
    return path is not None and path.exists()


def check_submitted(spec: SweepSpec, manifest: dict | None) -> None:
    """Refuse, without opening the store, a sweep never submitted from its folder, another sweep's manifest, a
    sqlite store that is gone, or a `tracking.uri` changed since the submission."""
    uri = store_uri(spec)
    if manifest is None:
        raise NotSubmitted(None, reason=f"nothing submitted for {spec.name} under {spec.folder} (no manifest.json"
                                        f"{'; the store is there: the manifest was removed?' if _exists(uri) else ''})",
                           source=str(spec.path))
    check_manifest_of(spec, manifest)
    submitted = len(manifest["runs"])
    recorded = manifest.get("store") or {}
    path = sqlite_path(uri)
    if path is not None and not path.exists():
        raise StoreProblem(None, reason=f"the store {path} of sweep {spec.name} is gone (the manifest records "
                                        f"{submitted} runs submitted); restore the file, or move {spec.folder} away "
                                        f"to start the sweep over", source=str(spec.path))
    if recorded.get("uri") not in (None, uri):
        raise StoreProblem(None, reason=f"the sweep was submitted to {recorded['uri']} but now points at {uri} "
                                        f"(tracking.uri changed)", source=str(spec.path))


def open_store(spec: SweepSpec, manifest: dict | None) -> MlflowClient:
    """A client of the sweep's store, after checking it is the store the sweep was submitted to. Creates no file."""
    from ..tracking import mlflow_client
    check_submitted(spec, manifest)
    uri, recorded = store_uri(spec), manifest.get("store") or {}
    client = mlflow_client(uri)
    experiment = client.get_experiment_by_name(spec.experiment_name)
    found = experiment.tags.get(STORE_ID_TAG) if experiment is not None else None
    if recorded.get("store_id") and found != recorded["store_id"]:
        raise StoreProblem(None, reason=f"the store {uri} is not the one sweep {spec.name} was submitted to "
                                        f"(it was replaced or recreated: experiment {spec.experiment_name!r} "
                                        f"{'is missing' if experiment is None else 'has another store id'}); "
                                        f"restore the original store", source=str(spec.path))
    return client


def reuse_stores(spec: SweepSpec) -> list[str]:
    """Stores whose finished runs this sweep may reuse: its own, and those of `reuse_from` (sweep files or
    tracking URIs) that exist."""
    from .spec import load_sweep
    stores = [store_uri(spec)]
    for entry in spec.reuse_from:
        if "://" in entry:
            stores.append(entry)
            continue
        other = load_sweep(Path(entry) if os.path.isabs(entry) else spec.path.parent / entry)
        stores.append(store_uri(other))
    return [s for s in dict.fromkeys(stores) if sqlite_path(s) is None or sqlite_path(s).exists()]


@dataclass
class Finished:
    run: object             # the MLflow run
    sweep: str              # the sweep that trained it
    store: str              # the store that holds it


def finished_runs(stores: list[str], signatures: set[str], readers: Readers | None = None) -> dict[str, Finished]:
    """The newest FINISHED run of each signature in any experiment of the given stores (`readers`: what an earlier
    call of the same command read, so only what changed since is read again)."""
    readers = readers or Readers()
    found: dict[str, Finished] = {}
    for uri in stores:
        for run in readers.runs(readers.client(uri), "attributes.status = 'FINISHED'"):
            signature = run.data.tags.get("signature")
            if signature in signatures and (signature not in found
                                            or run.info.start_time > found[signature].run.info.start_time):
                found[signature] = Finished(run, run.data.tags.get("sweep", "?"), uri)
    return found
