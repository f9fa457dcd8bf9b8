"""`run_sweep.py migrate SWEEP`: re-sign the runs of a sweep's store under the current signature scheme.

After an upgrade that changed how signatures are computed (`configure.SIGNATURE_VERSION`) or deliberately
changed a default, finished runs would read "new" and be retrained. The migration recomputes each run's
signature from its logged params (the flattened resolved config; keys added to the schema since then take
their defaults, which keep the old behaviour by construction), sets the new `signature` tag and keeps the
old ones in `signature_previous`, so a checkpoint written under an old signature is still accepted when the
run is resumed (harness/train.py), and updates the manifest's records.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunTag
from omegaconf.errors import OmegaConfBaseException

from toolkit.errors import ConfigError

from ..configure import SIGNATURE_VERSION, config_from_params, config_signature
from ..protocol import protocol_of_run
from .reader import all_runs
from .sweep import Sweep


@dataclass
class Resigned:
    run_id: str
    name: str
    old: str
    new: str
    version: int                      # the signature version it was signed under


def resign_runs(client, experiment_id: str) -> list[Resigned]:
    """The training runs of the experiment whose recomputed signature (or signature version) differs from their
    tags."""
    changes = []
    for run in all_runs(client, [experiment_id]):
        old = run.data.tags.get("signature")
        if not old:
            continue
        try:
            new = config_signature(config_from_params(run.data.params))
        except (OmegaConfBaseException, ValueError) as err:
            print(f"  skipped {run.info.run_name}: its params do not make a config ({err})")
            continue
        version = int(run.data.tags.get("signature_version", "1"))
        if new != old or version != SIGNATURE_VERSION:
            changes.append(Resigned(run.info.run_id, run.info.run_name, old, new, version))
    return changes


def migrate_store(sweep: Sweep, dry_run: bool = False) -> int:
    """Re-sign the runs of the sweep's store whose signature changed, and the manifest's records of them; a run of
    this sweep whose folder name carried the old signature moves to the folder the plan now names, so a run that
    had not finished resumes from its checkpoint. Runs logged before evaluation protocols get the `eval_protocol`
    tag of their own evaluation (version 0: harness/protocol.py)."""
    from .protocols import live_jobs
    manifest = sweep.manifest or {}
    live = live_jobs(sweep.spec, {**{f"run/{k}": v for k, v in manifest.get("runs", {}).items()},
                                  **manifest.get("evaluations", {})})
    if live and not dry_run:
        raise ConfigError("migrate", reason=f"{len(set(live.values()))} jobs of the sweep are queued or running; "
                          "wait for them (or cancel them) before migrating")
    client = sweep.client
    experiment = client.get_experiment_by_name(sweep.spec.experiment_name)
    changes = resign_runs(client, experiment.experiment_id)
    for change in changes:
        print(f"  {change.name}: {change.old} -> {change.new}" + (f" (signature version {change.version})"
                                                                   if change.old == change.new else ""))
    shared = len(changes) - len({c.new for c in changes})
    if shared:
        print(f"  {shared} runs now share their signature with another: they differ only in what does not change "
              f"the trained weights (evaluation settings, switches without effect); the newest of each is used")
    if dry_run or not changes:
        print(f"{len(changes)} runs {'would be' if dry_run else 'were'} re-signed (signature version "
              f"{SIGNATURE_VERSION})")
        return 0
    for change in changes:
        run = client.get_run(change.run_id)
        tags = run.data.tags
        previous = [s for s in tags.get("signature_previous", "").split(",") if s]
        previous += [change.old] if change.old != change.new and change.old not in previous else []
        batch = [RunTag("signature", change.new), RunTag("signature_version", str(SIGNATURE_VERSION)),
                 RunTag("signature_previous", ",".join(previous))]
        if "eval_protocol" not in tags and run.data.params.get("eval.metric", "none") != "none":
            protocol = protocol_of_run(run.data.params, tags)          # version 0: before protocols
            batch += [RunTag("eval_protocol", protocol.signature), RunTag("eval_protocol_name", protocol.name),
                      RunTag("eval_protocol_version", str(protocol.version))]
        client.log_batch(change.run_id, tags=batch)
    renamed = {c.old: c.new for c in changes}
    for record in sweep.manifest["runs"].values():
        record["signature"] = renamed.get(record["signature"], record["signature"])
    moved = _move_run_folders(sweep, client, changes)
    sweep.save_manifest()
    sweep.write_plan_cache()                      # the plan under the current scheme (status, tables read it)
    print(f"{len(changes)} runs re-signed (signature version {SIGNATURE_VERSION}); old signatures kept in the "
          f"tag signature_previous" + (f"; {moved} run folders renamed as the plan now names them" if moved else ""))
    return 0


def _move_run_folders(sweep: Sweep, client, changes: list[Resigned]) -> int:
    """Rename this sweep's run folders named after an old signature to the plan's names (the manifest's records and
    the runs' `checkpoint` tags follow), so the runs are found where the plan looks: a run that had not finished
    resumes from its checkpoint instead of starting over."""
    names = {run.signature: run.run_name for run in sweep.plan_fresh() if run.same_as is None}
    records = sweep.manifest["runs"]
    moved = 0
    for change in changes:
        new_name = names.get(change.new)
        tags = client.get_run(change.run_id).data.tags
        checkpoint = tags.get("checkpoint")
        if new_name is None or not checkpoint:
            continue
        folder = Path(checkpoint).parent.parent
        target = sweep.folder / new_name
        if folder.parent != sweep.folder or folder == target or not folder.is_dir() or target.exists():
            continue
        folder.rename(target)
        client.set_tag(change.run_id, "checkpoint", str(target / Path(checkpoint).relative_to(folder)))
        if folder.name in records:
            records[new_name] = {**records.pop(folder.name), "run_name": new_name}
        moved += 1
    return moved
