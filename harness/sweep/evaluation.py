"""Evaluations of finished runs under protocols (harness/protocol.py): samples in shards, a score, one MLflow child
run of the training run per protocol. What a sweep's `evaluate:` stages run (harness/sweep/protocols.py) and
`run_sweep.py eval`:

    python run_sweep.py eval SWEEP.yaml [--label L] [--num 50000] [--shards K] [--reference REF] [--set KEY=VALUE]

Samples. The EMA weights of the protocol's decay (`ema.eval_decay`; the checkpoint holds every decay of
`ema.decays`) sample the protocol's N images batch by batch (harness/evaluate.py: batch b's noise from (seed, b),
so a batch is the same whoever samples it), in K shards of whole batches. Each shard is an ADM `.npz` (`arr_0`
uint8 NHWC, `arr_1` labels, the format of ADM's sampling scripts, so its evaluator can read them too) written
atomically under `<sweep>/eval/<run>/<protocol signature>/`; a complete shard is never made again, so a killed
evaluation resumes at its first missing shard. Shards are filled by `ShardJob`s through submitit: one SLURM array
task (one GPU) per shard, a few local processes, or in-process.

Score. `offline` and `fid` score the shards with the run's scorer (the classifier of the held-out split, the
Inception against held-out statistics), `adm` with ADM's suite against `eval.reference` (`MetricsJob`).

MLflow. Each (run, protocol) evaluation is an MLflow run nested under the training run (`mlflow.parentRunId`; for a
run reused from another sweep's store, a run of the evaluating sweep's store with the tag `training_store`, so that
each store keeps one writer), named by the protocol, whose params are the protocol (its config keys) and whose
metrics are the scores (`fd`, `class_acc`, `fid`, `sfid`, ...) at the checkpoint's step; tags:
`sweep_role=evaluation`, `eval_protocol` (its signature), `training_run_id`, `training_signature`, `eval_stage`.
So two protocols of one run never collide (each has its own params), MLflow's UI lists a run's evaluations under
it, and `tags.eval_protocol = '<signature>'` finds one protocol's evaluations of every run. The training run's own
evaluation at its end is its config's protocol evaluated on its final checkpoint (the training run carries the
protocol's signature as its `eval_protocol` tag), so it counts as that evaluation: the same protocol is never
computed twice.

Grey models (one channel: the MNIST demo) write their samples with the grey replicated to three channels, as a
grey reference image is read. A shard or scoring job that fails writes its one-line reason to its run's shard
folder (`jobs.explained`), and the command prints it: never only "see the logs".
"""
from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import yaml
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from toolkit.errors import ConfigError, closest
from toolkit.files import atomic_write, atomic_write_text

from ..metric_registry import count_tag  # noqa: F401  (re-exported: the ADM suite's name suffixes)
from ..protocol import PROTOCOL_KEYS, EvalProtocol
from .executors import Task, executor_class
from .jobs import JOB_FAILURE_FILE, explained, job_failure

if TYPE_CHECKING:
    from .plan import PlannedRun
    from .spec import SweepSpec
    from .sweep import Sweep

SHARD_FORMAT = "shard_{:05d}.npz"
SHARD_SAMPLES = 5000                  # an evaluation job writes its samples in shards of about this many images
EVAL_ROLE = "evaluation"              # the `sweep_role` tag of an evaluation's MLflow run
FAILURE_FILE = "failure.json"         # why an evaluation job failed, beside its shards


@dataclass(frozen=True)
class Shard:
    index: int
    start: int          # first image index (a whole number of sampling batches)
    count: int
    path: str


