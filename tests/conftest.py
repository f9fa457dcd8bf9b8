import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from harness import metric_registry
from harness.sweep.server import stop_server
from harness.sweep.spec import SweepError, load_sweep
from harness.sweep.store import store_uri
from harness.sweep.sweep import Sweep
from models.config import ModelConfig
from toolkit.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]      # the project's root: its scripts, sweeps and fixtures


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


def tiny(**changes) -> ModelConfig:
    """A PixelDiT-shaped model small enough for exact behaviour checks on the CPU."""
    base = dict(input_size=16, patch_size=4, depth=2, hidden_size=32, num_heads=2, pixel_depth=1,
                pixel_dim=8, num_classes=10, repa_block=1, repa_hidden=32, repa_dim=24)
    return ModelConfig(**{**base, **changes}).validate()


def randomize(model: torch.nn.Module, std: float = 0.3) -> torch.nn.Module:
    """Replace the zero init (which makes every modulation vanish) by random weights."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, std)
    return model


def inputs(cfg: ModelConfig, batch: int = 2):
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size)
    t = torch.rand(batch)
    y = torch.randint(0, cfg.num_classes, (batch,))
    return x, t, y


# ---- samplers: a tiny data shape, its null label, and a recording network wrapper ----------------
SHAPE = (3, 4, 4)
NULL = 10


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def labels(b=4):
    return torch.arange(b) % NULL


class Recorder:
    """Wraps a net; records the batch size and the (first) network time of every forward."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, x, t, y):
        assert x.shape[0] == t.shape[0] == y.shape[0]
        self.calls.append((x.shape[0], float(t[0])))
        return self.fn(x, t, y)


OFFICIAL = ROOT / "tests" / "fixtures" / "official"     # golden outputs of the official codes (their README)


def official_outputs(name: str) -> tuple[dict, dict]:
    """A golden fixture's tensors and its `official` metadata (what the official code was called with)."""
    from safetensors import safe_open
    with safe_open(str(OFFICIAL / name), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["official"])


