"""Train once, evaluate many: training signatures hold only what changes the trained weights, an evaluation is an
MLflow child run named by its protocol (harness/protocol.py), a sweep's `evaluate:` evaluates finished runs without
retraining, selects on a proxy and confirms with another seed. Real tiny sweeps (in-process debug executor, real
MLflow stores, real checkpoints)."""
import hashlib
import json

import pytest
import yaml
from conftest import SLURM_SKIP, TINY, wait_until, write_sweep
from mlflow.tracking import MlflowClient

from commands.cli import main
from harness.configure import config_signature, resolve
from harness.protocol import EvalProtocol
from harness.sweep.plan import plan_sweep
from harness.sweep.protocols import SELECTION_ROLE
from harness.sweep.spec import load_sweep
from harness.sweep.store import store_uri
from harness.sweep.sweep import Sweep

PIXEL_AND_DIT = [{"label": "DiT", "set": {"model.pixel_pathway": False}},
                 {"label": "pixel", "set": {"model.adaln": "C"}}]
# Two EMAs kept by every run, trained long enough that guidance changes the 8-bit samples; the offline metric on 20
# samples of a 2-step sampler for the evaluations.
BANK = {**TINY, "ema.decays": [0.99, 0.999], "ema.eval_decay": 0.99, "train.steps": 30, "optim.lr": 5e-3,
        "checkpoint.every_steps": 15}
OFFLINE = {"eval.metric": "offline", "eval.num_samples": 20, "eval.batch_size": 20, "eval.sampler.steps": 2}


def signature(*overrides: str, experiment: str = "tiny_mnist") -> str:
    return config_signature(resolve([f"+experiment={experiment}", *overrides]).cfg)


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


# ---- training identity ------------------------------------------------------------------------------

def test_a_value_equal_to_its_default_signs_as_the_default():
    # tiny_mnist: patch 4, so PixelDiT's default compaction (None = p^2) is 16; width 64 and 4 heads
    ptc = signature("model=table4_ptc")
    assert signature("model=table4_ptc", "model.compaction=16") == ptc
    assert signature("model=table4_ptc", "model.pixel_attn_dim=64", "model.pixel_heads=4") == ptc
    assert signature("model=table4_ptc", "model.compaction=4") != ptc          # another compaction: another run


def test_a_switch_without_effect_changes_nothing():
    dit = signature("model=table4_vanilla_dit16")                              # no pixel pathway
    for inert in ("model.compaction=4", "model.adaln=B", "model.pixel_depth=3", "model.pixel_attention=false"):
        assert signature("model=table4_vanilla_dit16", inert) == dit, inert
    pixel = signature("model=table4_pixelwise")
    assert signature("model=table4_pixelwise", "model.adaln=B") != pixel       # it acts on a pixel pathway
    assert signature("model=table4_pixelwise", "model.hint_loss_weight=0.1") == pixel       # no hints: no weight
    assert signature("model=table4_pixelwise", "model.hint_fraction=0.25", "model.hint_loss_weight=0.1") != \
        signature("model=table4_pixelwise", "model.hint_fraction=0.25")
    # training switches as well: Muon's settings under AdamW, the frequency loss's table quality without the loss
    plain = signature("model=table4_pixelwise")
    for inert in ("optim.muon_momentum=0.9", "objective.freq_quality=50", "perceptual.vgg_weights=random"):
        assert signature("model=table4_pixelwise", inert) == plain, inert
    assert signature("model=table4_pixelwise", "optim.optimizer=muon", "optim.muon_momentum=0.9") != \
        signature("model=table4_pixelwise", "optim.optimizer=muon")


def test_evaluation_settings_leave_the_training_signature():
    base = signature()
    for change in ("eval.sampler.cfg_scale=1.5", "eval.sampler.cfg_interval=[0.1,1.0]", "eval.sampler.steps=50",
                   "eval.sampler.kind=heun", "eval.num_samples=8000", "eval.labels=random", "eval.seed=3",
                   "eval.metric=none", "eval.at_steps=[100]", "eval.inception=/x.pt"):
        assert signature(change) == base, change
    assert signature("ema.decays=[0.99,0.999]", "ema.eval_decay=0.999") == signature("ema.decays=[0.99,0.999]")
    assert signature("ema.decays=[0.99,0.999]") != base                     # the EMA bank is trained
    for change in ("model.adaln=B", "optim.lr=1e-3", "run.seed=1"):
        assert signature(change) != base, change


