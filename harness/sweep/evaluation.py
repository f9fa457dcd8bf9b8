"""`run_sweep.py eval`: the ADM evaluation suite on N samples of every finished run of a sweep.

    python run_sweep.py eval SWEEP.yaml [--label L] [--num 50000] [--shards K] [--reference REF]

For each finished run (its MLflow tag `checkpoint` names the checkpoint): the EMA weights of
`ema.eval_decay` sample N images with class-balanced labels (image i gets class i mod C, so 50,000
ImageNet samples hold 50 of each class) with the run's `eval.sampler` (or `--set eval.sampler.*`), in K
shards of consecutive images. Each shard is an ADM `.npz` (`arr_0` uint8 NHWC, `arr_1` labels, the
format of ADM's sampling scripts, so its evaluator can read them too), written atomically; its
noise depends only on (seed, shard, sampling batch), so a shard is the same whichever job makes it.
Shards are filled by `ShardJob`s through submitit — one SLURM array task (one GPU) per shard, a few
local processes, or in-process — and a complete shard is never redone: a killed evaluation resumes
at its first missing shard. A `MetricsJob` then scores the shards against the reference (`--reference`, else the runs'
`eval.reference`) with `harness.adm_metrics`, and the values are logged to the run as `<metric><N>`
(fid50k, sfid50k, is50k, precision50k, recall50k; `fid40` for N = 40) with the protocol as params
`eval<N>.*`, at the checkpoint's step: `run_sweep.py table SWEEP --metric fid50k` reads them.

Grey models (one channel: the MNIST demo) write their samples with the grey replicated to three channels, as a
grey reference image is read. A shard or scoring job that fails writes its one-line reason to its run's shard
folder (`jobs.explained`), and the command prints it: never only "see the logs".
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from toolkit.errors import ConfigError, closest
from toolkit.files import atomic_write, atomic_write_text

from ..config import SamplerConfig
from ..metric_registry import count_tag
from .executors import Task, executor_class
from .jobs import JOB_FAILURE_FILE, explained, job_failure
from .plan import PlannedRun
from .spec import SweepSpec
from .sweep import Sweep

SHARD_FORMAT = "shard_{:05d}.npz"


@dataclass(frozen=True)
class Shard:
    index: int
    start: int          # first image index (its label is start mod C)
    count: int
    path: str


@dataclass
class EvalTarget:
    """One finished run to evaluate, and where its shards go."""
    run: PlannedRun
    mlflow_run_id: str
    checkpoint: Path
    step: int           # the checkpoint's step: the metrics are logged there
    ema_decay: float
    sampler: dict
    reference: str
    folder: Path
    shards: list

    def missing(self) -> list[Shard]:
        return [shard for shard in self.shards if not shard_complete(shard)]


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


# =============================================================================================
# The jobs (picklable callables; the state is on disk)
# =============================================================================================
def load_ema_model(checkpoint: str | Path, device):
    """(EMA model in eval mode, objective, train config, step) from a run's checkpoint: one model carrying the
    average of `ema.eval_decay`, no copy per decay."""
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
    averaged = state["ema"][repr(cfg.ema.eval_decay)]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in averaged:
                param.copy_(averaged[name])
    return model.to(device).eval(), make_objective(cfg.objective, cfg.model), cfg, int(state["step"])


class ShardJob:
    """Fill the given shards of one run, in order, skipping complete ones (idempotent)."""

    def __call__(self, checkpoint: str, sampler: dict, seed: int, shards: list[Shard], batch_size: int) -> list[str]:
        todo = [shard for shard in shards if not shard_complete(shard)]
        if not todo:
            return []
        with explained(Path(todo[0].path).parent, fresh=False):
            return self._fill(checkpoint, sampler, seed, todo, batch_size)

    def _fill(self, checkpoint: str, sampler: dict, seed: int, todo: list[Shard], batch_size: int) -> list[str]:
        import torch

        from ..sampling import sample

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, objective, cfg, _ = load_ema_model(checkpoint, device)
        sampler_cfg = SamplerConfig(**sampler)
        mc = cfg.model
        bf16 = cfg.train.precision == "bf16" and device.type == "cuda"

        def net(x, t, y):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                return model(x, t, y).prediction.float()

        written = []
        for shard in todo:
            generator = torch.Generator(device).manual_seed(seed * 1_000_003 + shard.index)
            index = torch.arange(shard.start, shard.start + shard.count)
            labels = index % mc.num_classes if mc.num_classes else torch.zeros_like(index)
            images = []
            for chunk in labels.split(batch_size):
                out = sample(net, objective, sampler_cfg, chunk.to(device), (mc.in_channels, mc.input_size,
                                                                           mc.input_size), generator, mc.num_classes)
                images.append(adm_images(out))
            arrays = {"arr_0": np.concatenate(images), "arr_1": labels.numpy()}

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


# =============================================================================================
# Planning
# =============================================================================================
def sampler_with(base: dict, sets: list[str]) -> dict:
    """The run's eval.sampler with `eval.sampler.KEY=VALUE` overrides (values parsed as YAML)."""
    fields = {f.name for f in dataclasses.fields(SamplerConfig)}
    out = dict(base)
    for item in sets:
        key, sep, value = item.partition("=")
        name = key.removeprefix("eval.sampler.")
        if not sep or not key.startswith("eval.sampler.") or name not in fields:
            near = closest(name, fields)
            raise ConfigError("--set", item, f"expected eval.sampler.FIELD=VALUE with FIELD one of {sorted(fields)}",
                              suggestion=near and f"eval.sampler.{near}")
        out[name] = yaml.safe_load(value)
    return out


