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

import yaml
from mlflow.entities import RunTag
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import TrainConfig
from ..configure import SIGNATURE_VERSION, affects_result, config_signature, schema_keys
from .reader import all_runs
from .sweep import Sweep


@dataclass
class Resigned:
    run_id: str
    name: str
    old: str
    new: str


def config_from_params(params: dict[str, str]) -> TrainConfig:
    """The run's config from its MLflow params (values logged as `str(value)`: Python literals). Keys that no
    longer exist are ignored; keys that do not change the result are left at their defaults."""
    known = set(schema_keys())
    tree = OmegaConf.structured(TrainConfig)
    for key, text in params.items():
        if key in known and affects_result(key):
            try:                                  # YAML reads Python's True/False, numbers and lists; OmegaConf
                value = None if text == "None" else yaml.safe_load(text)     # types them by the schema
            except yaml.YAMLError:
                value = text
            OmegaConf.update(tree, key, value, merge=False)
    return OmegaConf.to_object(tree)


def resign_runs(client, experiment_id: str) -> list[Resigned]:
    """The runs of the experiment whose recomputed signature differs from their tag."""
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
        if new != old:
            changes.append(Resigned(run.info.run_id, run.info.run_name, old, new))
    return changes


def migrate_store(sweep: Sweep, dry_run: bool = False) -> int:
    """Re-sign the runs of the sweep's store whose signature changed, and the manifest's records of them."""
    client = sweep.client
    experiment = client.get_experiment_by_name(sweep.spec.experiment_name)
    changes = resign_runs(client, experiment.experiment_id)
    for change in changes:
        print(f"  {change.name}: {change.old} -> {change.new}")
    if dry_run or not changes:
        print(f"{len(changes)} runs {'would be' if dry_run else 'were'} re-signed (signature version "
              f"{SIGNATURE_VERSION})")
        return 0
    for change in changes:
        tags = client.get_run(change.run_id).data.tags
        previous = [s for s in tags.get("signature_previous", "").split(",") if s] + [change.old]
        client.log_batch(change.run_id, tags=[RunTag("signature", change.new),
                                               RunTag("signature_version", str(SIGNATURE_VERSION)),
                                               RunTag("signature_previous", ",".join(previous))])
    renamed = {c.old: c.new for c in changes}
    for record in sweep.manifest["runs"].values():
        record["signature"] = renamed.get(record["signature"], record["signature"])
    sweep.save_manifest()
    print(f"{len(changes)} runs re-signed (signature version {SIGNATURE_VERSION}); old signatures kept in the "
          f"tag signature_previous")
    return 0