def plan_shards(protocol: EvalProtocol, folder: Path, shards: int) -> list[Shard]:
    """K shards of whole sampling batches, as even as the batches allow."""
    batches = -(-protocol.num_samples // protocol.batch_size)
    if not 1 <= shards <= batches:
        raise ConfigError("--shards", shards, f"must be in [1, {batches}]: the {batches} sampling batches of "
                          f"{protocol.num_samples} samples at batch size {protocol.batch_size}")
    bounds = [min(protocol.num_samples, (i * batches // shards) * protocol.batch_size) for i in range(shards + 1)]
    return [Shard(i, bounds[i], bounds[i + 1] - bounds[i], str(folder / SHARD_FORMAT.format(i))) for i in range(shards)]


def shard_complete(shard: Shard) -> bool:
    """Written (atomically, so whole) with the expected number of images."""
    path = Path(shard.path)
    if not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return data["arr_0"].shape[0] == shard.count
    except Exception:      # unreadable: made again
        return False


def read_shards(shards: list[Shard]) -> tuple["torch.Tensor", "torch.Tensor"]:  # noqa: F821
    """The shards' images as floats in [-1, 1] (N, C, H, W) and their labels."""
    import torch
    images, labels = [], []
    for shard in shards:
        with np.load(shard.path, allow_pickle=False) as data:
            images.append(torch.from_numpy(data["arr_0"]).permute(0, 3, 1, 2).float().div(127.5).sub(1))
            labels.append(torch.from_numpy(data["arr_1"]).long())
    return torch.cat(images), torch.cat(labels)


# =============================================================================================
# The jobs (picklable callables; the state is on disk and in MLflow)
# =============================================================================================
def load_ema_model(checkpoint: str | Path, device, decay: Optional[float] = None):
    """(EMA model in eval mode, objective, train config, step) from a run's checkpoint: one model carrying the
    average of `decay` (default: the run's `ema.eval_decay`), no copy per decay. A latent model's samples decode
    through `load_decoder`."""
    import torch
    from omegaconf import OmegaConf

    from models.transformer import build_model

    from ..checkpoint import load_checkpoint
    from ..config import TrainConfig
    from ..objectives import make_objective

    state = load_checkpoint(Path(checkpoint))
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(state["config"])))
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    decay = cfg.ema.eval_decay if decay is None else decay
    if repr(float(decay)) not in state["ema"]:
        raise ConfigError("ema.eval_decay", decay, f"{checkpoint} holds the EMAs {sorted(state['ema'])} only")
    averaged = state["ema"][repr(float(decay))]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in averaged:
                param.copy_(averaged[name])
    return model.to(device).eval(), make_objective(cfg.objective, cfg.model), cfg, int(state["step"])


def load_decoder(cfg, device):
    """The VAE that decodes a latent run's samples (harness/vae.py), None for a pixel-space run."""
    from ..vae import is_latent, load_vae
    return load_vae(cfg, device) if is_latent(cfg) else None


class ShardJob:
    """Fill the given shards of one run under one protocol, in order, skipping complete ones (idempotent)."""

    def __call__(self, checkpoint: str, protocol: str, shards: list[Shard]) -> list[str]:
        todo = [shard for shard in shards if not shard_complete(shard)]
        if not todo:
            return []
        with explained(Path(todo[0].path).parent, fresh=False):
            return self._fill(checkpoint, EvalProtocol(protocol), todo)

    def _fill(self, checkpoint: str, protocol: EvalProtocol, todo: list[Shard]) -> list[str]:
        import torch

        from ..evaluate import protocol_batches, sample_batch

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, objective, cfg, step = load_ema_model(checkpoint, device, protocol.ema_decay)
        vae = load_decoder(cfg, device)
        seed = protocol.seed_for(cfg.run.seed, step)
        batches = protocol_batches(protocol.num_samples, protocol.batch_size)
        written = []
        for shard in todo:
            images, labels = [], []
            for b, start, count in batches:
                if shard.start <= start < shard.start + shard.count:
                    out, classes = sample_batch(model, objective, cfg, protocol, seed, b, start, count, device,
                                                vae)
                    images.append(adm_images(out))
                    labels.append(classes.numpy())
            arrays = {"arr_0": np.concatenate(images), "arr_1": np.concatenate(labels)}

            def write(tmp, arrays=arrays):
                with open(tmp, "wb") as handle:
                    np.savez(handle, **arrays)

            atomic_write(Path(shard.path), write)
            written.append(shard.path)
        return written


def adm_images(x) -> np.ndarray:
    """Samples (N, C, H, W) in [-1, 1] as ADM images, uint8 (N, H, W, 3): one grey channel replicated to three, as
    a grey reference image is read (PIL's convert("RGB"), harness.adm_metrics)."""
    import torch
    x = x[:, :3] if x.shape[1] >= 3 else x[:, :1].expand(-1, 3, -1, -1)
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


METRICS_FILE = "metrics.json"


class MetricsJob:
    """The ADM metrics of one run's shard folder against the reference, written to `<folder>/metrics.json`."""

    def __call__(self, folder: str, reference: str, metrics: list[str], inception: str, cache_dir: Optional[str],
                 batch_size: int = 100) -> dict:
        from ..adm_metrics import Evaluator, open_input
        with explained(Path(folder), fresh=False):
            evaluator = Evaluator(inception, "auto", batch_size, cache_dir, inception_key="--inception")
            values = evaluator.evaluate(open_input(folder, "SAMPLES"), open_input(reference, "REF"), metrics)
            atomic_write_text(Path(folder) / METRICS_FILE, json.dumps(values))
        return values


@functools.lru_cache(maxsize=4)
def _scorer(data: str, in_channels: int, metric: str, num_samples: int, inception: str, cache_dir: Optional[str],
            device: str):
    """The training scorer (`offline`, `fid`) of a run's data, built once per process (a classifier fitted once)."""
    import torch

    from ..config import DataConfig, TrainConfig
    from ..data import build_dataset
    from ..evaluate import build_metric
    cfg = TrainConfig(data=DataConfig(**json.loads(data)))
    cfg.eval.metric, cfg.eval.num_samples, cfg.eval.inception, cfg.eval.cache_dir = (metric, num_samples, inception,
                                                                                      cache_dir)
    return build_metric(cfg, build_dataset(cfg.data, in_channels), torch.device(device))


def score(cfg, protocol: EvalProtocol, shards: list[Shard], folder: Path, metrics: Optional[list[str]] = None,
          cache_dir: Optional[str] = None) -> dict[str, float]:
    """The protocol's scores of complete shards: the scorer of `offline` or `fid` (the run's data, the protocol's
    count and Inception weights), or ADM's suite (`adm`) against the protocol's reference."""
    import torch
    if protocol.metric == "adm":
        from ..adm_metrics import METRICS
        return MetricsJob()(str(folder), protocol["eval.reference"], list(metrics or METRICS),
                            protocol["eval.inception"], cache_dir or cfg.eval.cache_dir)
    from ..vae import image_channels
    channels = image_channels(cfg)                # a grey shard holds its channel three times (adm_images)
    scorer = _scorer(json.dumps(dataclasses.asdict(cfg.data), sort_keys=True), channels, protocol.metric,
                     protocol.num_samples, protocol["eval.inception"], cfg.eval.cache_dir,
                     "cuda" if torch.cuda.is_available() else "cpu")
    images, labels = read_shards(shards)
    images = images[:, :channels]
    values = {k: float(v) for k, v in scorer.evaluate(images, labels if cfg.model.num_classes else None).items()}
    return {**values, **scorer.own_metrics()}


# =============================================================================================
# Evaluations in MLflow: a child run of the training run per protocol
# =============================================================================================
def find_evaluation(training_run, protocol: EvalProtocol, places: list[tuple[MlflowClient, str]]):
    """The finished evaluation of a training run under a protocol: the training run itself when its own evaluation
    at the end was under this protocol, else its newest child run in any of `places` ((client, experiment id): the
    training run's store, and the evaluating sweep's when that is another); None when there is none."""
    tags, params = training_run.data.tags, training_run.data.params
    if tags.get("eval_protocol") == protocol.signature and params.get("eval.at_end") == "True" \
            and training_run.info.status == "FINISHED":
        return training_run
    found = []
    for client, experiment_id in places:
        found += client.search_runs([experiment_id], f"tags.training_run_id = '{training_run.info.run_id}' and "
                                    f"tags.eval_protocol = '{protocol.signature}' and attributes.status = 'FINISHED'",
                                    order_by=["attributes.start_time DESC"], max_results=1)
    return max(found, key=lambda run: run.info.start_time) if found else None


def evaluation_places(training_run, store: str, home: str, experiment: str) -> list[tuple[MlflowClient, str]]:
    """Where a training run's evaluations are: its own store (its experiment), and the store of the sweep
    evaluating it (the sweep's experiment) when the run was reused from another store."""
    from ..tracking import mlflow_client
    places = [(mlflow_client(store), training_run.info.experiment_id)]
    if home != store:
        client = mlflow_client(home)
        places.append((client, client.get_experiment_by_name(experiment).experiment_id))
    return places


def log_evaluation(client: MlflowClient, experiment_id: str, training_run, protocol: EvalProtocol,
                   values: dict[str, float], step: int, tags: dict[str, str], nested: bool = True,
                   existing=None) -> str:
    """Log an evaluation as a run named by its protocol — nested under the training run (`nested`: the same store),
    else in the evaluating sweep's own store beside it — or add metrics to `existing`, an evaluation under the same
    protocol that lacked them; returns its run id. Evaluations of a run reused from another sweep's store are kept
    in the evaluating sweep's store: one writer per store (its tracking server)."""
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(value), now, step) for name, value in values.items()]
    if existing is not None:
        client.log_batch(existing.info.run_id, metrics=metrics)
        return existing.info.run_id
    info = training_run.info
    all_tags = {"sweep_role": EVAL_ROLE, "eval_protocol": protocol.signature,
                "eval_protocol_name": protocol.name, "eval_protocol_version": str(protocol.version),
                "eval_protocol_text": protocol.describe(), "training_run_id": info.run_id,
                "training_signature": training_run.data.tags.get("signature", ""),
                "checkpoint": training_run.data.tags.get("checkpoint", ""), "checkpoint_step": str(step), **tags}
    if nested:
        all_tags["mlflow.parentRunId"] = info.run_id
    run_id = client.create_run(experiment_id, run_name=protocol.name, tags=all_tags).info.run_id
    client.log_batch(run_id, metrics=metrics, params=[Param(k, v[:6000]) for k, v in protocol.params().items()])
    client.set_terminated(run_id, "FINISHED")
    return run_id


