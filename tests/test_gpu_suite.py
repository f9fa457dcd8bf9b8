"""The GPU suite's CPU mode (benchmarks/gpu_suite.py --cpu): every section at toy sizes, so the suite a GPU
machine runs cannot rot; and its table is what BENCHMARKS.md records and the dry run reads."""
import json
import shutil
import subprocess
import sys

from conftest import ROOT

from harness import estimates


def test_the_suite_runs_every_section_at_toy_sizes_and_records_what_the_dry_run_reads(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--cpu", "--out", str(tmp_path / "suite")],
                         cwd=ROOT, text=True, capture_output=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "suite" / "gpu_suite.json").read_text())
    rows = result["training"]
    assert [(r["model"], r["mode"]) for r in rows] == [(m, mode) for m in ("PixelDiT-XL/16", "JiT-B/16", "DiT-XL/2")
                                                       for mode in ("eager", "compiled")]
    for row in rows:
        assert row["images_per_s"] > 0 and row["model_tflops"] > 0 and "mfu" not in row       # no MFU on the CPU
        assert row["estimated_memory_gib"] > 0 and row["flops_model_per_image"] > 0
    pixeldit = rows[0]
    assert pixeldit["flops_repa_encoder_per_image"] > 0 and rows[2]["flops_repa_encoder_per_image"] == 0
    for row in rows[::2]:                                     # eager: the largest batch fits the toy budget of 1 GiB
        assert row["largest_batch"] >= row["batch"] and row["largest_batch"] == row["largest_batch_estimate"]
    assert result["official"] is None                         # no --pixeldit checkout in CI
    assert result["sampling"]["samples_per_s"] > 0 and result["inception"]["images_per_s"] > 0
    # the markdown table, recorded into a copy of BENCHMARKS.md, reads back as the dry run reads it
    benchmarks = tmp_path / "BENCHMARKS.md"
    shutil.copyfile(ROOT / "BENCHMARKS.md", benchmarks)
    before = benchmarks.read_text()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_suite import record
    record(benchmarks, (tmp_path / "suite" / "gpu_suite.md").read_text())
    recorded = estimates.measured_rows(benchmarks)
    assert [(r["preset"], r["device"], r["mode"], r["MFU"]) for r in recorded] == [
        (r["preset"], "cpu", r["mode"], "–") for r in rows]
    after = benchmarks.read_text()
    assert after.split(estimates.MEASURED_BEGIN)[0] == before.split(estimates.MEASURED_BEGIN)[0]
    assert after.split(estimates.MEASURED_END)[1] == before.split(estimates.MEASURED_END)[1]