def switch_fixture_maker():
    """tests/fixtures/official/make_switch_fixtures.py as a module: the seeded models and weights it made the
    2026 switches' fixtures with."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_switch_fixtures", OFFICIAL / "make_switch_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_evaluated_sweep(folder: Path, name: str, steps: int, eval_step: int, paper: dict, **more) -> Path:
    """A real tiny sweep, run in-process (debug executor): 4 rows x 2 seeds — patch-wise and pixel-wise
    AdaLN, a row that diverges (lr 1e12) so its runs fail, and a model without a pixel pathway whose label
    starts with "+" (as the papers' cumulative rows do) — with the offline metric at `eval_step` and at
    the end. `paper` maps labels to their `paper:` numbers; `more` adds top-level sweep keys."""
    from commands.cli import main
    rows = [{"label": "patch-wise", "set": {"model.adaln": "B"}}, {"label": "pixel-wise", "set": {"model.adaln": "C"}},
            {"label": "diverges", "set": {"optim.lr": 1.0e12, "optim.grad_clip": 0.0}},
            {"label": "+ no pixel pathway", "set": {"model.pixel_pathway": False}}]
    for row in rows:
        if row["label"] in paper:
            row["paper"] = paper[row["label"]]
    overrides = {"train.steps": steps, "train.global_batch": 16, "train.log_every": 2, "model.depth": 2,
                 "model.hidden_size": 32, "model.num_heads": 2, "checkpoint.every_steps": eval_step,
                 "eval.metric": "offline", "eval.num_samples": 40, "eval.batch_size": 20, "eval.at_steps": [eval_step],
                 "eval.sampler.steps": 3, "eval.cache_dir": str(folder / "cache")}
    path = write_sweep(folder, name, rows=rows, executor="debug", overrides=overrides, **more)
    assert main([str(path)]) == 0
    return path


# ---- sweeps against real executors: a real SLURM where one answers (scripts/local_slurm.sh), local processes ----

def slurm_available() -> str | None:
    """None when a SLURM controller answers, else the reason to skip."""
    if shutil.which("sbatch") is None:
        return "SLURM is not installed (no sbatch); scripts/local_slurm.sh start installs and starts one"
    if "SLURM_CONF" not in os.environ:
        return "SLURM_CONF is not set; run `scripts/local_slurm.sh start` and export what `env` prints"
    probe = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or "idle" not in probe.stdout and "mix" not in probe.stdout:
        return f"no idle SLURM node answers: {probe.stderr.strip() or probe.stdout.strip()}"
    return None


SLURM_SKIP = slurm_available()
ON_SLURM = pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))
EXECUTORS = ["local", pytest.param("slurm", marks=ON_SLURM)]


# ---- tracking stores: the sweep's sqlite file, or a real PostgreSQL where one answers (scripts/local_postgres.sh) ----

def postgres_available() -> str | None:
    """None when the PostgreSQL of `scripts/local_postgres.sh` (DITLAB_POSTGRES_URI) answers, else why to skip."""
    uri = os.environ.get("DITLAB_POSTGRES_URI")
    if not uri:
        return "DITLAB_POSTGRES_URI is not set; run `scripts/local_postgres.sh start` and export what `env` prints"
    try:
        import psycopg
        with psycopg.connect(uri, connect_timeout=10) as connection:
            connection.execute("SELECT 1")
    except Exception as err:                      # not installed, not running, refused
        return f"PostgreSQL at {uri} does not answer: {str(err).strip().splitlines()[0] if str(err).strip() else err!r}"
    return None


POSTGRES_SKIP = postgres_available()
ON_POSTGRES = pytest.mark.skipif(POSTGRES_SKIP is not None, reason=str(POSTGRES_SKIP))
STORES = ["sqlite", pytest.param("postgresql", marks=ON_POSTGRES)]   # for `tracking` (indirect)


def _postgres(statement: str) -> None:
    import psycopg
    with psycopg.connect(os.environ["DITLAB_POSTGRES_URI"], autocommit=True) as connection:
        connection.execute(statement)


@pytest.fixture(scope="session")
def postgres_template() -> str:
    """A database MLflow's migrations have already run on (once per MLflow version): new stores are copies of it."""
    import mlflow
    name = "ditlab_mlflow_" + mlflow.__version__.replace(".", "_")
    base = os.environ["DITLAB_POSTGRES_URI"].rsplit("/", 1)[0]
    import psycopg
    with psycopg.connect(os.environ["DITLAB_POSTGRES_URI"], autocommit=True) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            connection.execute(f"CREATE DATABASE {name}")
            # in a process of its own, so that no connection to the template outlives the migration
            subprocess.run([sys.executable, "-c", "import sys; from mlflow.tracking import MlflowClient; "
                            "MlflowClient(sys.argv[1]).search_experiments()", f"{base}/{name}"], check=True,
                           capture_output=True, timeout=600)
    return name


@pytest.fixture
def tracking(request):
    """The `tracking:` section of a sweep on the store the test is parametrized with (`STORES`): nothing (the
    sweep's sqlite file) or a new PostgreSQL database, dropped afterwards."""
    if request.param == "sqlite":
        yield {}
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    _postgres(f"CREATE DATABASE {name} TEMPLATE {request.getfixturevalue('postgres_template')}")
    yield {"uri": f"{os.environ['DITLAB_POSTGRES_URI'].rsplit('/', 1)[0]}/{name}"}
    _postgres(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")   # servers and pooled connections included


TINY = {"train.steps": 4, "train.global_batch": 16, "train.log_every": 2, "model.depth": 2,
        "model.hidden_size": 32, "model.num_heads": 2, "eval.metric": "none", "checkpoint.every_steps": 2}
# The offline metric at its smallest: a few samples, a 3-step sampler (a test adds where it evaluates).
TINY_OFFLINE_EVAL = {"eval.metric": "offline", "eval.num_samples": 40, "eval.batch_size": 20, "eval.sampler.steps": 3}
# Steps of tens of milliseconds, so a job can be interrupted mid-run.
SLOW = {**TINY, "train.steps": 40, "train.global_batch": 32, "model.hidden_size": 64, "model.num_heads": 4,
        "checkpoint.every_steps": 5, "train.log_every": 5}


# An entry point run as a user types it, in a child that reports which of the heavy modules it imported.
HEAVY = ("torch", "mlflow", "hydra")
IMPORT_PROBE = """
import runpy, sys
target, sys.argv = sys.argv[1], sys.argv[1:]
code = 0
try:
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)
except SystemExit as done:
    code = done.code
print("IMPORTED", ",".join(sorted(m for m in %r if m in sys.modules)), file=sys.stderr)
sys.exit(code)
""" % (HEAVY,)


def run_counting_imports(target: str, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    """(the finished child, the heavy modules it imported) of `python TARGET ARGS` (a script or a module)."""
    result = subprocess.run([sys.executable, "-c", IMPORT_PROBE, target, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    imported = [line.split(" ", 1)[1] for line in result.stderr.splitlines() if line.startswith("IMPORTED ")]
    assert imported, result.stderr[-2000:]
    return result, [m for m in imported[-1].split(",") if m]


def tiny_overrides(tmp_path: Path, name="run", steps=6, **extra) -> list[str]:
    """One training run's command line: tiny_digits with the TINY model for a handful of steps."""
    items = {**TINY, "run.out_dir": str(tmp_path / "runs"), "run.name": name, "train.steps": steps,
             "checkpoint.every_steps": 3, "eval.cache_dir": str(tmp_path / "cache"), **extra}
    return ["+experiment=tiny_digits", *[f"{k}={v}" for k, v in items.items()]]


def write_sweep(folder: Path, name="s", rows=None, executor="local", overrides=None, **more) -> Path:
    sweep = {"name": name, "experiment": "tiny_digits", "output": str(folder / "out"),
             "overrides": overrides or TINY,
             "rows": rows or [{"label": "patch-wise", "set": {"model.adaln": "B"}},
                              {"label": "pixel-wise", "set": {"model.adaln": "C"}}],
             "seeds": [0, 1], "executor": executor if isinstance(executor, dict) else
             {"kind": executor, **({"max_parallel": 4} if executor == "local" else {})},
             **more}
    path = folder / f"{name}.yaml"
    path.write_text("# a comment that must survive\n" + yaml.safe_dump(sweep, sort_keys=False))
    return path


def wait_until(predicate, timeout=300, every=0.5, what="condition"):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def release_when_requeued(job_id: str) -> None:
    """SLURM holds a requeued batch job for 120 s (EligibleTime); let it start now."""
    def requeued():
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        return "JobState=PENDING" in out and "Restarts=1" in out
    wait_until(requeued, timeout=120, what=f"job {job_id} to be requeued")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def submit_with_a_lost_node(monkeypatch, path: Path, step: int, which=lambda cfg: True) -> None:
    """Submit the sweep at `path` with a training step that raises (a lost node) when a run `which(cfg)` accepts
    reaches `step`, so it ends failed with its checkpoints so far; the training step is whole again afterwards."""
    from commands.cli import main
    from harness.trainer import Trainer
    original = Trainer.train_step

    def lost_node(self, x, y):
        if self.step == step and which(self.cfg):
            raise RuntimeError("node lost")
        return original(self, x, y)

    monkeypatch.setattr(Trainer, "train_step", lost_node)
    assert main([str(path)]) == 0
    monkeypatch.setattr(Trainer, "train_step", original)


def states(path: Path) -> dict:
    return {(s.run.label, s.run.seed): s for s in Sweep.open(path).states()}


def all_ended(path: Path) -> bool:
    return all(s.state in ("done", "failed") for s in states(path).values())


@pytest.fixture
def sweep_dir(tmp_path):
    from commands.verbs import cancel_command
    yield tmp_path
    for path in tmp_path.rglob("*.yaml"):            # stop the jobs and tracking servers the sweeps started
        try:
            spec = load_sweep(path)
        except SweepError:                          # a deliberately malformed file started none
            continue
        try:
            cancel_command(Sweep(spec))
        except ConfigError:                         # nothing was submitted
            pass
        stop_server(spec)


# ---- weights of finished runs -------------------------------------------------------------------

def weights(run_dir: Path) -> dict:
    """The model, EMA and step of a run folder's last checkpoint."""
    from harness.checkpoint import load_checkpoint
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return {"model": state["model"], "ema": state["ema"], "step": state["step"]}


# Ranks change the order of float32 sums, nothing else: the gradient is averaged over ranks instead of over
# one batch (DDP's all-reduce, FSDP's reduce-scatter). Weights of order 1 trained at lr 1e-3 end within
# ~4e-8 of each other after 6 steps here; a different sample, noise draw or missed step moves them by ~1e-3.
REDUCTION_ATOL = 1e-6


def assert_close_weights(a: dict, b: dict, atol: float = REDUCTION_ATOL):
    assert a["step"] == b["step"]
    for key in a["model"]:
        assert torch.allclose(a["model"][key], b["model"][key], rtol=0, atol=atol), key
    for decay in a["ema"]:
        for key in a["ema"][decay]:
            assert torch.allclose(a["ema"][decay][key], b["ema"][decay][key], rtol=0, atol=atol), key


def children(path: Path):
    spec = load_sweep(path)
    client = MlflowClient(store_uri(spec))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("sweep_role") == "parent"]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, kids




# ---- a metric added by its registry entry alone ----

@pytest.fixture
def registered_metric(monkeypatch):
    """A new metric declared only by one entry of harness/metric_registry.py (as a scorer's `evaluate()` would log
    it): higher is better, sample-based, shown before any other. Tests log its values themselves."""
    metric = metric_registry.Metric("sharpness", "sharpness", ("offline",), "sharpness (edge energy of samples)",
                                    higher_is_better=True, sample_based=True, priority=0)
    monkeypatch.setattr(metric_registry, "METRICS", (*metric_registry.METRICS, metric))
    return metric