def find_training_run(stores: list[str], signature: str):
    """(the newest finished training run of a signature in any of the stores, its store), or (None, None)."""
    from ..tracking import mlflow_client
    from .reader import all_runs
    best = (None, None)
    for uri in stores:
        client = mlflow_client(uri)
        experiment_ids = [e.experiment_id for e in client.search_experiments()]
        if not experiment_ids:
            continue
        for run in all_runs(client, experiment_ids, f"tags.signature = '{signature}' and "
                                                     "attributes.status = 'FINISHED'"):
            if best[0] is None or run.info.start_time > best[0].info.start_time:
                best = (run, uri)
    return best


class EvaluationJob:
    """One finished run under one protocol, start to end: find the training run (by signature, in the stores: the
    sweep's own first), skip if the evaluation exists, fill the shards, score, log the evaluation in the sweep's
    store. Idempotent and resumable (shards on disk); a failure is written to `<folder>/failure.json` for `status`."""

    def __init__(self, stores: list[str], experiment: str, signature: str, protocol: str, folder: str,
                 tags: dict[str, str]):
        self.stores, self.experiment, self.signature = stores, experiment, signature
        self.protocol, self.folder, self.tags = protocol, folder, tags

    def __call__(self) -> dict:
        folder = Path(self.folder)
        try:
            return evaluate_run(self.stores, self.experiment, self.signature, EvalProtocol(self.protocol), folder,
                                self.tags)
        except Exception as err:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / FAILURE_FILE, json.dumps({"reason": f"{type(err).__name__}: {err}",
                                                                 "time": time.time()}))
            raise