def protocol_params(target: "EvalTarget", seed: int, batch_size: int, inception: str,
                    metrics: list[str]) -> dict[str, str]:
    """What makes the numbers what they are, as the run's params `eval<N>.*`."""
    num = sum(shard.count for shard in target.shards)
    params = {"num": num, "shards": len(target.shards), "seed": seed, "batch_size": batch_size,
              "ema_decay": target.ema_decay,
              "labels": "class-balanced (i mod C)", "checkpoint_step": target.step,
              "reference": str(Path(target.reference).resolve()), "inception": inception, "metrics": ",".join(metrics),
              "protocol": "ADM evaluator (harness.adm_metrics)",
              **{f"sampler.{k}": v for k, v in target.sampler.items()}}
    return {f"eval{count_tag(num)}.{k}": json.dumps(v) if isinstance(v, (list, dict)) else str(v)
            for k, v in params.items()}


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
                    sets: list[str], seed: int, batch_size: int = 250) -> tuple[list[EvalTarget], list[str]]:
    """(the finished runs to evaluate, lines about the runs skipped); every refusal comes before any work."""
    from omegaconf import OmegaConf

    from ..adm_metrics import open_input
    from ..sampling import validate_sampler
    spec = sweep.spec
    check_arguments(spec, label, num, shards)
    targets, skipped = [], []
    for state in sweep.states():
        run = state.run
        if label is not None and run.label != label:
            continue
        if state.state != "done":
            skipped.append(f"{run.label} seed {run.seed}: {state.state}, not evaluated")
            continue
        checkpoint = state.mlflow_run.data.tags.get("checkpoint")
        config = Path(checkpoint).parent.parent / "config.yaml" if checkpoint else None
        if not checkpoint or not Path(checkpoint).is_file() or not config.is_file():
            raise ConfigError("checkpoint", checkpoint, f"run {run.run_name} ({state.mlflow_run_id}): its "
                              "checkpoint or config.yaml is missing", source=str(spec.path))
        cfg = OmegaConf.load(config)
        sampler = sampler_with(OmegaConf.to_container(cfg.eval.sampler), sets)
        validate_sampler(SamplerConfig(**sampler), cfg.objective.kind, cfg.objective.get("ddpm_steps"))
        ref = reference or cfg.eval.get("reference")
        if not ref:
            raise ConfigError("--reference", reason="no reference batch: give --reference (an ADM .npz or an image "
                              "folder) or set eval.reference in the sweep's overrides")
        open_input(ref, "REF")
        step = int(state.step or 0)
        digest = hashlib.sha256(json.dumps([checkpoint, step, num, shards, seed, batch_size, sampler],
                                           sort_keys=True).encode()).hexdigest()[:10]
        folder = spec.folder / "eval" / run.run_name / f"n{count_tag(num)}-{digest}"
        bounds = [i * num // shards for i in range(shards + 1)]
        targets.append(EvalTarget(run, state.mlflow_run_id, Path(checkpoint), step, float(cfg.ema.eval_decay),
                                  sampler, str(ref), folder,
                                  [Shard(i, bounds[i], bounds[i + 1] - bounds[i], str(folder / SHARD_FORMAT.format(i)))
                                   for i in range(shards)]))
    return targets, skipped


def check_params(client: MlflowClient, target: EvalTarget, params: dict[str, str]) -> None:
    """MLflow params never change: a run evaluated at the same N under another protocol is refused."""
    logged = client.get_run(target.mlflow_run_id).data.params
    for key, value in params.items():
        if key in logged and logged[key] != value:
            raise ConfigError(key, value, f"run {target.run.run_name} was evaluated at this N with {logged[key]!r}; "
                              "evaluate with another --num, or in a new sweep")


# =============================================================================================
# Submission through the sweep's executor (harness/sweep/executors/)
# =============================================================================================
def _submit(spec: SweepSpec, tasks: list[Task], wait: bool = True) -> list[dict]:
    """Submit tasks with the sweep's executor and (`wait`) wait until none is live (debug runs them in-process)."""
    executor = executor_class(spec.executor.kind)(spec.folder, f"{spec.name}-eval")
    records = [dataclasses.asdict(record) | {"submitted": time.time()}
               for record in executor.submit(tasks)] if tasks else []
    while wait and any(state in executor.LIVE for state in executor.states(records).values()):
        time.sleep(5)
    return records


def _one_device(spec: SweepSpec):
    """A shard or scoring task uses one node and at most one GPU, whatever the sweep's training used."""
    spec_fields = {f.name for f in dataclasses.fields(spec.executor)}
    changes = {k: v for k, v in (("nodes", 1), ("gpus_per_node", min(1, getattr(spec.executor, "gpus_per_node", 0))))
               if k in spec_fields}
    return dataclasses.replace(spec.executor, **changes)


def submit_shards(spec: SweepSpec, missing: list[tuple[EvalTarget, list[Shard]]], seed: int, batch_size: int,
                  wait: bool = True) -> list[dict]:
    """Fill the missing shards: one task per shard (a SLURM array task, a local lane's turn, or in-process)."""
    task_spec = _one_device(spec)
    return _submit(spec, [Task(f"{t.run.run_name}/shard{shard.index}", task_spec,
                               functools.partial(ShardJob(), str(t.checkpoint), t.sampler, seed, [shard], batch_size))
                          for t, shards in missing for shard in shards], wait)


def why_failed(spec: SweepSpec, target: EvalTarget, records: list[dict], missing: str) -> str:
    """One line: the reason a job of `target` wrote (`jobs.explained`), else what its jobs' states say."""
    found = job_failure(target.folder)
    if found:
        return found
    mine = [r for r in records if r["run_name"].startswith(f"{target.run.run_name}/")]
    states = executor_class(spec.executor.kind)(spec.folder, spec.name).states(mine) if mine else {}
    ended = ", ".join(f"job {job} {state}" for job, state in sorted(states.items()))
    return f"{missing} not written: its job ended without a reason ({ended or 'no job'}; killed, or out of time?)"


def log_results(client: MlflowClient, target: EvalTarget, values: dict[str, float], params: dict[str, str]) -> None:
    tag = count_tag(sum(shard.count for shard in target.shards))
    now = int(time.time() * 1000)
    client.log_batch(target.mlflow_run_id,
                     metrics=[Metric(f"{m}{tag}", float(v), now, target.step) for m, v in values.items()],
                     params=[Param(k, v[:6000]) for k, v in params.items()],
                     tags=[RunTag(f"eval{tag}.samples", str(target.folder))])


def evaluate_sweep(sweep: Sweep, label: Optional[str] = None,
                   num: int = 50000, shards: int = 32, reference: Optional[str] = None, metrics=None,
                   sets: tuple = (), seed: int = 0, inception: str = "auto", wait: bool = True,
                   batch_size: Optional[int] = None, cache_dir: Optional[str] = None, echo=print) -> int:
    """The whole verb: plan, fill the missing shards, score, log. Returns the exit code."""
    from ..adm_metrics import METRICS, Evaluator
    spec = sweep.spec
    check_arguments(spec, label, num, shards)          # before the store is opened (direct callers too)
    client = sweep.client
    batch = batch_size or 250
    targets, skipped = plan_evaluation(sweep, label, num, shards, reference, list(sets), seed, batch)
    for line in skipped:
        echo(f"  skipped {line}")
    if not targets:
        echo("no finished run to evaluate")
        return 1
    evaluator = Evaluator(inception, "cpu", cache_dir=cache_dir)
    if metrics is None:
        metrics = [m for m in METRICS if m != "is" or evaluator.net.has_logits]
    evaluator.check_metrics(metrics)
    params = {t.run.run_name: protocol_params(t, seed, batch, str(evaluator.inception_path), metrics)
              for t in targets}
    for target in targets:
        check_params(client, target, params[target.run.run_name])
    missing = [(t, t.missing()) for t in targets]          # each shard file read once before submission
    to_fill = [shard for _, shards in missing for shard in shards]
    kind = spec.executor.kind
    echo(f"{len(targets)} runs, {num} samples each in {shards} shards; {len(to_fill)} shards to fill "
         f"(executor {kind})" + (f"; first missing: {to_fill[0].path}" if to_fill else ""))
    for target in targets:                               # this command's jobs say why they failed, if they do
        (target.folder / JOB_FAILURE_FILE).unlink(missing_ok=True)
    records = submit_shards(spec, missing, seed, batch, wait)
    if to_fill and not wait:
        echo(f"submitted {len(to_fill)} shard tasks; run the same command again to score them when they end")
        return 0
    incomplete = [t for t in targets if t.missing()]
    if incomplete:
        for target in incomplete:
            echo(f"  {target.run.label} seed {target.run.seed}: "
                 + why_failed(spec, target, records, f"shard {target.missing()[0].path}"))
        echo(f"{len(incomplete)} runs still miss shards; run the same command again to resume")
        return 1
    records = _submit(spec, [Task(f"{t.run.run_name}/metrics", _one_device(spec),
                                  functools.partial(MetricsJob(), str(t.folder), t.reference, list(metrics),
                                                    str(evaluator.inception_path), cache_dir)) for t in targets])
    tag = count_tag(num)
    for target in targets:
        scored = target.folder / METRICS_FILE
        if not scored.is_file():
            echo(f"  {target.run.label} seed {target.run.seed}: scoring failed: "
                 + why_failed(spec, target, records, str(scored)))
            return 1
        values = json.loads(scored.read_text())
        log_results(client, target, values, params[target.run.run_name])
        echo(f"  {target.run.label} seed {target.run.seed}: "
             + " ".join(f"{m}{tag}={v:.4g}" for m, v in values.items()))
    return 0
