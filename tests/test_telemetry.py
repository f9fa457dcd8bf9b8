"""Efficiency telemetry (harness/telemetry.py): what every run logs to MLflow, MFU against the dense peaks of
harness/accelerators.py, the model's FLOPs counted the stated way, MLflow's system metrics."""
import time

import pytest
from conftest import TINY_OFFLINE_EVAL, tiny_overrides
from mlflow.tracking import MlflowClient

from harness.accelerators import ACCELERATORS, by_key, identify
from harness.configure import resolve
from harness.estimates import TrainingFlops, training_flops
from harness.parity import case_config
from harness.telemetry import Efficiency, system_metrics
from harness.trainer import train
from models.complexity import count_flops

EFFICIENCY = ("images_per_s", "step_time_s", "data_wait_s", "compute_s", "peak_memory_gb", "model_tflops")


def test_a_cpu_run_logs_its_step_split_memory_and_throughput_and_no_mfu(tmp_path, capsys):
    # steps of tens of milliseconds, an evaluation mid-run and checkpoints: their time must stay out of the windows
    overrides = tiny_overrides(tmp_path, steps=12, **{**TINY_OFFLINE_EVAL, "eval.at_steps": "[6]",
                                                      "train.log_every": 3, "train.global_batch": 32,
                                                      "model.hidden_size": 64, "model.num_heads": 4})
    result = train(resolve(overrides))
    client = MlflowClient(f"sqlite:///{result.run_dir / 'mlflow.db'}")
    run = client.get_run(result.run_id)
    assert set(EFFICIENCY) <= set(run.data.metrics) and "mfu" not in run.data.metrics
    history = {key: {m.step: m.value for m in client.get_metric_history(result.run_id, key)} for key in EFFICIENCY}
    assert sorted(history["step_time_s"]) == [3, 6, 9, 12]
    for step, step_time in history["step_time_s"].items():
        wait, compute = history["data_wait_s"][step], history["compute_s"][step]
        assert wait >= 0 and compute > 0
        assert abs(wait + compute - step_time) <= 0.1 * step_time, (step, wait, compute, step_time)
        assert history["images_per_s"][step] * step_time == pytest.approx(32, rel=1e-6)
        assert 0.05 < history["peak_memory_gb"][step] < 64
        flops = int(run.data.tags["flops_model_per_image"])
        assert history["model_tflops"][step] == pytest.approx(flops * history["images_per_s"][step] / 1e12)
    assert run.data.tags["device_name"] == "cpu"
    assert run.data.tags["mfu_basis"].startswith("MFU: not computed (the CPU has no peak FLOP/s")
    assert capsys.readouterr().out.count("MFU: not computed") == 1           # said once


def test_mfu_divides_by_the_dense_bf16_peak_not_the_sparsity_figure():
    flops = TrainingFlops(model_per_image=933_600_000_000, encoder_per_image=46_000_000_000, ema_per_step=0)
    expected = {"NVIDIA H100 80GB HBM3": 989.4, "NVIDIA H100 PCIe": 756.5, "NVIDIA H100 NVL": 835.5,
                "NVIDIA H200": 989.4, "NVIDIA A100-SXM4-80GB": 312.0, "NVIDIA A100-PCIE-40GB": 312.0,
                "NVIDIA GH200 480GB": 989.4}
    for name, peak in expected.items():
        efficiency = Efficiency(flops, name, "bf16")
        metrics = efficiency.metrics(images_per_s=3200.0, world_size=8)       # 400 img/s per GPU
        assert metrics["mfu"] == pytest.approx(933.6e9 * 400 / (peak * 1e12)), name
        assert f"{peak:g} TFLOP/s" in efficiency.describe() and "REPA encoder 46 GFLOPs/image" in efficiency.describe()
    assert identify("NVIDIA H100 80GB HBM3").bf16_tflops * 2 == pytest.approx(1978.8)    # the datasheet's '*'
    assert Efficiency(flops, "NVIDIA H100 80GB HBM3", "fp32").peak_tflops == 67.0        # fp32 without TF32
    unknown = Efficiency(flops, "NVIDIA L4", "bf16")
    assert "mfu" not in unknown.metrics(100.0, 1) and "NVIDIA L4 is not in" in unknown.describe()
    assert identify("NVIDIA A100-SXM4-40GB").key == "a100_40gb" and by_key("h200").memory_gb == 141
    assert all(a.source for a in ACCELERATORS)


def test_training_flops_are_the_forward_times_three_with_the_projector_and_the_encoder_apart():
    cfg = case_config(["+experiment=pixeldit_xl_paper", "repa.encoder_weights=random"], "test")
    flops = training_flops(cfg)
    sampling = count_flops(cfg.model)                      # 311.2 GFLOPs, the published figure: no projector
    assert sampling / 1e9 == pytest.approx(311.2, abs=0.05)
    projector = 2 * 256 * (1152 * 1152 + 1152 * 1152 + 1152 * 768)    # MLP D -> D -> D -> 768 on 256 tokens
    assert flops.model_per_image - 3 * sampling == pytest.approx(3 * projector, rel=0.01)
    # DINOv2 ViT-B/14 at 224 px (257 tokens, 12 blocks of width 768), forward only, counted by hand
    tokens, width = 257, 768
    block = tokens * (4 * width * width + 2 * width * 4 * width) + 2 * tokens * tokens * width
    encoder = 2 * (12 * block + 256 * 14 * 14 * 3 * width)
    assert flops.encoder_per_image == pytest.approx(encoder, rel=0.01)
    params = 797_383_203 + (1152 * 1152 + 1152) * 2 + 1152 * 768 + 768          # preset + REPA projector
    assert flops.ema_per_step == pytest.approx(3 * params, rel=1e-3)


def test_mlflow_system_metrics_reach_the_run(tmp_path, monkeypatch):
    import torch
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    cpu = torch.device("cpu")
    assert system_metrics(run_id, uri, cpu, local_rank=0, world_size=1, resumed=False) is None   # GPU runs only
    # the monitor a GPU run starts, forced on the CPU (no GPU here): its CPU and memory figures reach the run
    monitor = system_metrics(run_id, uri, cpu, local_rank=0, world_size=1, resumed=False, force=True)
    time.sleep(2.0)
    monitor.finish()
    logged = set(client.get_run(run_id).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= logged
    assert system_metrics(run_id, uri, cpu, local_rank=1, world_size=2, resumed=False, force=True) is None