def evaluate_run(stores: list[str], experiment: str, signature: str, protocol: EvalProtocol, folder: Path,
                 tags: dict[str, str]) -> dict:
    """What an `EvaluationJob` does (also called in-process by a confirmation). `stores[0]` is the evaluating
    sweep's store (experiment `experiment`)."""
    training_run, store = find_training_run(stores, signature)
    if training_run is None:
        raise RuntimeError(f"no finished training run of signature {signature} (in {stores}): nothing to evaluate")
    places = evaluation_places(training_run, store, stores[0], experiment)
    existing = find_evaluation(training_run, protocol, places)
    if existing is not None:
        return {"run_id": existing.info.run_id, "computed": False}
    checkpoint = training_run.data.tags.get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_file():
        raise RuntimeError(f"the checkpoint {checkpoint} of run {training_run.info.run_name} is not readable here")
    batches = -(-protocol.num_samples // protocol.batch_size)
    shards = plan_shards(protocol, folder, min(batches, -(-protocol.num_samples // SHARD_SAMPLES)))
    ShardJob()(checkpoint, protocol.values_json, shards)     # a killed job resumes at its first missing shard
    cfg, step = checkpoint_config(checkpoint)
    values = score(cfg, protocol, shards, folder)
    (folder / FAILURE_FILE).unlink(missing_ok=True)
    client, experiment_id = places[-1]
    run_id = log_evaluation(client, experiment_id, training_run, protocol, values, step,
                            {**tags, **({"training_store": store} if len(places) > 1 else {})}, nested=len(places) == 1)
    return {"run_id": run_id, "computed": True, **values}


def checkpoint_config(checkpoint: str | Path):
    """(train config, step) a checkpoint was written with, without building the model."""
    from omegaconf import OmegaConf

    from ..checkpoint import load_checkpoint
    from ..config import TrainConfig
    state = load_checkpoint(Path(checkpoint))
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), OmegaConf.create(state["config"])))
    return cfg, int(state["step"])


# =============================================================================================
# `run_sweep.py eval`: the ADM suite on N samples of every finished run, shards as array tasks
# =============================================================================================
@dataclass
class EvalTarget:
    """One finished run to evaluate under a protocol, and where its shards go."""
    run: PlannedRun
    training_run: object        # the MLflow run
    store: str
    checkpoint: Path
    step: int
    protocol: EvalProtocol
    folder: Path
    shards: list

    @property
    def mlflow_run_id(self) -> str:
        return self.training_run.info.run_id

    def missing(self) -> list[Shard]:
        return [shard for shard in self.shards if not shard_complete(shard)]


def protocol_changes(sets: list[str]) -> dict:
    """`KEY=VALUE` changes of a protocol (values parsed as YAML); KEY one of the protocol's keys."""
    out = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or key not in PROTOCOL_KEYS:
            near = closest(key.removeprefix("eval.sampler."), [k.removeprefix("eval.sampler.") for k in PROTOCOL_KEYS])
            full = next((k for k in PROTOCOL_KEYS if k.endswith(f".{near}") or k == near), None) if near else None
            raise ConfigError("--set", item, f"expected KEY=VALUE with KEY an evaluation protocol key "
                              f"({', '.join(PROTOCOL_KEYS)})", suggestion=full)
        out[key] = yaml.safe_load(value)
    return out


def check_arguments(spec: SweepSpec, label: Optional[str], num: int, shards: int) -> None:
    if num < 1:
        raise ConfigError("--num", num, "must be positive")
    if not 1 <= shards <= num:
        raise ConfigError("--shards", shards, f"must be in [1, --num={num}]")
    labels = [row.label for row in spec.rows]
    if label is not None and label not in labels:
        raise ConfigError("--label", label, f"no row has this label; rows are {labels}",
                          suggestion=closest(label, labels))


def plan_evaluation(sweep: Sweep, label: Optional[str], num: int, shards: int, reference: Optional[str],
                    sets: list[str], seed: int, batch_size: int = 250, inception: str = "auto",
                    metric: str = "adm") -> tuple[list[EvalTarget], list[str]]:
    """(the finished runs to evaluate, each under its protocol; lines about the runs skipped); every refusal comes
    before any work. A run's protocol is its own config's (sampler, EMA) with the command's changes."""
    from ..adm_metrics import open_input
    from ..inception import resolve_inception
    spec = sweep.spec
    check_arguments(spec, label, num, shards)
    changes = protocol_changes(sets)
    if metric == "adm":                           # the weights themselves: "auto" differs between machines
        inception = str(resolve_inception(inception, "--inception"))
    targets, skipped, seen = [], [], set()
    for state in sweep.states():
        run = state.run
        if (label is not None and run.label != label) or run.signature in seen:
            continue
        seen.add(run.signature)
        if state.state != "done":
            skipped.append(f"{run.label} seed {run.seed}: {state.state}, not evaluated")
            continue
        checkpoint = state.mlflow_run.data.tags.get("checkpoint")
        if not checkpoint or not Path(checkpoint).is_file():
            raise ConfigError("checkpoint", checkpoint, f"run {run.run_name} ({state.mlflow_run_id}): its "
                              "checkpoint is missing", source=str(spec.path))
        cfg, step = checkpoint_config(checkpoint)
        ref = reference or cfg.eval.reference
        if metric == "adm" and not ref:
            raise ConfigError("--reference", reason="no reference batch: give --reference (an ADM .npz or an image "
                              "folder) or set eval.reference in the sweep's overrides")
        protocol = EvalProtocol.of(cfg).with_changes(
            {"eval.metric": metric, "eval.num_samples": num, "eval.seed": seed, "eval.batch_size": batch_size,
             "eval.reference": str(Path(ref).resolve()) if ref else None, "eval.inception": inception, **changes})
        protocol.check(cfg, where="--set")
        if metric == "adm":
            open_input(ref, "REF")
        folder = spec.folder / "eval" / run.run_name / protocol.signature
        targets.append(EvalTarget(run, state.mlflow_run, state.store, Path(checkpoint), step, protocol, folder,
                                  plan_shards(protocol, folder, shards)))
    return targets, skipped


def _submit(spec: SweepSpec, tasks: list[Task], wait: bool = True) -> list[dict]:
    """Submit tasks with the sweep's executor and (`wait`) wait until none is live (debug runs them in-process)."""
    executor = executor_class(spec.executor.kind)(spec.folder, f"{spec.name}-eval")
    records = [dataclasses.asdict(record) | {"submitted": time.time()}
               for record in executor.submit(tasks)] if tasks else []
    while wait and any(state in executor.LIVE for state in executor.states(records).values()):
        time.sleep(5)
    return records


def one_device(executor):
    """A shard or scoring task uses one node and at most one GPU, whatever the sweep's training used."""
    spec_fields = {f.name for f in dataclasses.fields(executor)}
    changes = {k: v for k, v in (("nodes", 1), ("gpus_per_node", min(1, getattr(executor, "gpus_per_node", 0))))
               if k in spec_fields}
    return dataclasses.replace(executor, **changes)


def submit_shards(spec: SweepSpec, missing: list[tuple[EvalTarget, list[Shard]]], wait: bool = True) -> list[dict]:
    """Fill the missing shards: one task per shard (a SLURM array task, a local lane's turn, or in-process)."""
    task_spec = one_device(spec.executor)
    return _submit(spec, [Task(f"{t.run.run_name}/shard{shard.index}", task_spec,
                               functools.partial(ShardJob(), str(t.checkpoint), t.protocol.values_json, [shard]))
                          for t, shards in missing for shard in shards], wait)


def why_failed(spec: SweepSpec, target: EvalTarget, records: list[dict], missing: str) -> str:
    """One line: the reason a job of `target` wrote (`jobs.explained`), else what its jobs' states say."""
    found = job_failure(target.folder)
    if found:
        return found
    mine = [r for r in records if r["run_name"].startswith(f"{target.run.run_name}/")]
    states = executor_class(spec.executor.kind)(spec.folder, f"{spec.name}-eval").states(mine) if mine else {}
    ended = ", ".join(f"job {job} {state}" for job, state in sorted(states.items()))
    return f"{missing} not written: its job ended without a reason ({ended or 'no job'}; killed, or out of time?)"


def evaluate_sweep(sweep: Sweep, label: Optional[str] = None,
                   num: int = 50000, shards: int = 32, reference: Optional[str] = None, metrics=None,
                   sets: tuple = (), seed: int = 0, inception: str = "auto", wait: bool = True,
                   batch_size: Optional[int] = None, cache_dir: Optional[str] = None, echo=print) -> int:
    """The whole verb: plan, fill the missing shards, score, log each run's evaluation as a child run named by its
    protocol (one already there is not computed again). Returns the exit code."""
    from ..adm_metrics import METRICS, Evaluator
    from ..tracking import mlflow_client
    spec = sweep.spec
    check_arguments(spec, label, num, shards)          # before the store is opened (direct callers too)
    sweep.check_store()
    batch = batch_size or 250
    evaluator = Evaluator(inception, "cpu", cache_dir=cache_dir)
    if metrics is None:
        metrics = [m for m in METRICS if m != "is" or evaluator.net.has_logits]
    evaluator.check_metrics(metrics)
    targets, skipped = plan_evaluation(sweep, label, num, shards, reference, list(sets), seed, batch, inception)
    for line in skipped:
        echo(f"  skipped {line}")
    if not targets:
        echo("no finished run to evaluate")
        return 1
    todo = []
    home = sweep.client.get_experiment_by_name(spec.experiment_name).experiment_id
    for target in targets:
        found = find_evaluation(target.training_run, target.protocol, [
            (mlflow_client(target.store), target.training_run.info.experiment_id), (sweep.client, home)])
        if found is not None and set(metrics) <= set(found.data.metrics):
            echo(f"  {target.run.label} seed {target.run.seed}: already evaluated under {target.protocol.name} "
                 f"(MLflow run {found.info.run_id}): " + " ".join(f"{m}={found.data.metrics[m]:.4g}" for m in metrics))
        else:
            todo.append((target, found))
    if not todo:
        return 0
    missing = [(t, t.missing()) for t, _ in todo]          # each shard file read once before submission
    to_fill = [shard for _, shards in missing for shard in shards]
    kind = spec.executor.kind
    echo(f"{len(todo)} runs, {num} samples each in {shards} shards under {todo[0][0].protocol.name}; "
         f"{len(to_fill)} shards to fill (executor {kind})"
         + (f"; first missing: {to_fill[0].path}" if to_fill else ""))
    for target, _ in todo:                               # this command's jobs say why they failed, if they do
        (target.folder / JOB_FAILURE_FILE).unlink(missing_ok=True)
    records = submit_shards(spec, missing, wait)
    if to_fill and not wait:
        echo(f"submitted {len(to_fill)} shard tasks; run the same command again to score them when they end")
        return 0
    incomplete = [t for t, _ in todo if t.missing()]
    if incomplete:
        for target in incomplete:
            echo(f"  {target.run.label} seed {target.run.seed}: "
                 + why_failed(spec, target, records, f"shard {target.missing()[0].path}"))
        echo(f"{len(incomplete)} runs still miss shards; run the same command again to resume")
        return 1
    records = _submit(spec, [Task(f"{t.run.run_name}/metrics", one_device(spec.executor),
                                  functools.partial(MetricsJob(), str(t.folder), t.protocol["eval.reference"],
                                                    list(metrics), t.protocol["eval.inception"], cache_dir))
                             for t, _ in todo])
    for target, found in todo:
        scored = target.folder / METRICS_FILE
        if not scored.is_file():
            echo(f"  {target.run.label} seed {target.run.seed}: scoring failed: "
                 + why_failed(spec, target, records, str(scored)))
            return 1
        values = json.loads(scored.read_text())
        nested = target.store == sweep.store_uri
        run_id = log_evaluation(sweep.client, home, target.training_run, target.protocol, values, target.step,
                                {"eval_stage": "eval", "evaluated_by_sweep": spec.name,
                                 "eval_samples": str(target.folder), **({} if nested else {"training_store":
                                                                                          target.store})},
                                nested=nested, existing=found)
        echo(f"  {target.run.label} seed {target.run.seed}: " + " ".join(f"{m}={v:.4g}" for m, v in values.items())
             + f" (MLflow run {run_id}, protocol {target.protocol.name})")
    return 0
