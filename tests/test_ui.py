"""The sweep's MLflow UI in a real browser: a tiny finished sweep, `analysis.ui.start_ui`, and Debian's
headless Chromium rendering the runs table (its DOM is read back and a screenshot kept). Skipped, saying
why, where /usr/bin/chromium is missing: `bash scripts/install_browser.sh` (as root) installs it.

The screenshot lies under the test's tmp_path; with DITLAB_SCREENSHOT_DIR set it is copied there too."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.ui import start_ui, stop_ui
from harness.sweep.cli import main
from harness.sweep.server import pid_alive, store_uri
from harness.sweep.spec import load_sweep

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: `bash scripts/install_browser.sh` (as root) installs Debian's chromium")

# Flags for this machine's closed network: without the background-networking ones Chromium's own
# connections are refused, many at a time. Each start gets a fresh profile.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars",
                  "--window-size=1400,900"]
TINY = {"train.steps": 4, "train.global_batch": 16, "train.log_every": 2, "model.depth": 2,
        "model.hidden_size": 32, "model.num_heads": 2, "eval.metric": "none", "checkpoint.every_steps": 2}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A 2 rows x 1 seed sweep, run to the end in this process."""
    folder = tmp_path_factory.mktemp("ui_sweep")
    sweep = {"name": "ui_sweep", "experiment": "tiny_digits", "output": str(folder / "out"), "overrides": TINY,
             "rows": [{"label": "patch-wise", "set": {"model.adaln": "B"}},
                      {"label": "pixel-wise", "set": {"model.adaln": "C"}}],
             "seeds": [0], "executor": {"kind": "debug"}}
    path = folder / "ui_sweep.yaml"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    assert main([str(path)]) == 0
    return load_sweep(path)


def run_names(spec) -> list[str]:
    """The planned run names (manifest.json), checked against the finished runs in MLflow."""
    planned = sorted(json.loads((spec.folder / "manifest.json").read_text())["runs"])
    client = MlflowClient(store_uri(spec))
    experiment = client.get_experiment_by_name(spec.experiment_name)
    finished = sorted(r.info.run_name for r in client.search_runs([experiment.experiment_id])
                      if "mlflow.parentRunId" in r.data.tags and r.info.status == "FINISHED")
    assert finished == planned and len(planned) == 2
    return planned


@pytest.fixture
def ui(finished_sweep):
    proc, url = start_ui(finished_sweep, timeout=60)
    yield url
    stop_ui(proc)
    assert not pid_alive(proc.pid)


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)           # Chromium's zygote, renderer and GPU processes too
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.fixture
def chromium(tmp_path):
    """Runs headless Chromium once per call (fresh profile, own process group); none outlives the test."""
    started: list[subprocess.Popen] = []

    def run(url: str, *flags: str, timeout: float = 45) -> str:
        profile = tmp_path / f"chromium-profile-{len(started)}"
        proc = subprocess.Popen([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *flags, url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        started.append(proc)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            pytest.fail(f"chromium {' '.join(flags)} did not finish within {timeout}s")
        finally:
            kill_group(proc)
        assert proc.returncode == 0, f"chromium exited with {proc.returncode}: {err.decode()[-2000:]}"
        return out.decode(errors="replace")

    yield run
    for proc in started:
        kill_group(proc)


def test_sweep_runs_are_listed_in_the_mlflow_ui(finished_sweep, ui, chromium, tmp_path):
    names = run_names(finished_sweep)
    assert ui.startswith("http://127.0.0.1:") and "/#/experiments/" in ui
    # The React app fetches the runs after loading: read the DOM once it has had time, again if it was slow.
    deadline = time.time() + 40
    while True:
        dom = chromium(ui, "--virtual-time-budget=10000", "--dump-dom")
        missing = [name for name in names if name not in dom]
        if not missing or time.time() > deadline:
            break
    assert not missing, f"run names {missing} not in the rendered page; it reads: {visible_text(dom)[:1500]}"
    assert "Run Name" in dom and "ui_sweep" in dom            # the runs table of the sweep's experiment
    assert "ui_sweep #1" in dom                                # the submission's parent run, flat beside them

    shot = tmp_path / "mlflow_ui_runs.png"
    chromium(ui, "--virtual-time-budget=10000", f"--screenshot={shot}")
    from PIL import Image
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, "the screenshot is blank"
    if os.environ.get("DITLAB_SCREENSHOT_DIR"):
        target = Path(os.environ["DITLAB_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)


def visible_text(dom: str) -> str:
    import re
    body = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", body).split())


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and text in Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry))
        except OSError:
            continue
    return found


def test_ui_command_serves_until_sigterm_and_leaves_no_process(finished_sweep):
    code = ("import sys; from analysis.ui import ui_command; from harness.sweep.spec import load_sweep; "
            "sys.exit(ui_command(load_sweep(sys.argv[1])))")
    proc = subprocess.Popen([sys.executable, "-c", code, str(finished_sweep.path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).parents[1],
                            start_new_session=True)
    servers: list[int] = []
    try:
        first = proc.stdout.readline()
        assert first.startswith("MLflow UI for sweep ui_sweep: http://127.0.0.1:"), first + proc.stdout.read()
        url = first.split(": ", 1)[1].strip()
        assert "Compare" in proc.stdout.readline()
        base = url.split("/#")[0]
        with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
            assert response.status == 200
        servers = [pid for pid in processes_mentioning(str(finished_sweep.folder / "mlflow.db")) if pid != proc.pid]
        assert servers
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        assert not [pid for pid in servers if pid_alive(pid)], "the UI server outlived ui_command"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{base}/health", timeout=2)
    finally:
        for pid in [proc.pid, *servers]:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