def test_a_grid_over_a_pixel_pathway_switch_plans_the_dit_row_once(tmp_path, capsys):
    path = write_sweep(tmp_path, "inert", rows=PIXEL_AND_DIT, executor="debug", seeds=[0],
                       grid={"model.adaln": ["A", "B", "C"]})
    runs = plan_sweep(load_sweep(path))
    dit = [r for r in runs if r.label == "DiT"]
    assert len(dit) == 3 and len({r.signature for r in dit}) == 1 and len({r.run_name for r in dit}) == 1
    assert [r.same_as for r in dit] == [None, dit[0].index, dit[0].index]
    assert len({r.signature for r in runs if r.label == "pixel"}) == 3
    assert main([str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.count("(the same run as DiT [adaln=A] · seed 0)") == 2
    assert "4 of 4 runs to submit; 6 planned, 2 of them the same run as another planned one (trained once)" in out
    assert not (tmp_path / "out").exists()


def test_training_grids_and_rows_that_only_change_evaluations_are_refused(tmp_path, capsys):
    path = write_sweep(tmp_path, "evalgrid", executor="debug", grid={"eval.sampler.cfg_scale": [1.0, 2.0]})
    assert main([str(path), "--dry-run"]) == 2
    assert error_line(capsys) == (f"error: {path}: grid.eval.sampler.cfg_scale: does not change the trained weights: "
                                  "every grid point would be the same run; evaluate each run at these values with "
                                  "`evaluate: {grid: ...}`")
    rows = [{"label": "cfg 1", "set": {"eval.sampler.cfg_scale": 1.0}},
            {"label": "cfg 2", "set": {"eval.sampler.cfg_scale": 2.0}}]
    path = write_sweep(tmp_path, "evalrows", rows=rows, executor="debug", seeds=[0])
    assert main([str(path), "--dry-run"]) == 2
    assert ("they differ only in evaluation settings (eval.sampler.cfg_scale), which do not change the trained "
            "weights; evaluate the run under each with `evaluate:`") in error_line(capsys)


# ---- protocols ------------------------------------------------------------------------------------

def test_a_protocol_signs_what_acts_and_reads_back_from_its_params():
    cfg = resolve(["+experiment=tiny_mnist"]).cfg
    own = EvalProtocol.of(cfg)
    assert own.name == "offline500-ab2x20-cfg3-ema0.99-seedrun" and own["eval.sampler.cfg_scale"] == 3.0
    assert own.with_changes({"eval.sampler.cfg_scale": 3}) == own                          # 3 is 3.0
    assert own.with_changes({"eval.reference": "/x.npz", "eval.inception": "/y.pt"}).signature == own.signature
    unguided = own.with_changes({"eval.sampler.cfg_scale": 1.0})
    assert unguided.with_changes({"eval.sampler.cfg_interval": [0.1, 1.0]}).signature == unguided.signature
    assert own.with_changes({"eval.sampler.cfg_interval": [0.1, 1.0]}).signature != own.signature
    assert own.with_changes({"eval.seed": 0}).signature != own.signature
    assert EvalProtocol.from_params(own.params()) == own
    assert EvalProtocol.from_params(own.params(), version=0).signature != own.signature    # before protocols


# ---- a finished sweep, evaluated many times ---------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny sweep (2 rows x 2 seeds, every run keeping the EMAs 0.99 and 0.999), trained once for the
    tests below, which add `evaluate:` sections to copies of its file (same folder, same store)."""
    folder = tmp_path_factory.mktemp("protocols")
    path = write_sweep(folder, "bank", rows=PIXEL_AND_DIT, executor="debug", overrides=BANK)
    assert main([str(path)]) == 0
    return path


def with_evaluate(path, evaluate: dict, name: str | None = None):
    """The sweep file with an `evaluate:` section (the same sweep: its store and runs), or a copy under `name`."""
    sweep = yaml.safe_load(path.read_text())
    sweep["evaluate"] = evaluate
    target = path if name is None else path.with_name(f"{name}.yaml")
    target.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return target


def evaluations_of(path) -> list:
    spec = load_sweep(path)
    client = MlflowClient(store_uri(spec))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    return client.search_runs([experiment.experiment_id], "tags.sweep_role = 'evaluation'")


def digest(file) -> str:
    return hashlib.sha256(file.read_bytes()).hexdigest()


def test_finished_runs_evaluated_at_3_guidance_scales_x_2_emas_without_retraining(trained, monkeypatch, capsys):
    from harness import trainer
    spec = load_sweep(trained)
    checkpoints = sorted(spec.folder.glob("*/checkpoints/last.pt"))
    before = {c: (digest(c), c.stat().st_mtime_ns) for c in checkpoints}
    started = []
    real_init = trainer.Trainer.__init__
    monkeypatch.setattr(trainer.Trainer, "__init__", lambda self, *a, **k: started.append(1) or real_init(self, *a,
                                                                                                          **k))
    path = with_evaluate(trained, {"set": OFFLINE, "grid": {"eval.sampler.cfg_scale": [1.0, 2.0, 3.0],
                                                            "ema.eval_decay": [0.99, 0.999]}})
    capsys.readouterr()
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 of 4 runs to submit (4 done)" in out and "queued 24 grid evaluations" in out
    assert started == []                                                       # no trainer started
    assert {c: (digest(c), c.stat().st_mtime_ns) for c in checkpoints} == before   # the checkpoints untouched
    runs = evaluations_of(path)
    assert len(runs) == 24
    for run in runs:                                 # a child of its training run, named and described by its protocol
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == tags["training_run_id"] and run.info.run_name == tags["eval_protocol_name"]
        assert EvalProtocol.from_params(params).signature == tags["eval_protocol"]
        assert {"fd", "class_acc"} <= set(run.data.metrics) and tags["checkpoint_step"] == "30"
    per_run = {}
    for run in runs:
        per_run.setdefault(run.data.tags["training_run_id"], set()).add(
            (float(run.data.params["eval.sampler.cfg_scale"]), float(run.data.params["ema.eval_decay"])))
    assert list(per_run.values()) == [{(c, e) for c in (1.0, 2.0, 3.0) for e in (0.99, 0.999)}] * 4
    # the EMA was the one asked for: its samples differ from the other EMA's at the same guidance
    fd = {(r.data.tags["training_run_id"], r.data.params["eval.sampler.cfg_scale"], r.data.params["ema.eval_decay"]):
          r.data.metrics["fd"] for r in runs}
    assert any(fd[(run, "2.0", "0.99")] != fd[(run, "2.0", "0.999")] for run in per_run)

    # the same evaluate: submitted again computes nothing
    capsys.readouterr()
    assert main([str(path)]) == 0
    assert "evaluate: nothing to compute (24 evaluations there)" in capsys.readouterr().out
    assert len(evaluations_of(path)) == 24 and started == []

    # two protocols at the same N are both readable, from MLflow (above) and from `table`
    for scale in ("cfg1-ema0.999", "cfg3-ema0.999"):
        assert main(["table", str(path), "--protocol", scale, "--metric", "fd", "--format", "csv"]) == 0
        table = capsys.readouterr().out
        assert f"offline20-ab2x2-{scale}-seedrun" in table
    from analysis.runs import load_sweep_runs
    from analysis.table import build_table
    one = build_table(load_sweep_runs(Sweep.open(path), protocol="cfg1-ema0.999"), "fd").frame.set_index("label")
    three = build_table(load_sweep_runs(Sweep.open(path), protocol="cfg3-ema0.999"), "fd").frame.set_index("label")
    expected = {scale: sum(fd[(r, scale, "0.999")] for r in per_run if (r, scale, "0.999") in fd) for scale in
                ("1.0", "3.0")}
    assert one["fd mean"].sum() * 2 == pytest.approx(expected["1.0"])          # 2 rows x 2 seeds
    assert three["fd mean"].sum() * 2 == pytest.approx(expected["3.0"])
    assert main(["table", str(path), "--protocol", "cfg2", "--metric", "fd"]) == 2
    assert "--protocol='cfg2': matches 2 protocols" in error_line(capsys)


def test_the_selection_picks_the_proxys_argmin_and_confirms_with_another_seed(trained, capsys):
    select = {"metric": "fd", "per": "row", "proxy": {"eval.num_samples": 20, "eval.seed": 1},
              "confirm": {"eval.num_samples": 40, "eval.seed": 2}}
    path = with_evaluate(trained, {"set": OFFLINE, "grid": {"eval.sampler.cfg_scale": [1.0, 4.0],
                                                            "ema.eval_decay": [0.99, 0.999]}, "select": select})
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    client = MlflowClient(store_uri(spec))
    experiment = client.get_experiment_by_name(spec.experiment_name).experiment_id
    selections = client.search_runs([experiment], f"tags.sweep_role = '{SELECTION_ROLE}'")
    assert sorted(r.data.tags["selection_label"] for r in selections) == ["DiT", "pixel"]
    runs = evaluations_of(path)
    for selection in selections:
        label = selection.data.tags["selection_label"]
        members = {s.mlflow_run_id for s in Sweep.open(path).states() if s.run.label == label}
        proxy = [r for r in runs if r.data.tags["training_run_id"] in members and r.data.tags["eval_stage"] == "proxy"]
        means = {}
        for r in proxy:
            point = (float(r.data.params["eval.sampler.cfg_scale"]), float(r.data.params["ema.eval_decay"]))
            means.setdefault(point, []).append(r.data.metrics["fd"])
            assert r.data.params["eval.seed"] == "1" and r.data.params["eval.num_samples"] == "20"
        assert len(means) == 4 and all(len(v) == 2 for v in means.values())
        order = [(c, e) for c in (1.0, 4.0) for e in (0.99, 0.999)]          # the grid's order breaks ties
        argmin = min(order, key=lambda p: sum(means[p]) / 2)
        assert len({sum(v) for v in means.values()}) > 1                     # guidance or EMA changed something
        chosen = json.loads(selection.data.tags["selected_point"])
        assert (chosen["eval.sampler.cfg_scale"], chosen["ema.eval_decay"]) == argmin
        confirmed = [r for r in runs if r.data.tags["training_run_id"] in members
                     and r.data.tags["eval_stage"] == "confirm"]
        assert len(confirmed) == 2
        for r in confirmed:                          # the chosen point, at the full count, with the other seed
            assert (float(r.data.params["eval.sampler.cfg_scale"]), float(r.data.params["ema.eval_decay"])) == argmin
            assert r.data.params["eval.seed"] == "2" and r.data.params["eval.num_samples"] == "40"
            assert r.data.tags["selection_signature"] == selection.data.tags["selection_signature"]
    capsys.readouterr()
    assert main(["table", str(path), "--metric", "fd", "--wide"]) == 0    # default: the selected, confirmed numbers
    table = capsys.readouterr().out
    assert "each row at the protocol its selection chose" in table and "then confirmed with eval.num_samples=40, " \
        "eval.seed=2" in table and "(n=2)" in table
    assert main([str(path)]) == 0                                      # again: nothing computed, nothing selected
    assert "evaluate: nothing to compute" in capsys.readouterr().out
    assert len(client.search_runs([experiment], f"tags.sweep_role = '{SELECTION_ROLE}'")) == 2

    # the report: the metric against guidance per row, each row's selection with every point's proxy figure
    from analysis.plots import build_figures
    from analysis.report import evaluation_markdown
    from analysis.runs import load_sweep_runs
    runs = load_sweep_runs(Sweep.open(path), protocol="training")
    figure = build_figures(runs, "fd")["fd_vs_guidance"]
    drawn = {artist.get_gid() for ax in figure.axes for artist in ax.get_children() if artist.get_gid()}
    assert drawn == {"DiT", "pixel"}
    text = evaluation_markdown(runs, "fd")
    assert "### Selection" in text and text.count("**") >= 4 and "### The confirmed numbers" in text


@pytest.mark.parametrize("evaluate, expected", [
    ({"grid": {"eval.sampler.cfg_scael": [1.0]}},
     "evaluate.grid.eval.sampler.cfg_scael: not an evaluation protocol key (did you mean eval.sampler.cfg_scale?)"),
    ({"grid": {}}, "evaluate.grid={}: an empty grid: expected protocol keys with lists of values, e.g. "
                   "{eval.sampler.cfg_scale: [1.0, 2.0]}"),
    ({"grid": {"eval.sampler.cfg_scale": []}},
     "evaluate.grid.eval.sampler.cfg_scale=[]: expected a non-empty list of values"),
    ({"grid": {"ema.eval_decay": [0.99, 0.995]}, "set": OFFLINE},
     "evaluate.grid.ema.eval_decay=0.995: not an EMA the run keeps: ema.decays=[0.99, 0.999] (the checkpoint holds "
     "those; add the decay to ema.decays and train again to evaluate it) (rows[0] ('DiT'))"),
    ({"set": {"model.adaln": "B"}}, "evaluate.set.model.adaln: changes the trained weights, not an evaluation: set it "
                                    "in a row or the grid"),
    ({"gird": {"eval.seed": [1]}}, "evaluate.gird: unknown key (did you mean grid?)"),
])
def test_bad_evaluate_input_is_refused_in_one_line_before_anything_runs(tmp_path, capsys, evaluate, expected):
    path = write_sweep(tmp_path, "bad", rows=PIXEL_AND_DIT, executor="debug", overrides=BANK, evaluate=evaluate)
    assert main([str(path)]) == 2
    assert error_line(capsys) == f"error: {path}: {expected}"
    assert not (tmp_path / "out").exists()


@pytest.mark.slow          # 2-4 min: sbatch round trips on the local cluster
@pytest.mark.skipif(SLURM_SKIP is not None, reason=str(SLURM_SKIP))
def test_train_grid_select_confirm_run_unattended_as_dependent_slurm_jobs(tmp_path):
    """One submission to the real local SLURM (scripts/local_slurm.sh) queues training, the proxy grid, then the
    selection and confirmation, each stage waiting on the one before it (SLURM dependencies): nothing attended."""
    select = {"metric": "fd", "per": "row", "proxy": {"eval.num_samples": 20, "eval.seed": 1},
              "confirm": {"eval.num_samples": 40, "eval.seed": 2}}
    path = write_sweep(tmp_path, "queued", rows=PIXEL_AND_DIT[:1], executor="slurm", seeds=[0],
                       evaluate={"set": OFFLINE, "grid": {"eval.sampler.cfg_scale": [1.0, 4.0]}, "select": select})
    assert main([str(path)]) == 0                                     # returns once queued

    def stage(name):
        return [r for r in evaluations_of(path) if r.data.tags["eval_stage"] == name and r.info.status == "FINISHED"]
    wait_until(lambda: stage("confirm"), timeout=600, every=5, what="the confirmation")
    (state,) = Sweep.open(path).states()
    training = MlflowClient(store_uri(load_sweep(path))).get_run(state.mlflow_run_id)
    proxy, (confirm,) = stage("proxy"), stage("confirm")
    assert len(proxy) == 2 and training.info.status == "FINISHED"
    assert min(r.info.start_time for r in proxy) >= training.info.end_time       # after the training job
    assert confirm.info.start_time >= max(r.info.end_time for r in proxy)        # after the grid
    assert confirm.data.params["eval.seed"] == "2"


# ---- the evaluation during training is a protocol evaluation ------------------------------------------

def test_the_evaluation_at_the_end_of_training_is_the_protocols_evaluation_of_the_checkpoint(tmp_path):
    """Sampling the run's own protocol from its final checkpoint (as an evaluation job does, in one shard) gives
    the numbers the training loop logged: the training run counts as that evaluation."""
    from harness.sweep.evaluation import ShardJob, checkpoint_config, plan_shards, score
    path = write_sweep(tmp_path, "own", rows=PIXEL_AND_DIT[1:], executor="debug", seeds=[0],
                       overrides={**BANK, **OFFLINE, "eval.batch_size": 8})
    assert main([str(path)]) == 0
    sweep = Sweep.open(path)
    (planned,), (state,) = sweep.plan_fresh(), sweep.states()          # (a cached plan holds no configs)
    run = state.mlflow_run
    protocol = EvalProtocol.of(planned.cfg)
    assert run.data.tags["eval_protocol"] == protocol.signature
    checkpoint = run.data.tags["checkpoint"]
    shards = plan_shards(protocol, tmp_path / "again", 2)              # 20 samples: batches of 8, 8, 4
    assert [(s.start, s.count) for s in shards] == [(0, 8), (8, 12)]
    ShardJob()(checkpoint, protocol.values_json, shards)
    cfg, _ = checkpoint_config(checkpoint)
    values = score(cfg, protocol, shards, tmp_path / "again")
    assert values["fd"] == pytest.approx(run.data.metrics["fd"], rel=1e-6)
    assert values["class_acc"] == run.data.metrics["class_acc"]


# ---- stores signed before version 3 -----------------------------------------------------------------

def test_a_v2_store_is_migrated_and_its_runs_reused_not_retrained(tmp_path, monkeypatch, capsys):
    from harness import configure, trainer
    path = write_sweep(tmp_path, "old", rows=PIXEL_AND_DIT, executor="debug", seeds=[0],
                       overrides={**TINY, **OFFLINE})
    # what the harness of signature version 2 left behind: runs (and run folders) signed by the v2 scheme, whose
    # in-training evaluations carry no protocol
    with monkeypatch.context() as old:
        old.setattr(configure, "SIGNATURE_VERSION", 2)
        old.setattr(trainer, "SIGNATURE_VERSION", 2)
        assert main([str(path)]) == 0
    spec = load_sweep(path)
    client = MlflowClient(store_uri(spec))
    experiment = client.get_experiment_by_name(spec.experiment_name).experiment_id
    runs = client.search_runs([experiment], "tags.signature_version = '2'")
    assert len(runs) == 2
    for run in runs:
        for tag in ("eval_protocol", "eval_protocol_name", "eval_protocol_version"):
            client.delete_tag(run.info.run_id, tag)
    v2 = {run.data.tags["label"]: run.data.tags["signature"] for run in runs}
    planned = {r.label: r for r in plan_sweep(spec)}
    assert all(planned[label].signature != v2[label] for label in v2)
    capsys.readouterr()

    assert main([str(path)]) == 2                                    # not silently retrained: refused until migrated
    assert (f"error: {path}: store: 2 runs of old were signed under signature version 2 (this harness signs version "
            f"3): they would be trained again; run `python run_sweep.py migrate {path}` first") in error_line(capsys)
    assert main(["table", str(path), "--metric", "fd"]) == 0          # still readable as it is
    capsys.readouterr()

    assert main(["migrate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 runs re-signed (signature version 3)" in out and "2 run folders renamed" in out
    started = []
    real_init = trainer.Trainer.__init__
    monkeypatch.setattr(trainer.Trainer, "__init__", lambda self, *a, **k: started.append(1) or real_init(self, *a,
                                                                                                          **k))
    assert main([str(path)]) == 0
    assert "0 of 2 runs to submit (2 done)" in capsys.readouterr().out and started == []
    for run in client.search_runs([experiment], "tags.label != ''"):
        tags = run.data.tags
        label = tags["label"]
        assert tags["signature"] == planned[label].signature and tags["signature_previous"] == v2[label]
        assert tags["signature_version"] == "3" and tags["eval_protocol_version"] == "0"
        assert tags["checkpoint"].startswith(str(spec.folder / planned[label].run_name))
    assert main(["table", str(path), "--metric", "fd", "--wide"]) == 0
    table = capsys.readouterr().out
    assert table.count("(n=1)") == 4 and "offline20-ab2x2-cfg1-ema0.99-seedrun-v0" in table
    assert "logged before protocols" in table
