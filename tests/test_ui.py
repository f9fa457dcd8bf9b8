"""The sweep's MLflow UI in a real browser: a tiny finished sweep, `analysis.ui.start_ui`, and Debian's
headless Chromium driven over the DevTools protocol (on a pipe: `--remote-debugging-pipe`), which checks what
is on the first screen and keeps a screenshot. Skipped, saying why, where /usr/bin/chromium is missing:
`bash scripts/install_debian.sh browser` (as root) installs it.

The screenshot lies under the test's tmp_path (its path is printed: `pytest -rP` shows it); with
DITLAB_SCREENSHOT_DIR set it is copied there too."""
import base64
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import TINY, TINY_OFFLINE_EVAL, write_sweep
from mlflow.tracking import MlflowClient

from analysis.plots import row_colours
from analysis.report import write_report
from analysis.ui import start_ui, stop_ui
from commands.cli import main
from harness.sweep.processes import pid_alive
from harness.sweep.server import store_uri
from harness.sweep.sweep import Sweep

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason=f"{CHROMIUM} is missing: `bash scripts/install_debian.sh browser` (as root) installs Debian's chromium")

# Flags for this machine's closed network: without the background-networking ones Chromium's own
# connections are refused, many at a time. Each start gets a fresh profile (as a first visit does).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic", "--hide-scrollbars"]
SCREEN = (1400, 900)                  # the first screen: a laptop's browser window
DESCRIPTION = "Does pixel-wise AdaLN beat patch-wise AdaLN?"


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A 2 rows x 1 seed sweep with the offline metric, run to the end in this process."""
    folder = tmp_path_factory.mktemp("ui_sweep")
    path = write_sweep(folder, "ui_sweep", executor="debug", seeds=[0], description=DESCRIPTION,
                       notes="Two rows, one seed: a UI check.",
                       overrides={**TINY, **TINY_OFFLINE_EVAL, "eval.at_steps": [2],
                                  "eval.cache_dir": str(folder / "cache")})
    assert main([str(path)]) == 0
    return Sweep.open(path)


def run_names(spec) -> list[str]:
    """The planned runs' MLflow names (`LABEL · seed S`, from manifest.json), checked against the finished runs."""
    planned = sorted(f"{r['label']} · seed {r['seed']}"
                     for r in json.loads((spec.folder / "manifest.json").read_text())["runs"].values())
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


def _high_fd(fd: int) -> int:
    """The same pipe end at a descriptor above 10 (so the child's dup2 onto 3 and 4 clobbers none of them)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Page:
    """One page of a headless Chromium, driven over the DevTools protocol on a pipe: NUL-terminated JSON messages,
    written to the browser's fd 3 and read from its fd 4 (`--remote-debugging-pipe`)."""

    def __init__(self, profile: Path):
        to_browser, self.writer = map(_high_fd, os.pipe())
        self.reader, from_browser = map(_high_fd, os.pipe())

        def wire():                                # in the child: the protocol's descriptors
            os.dup2(to_browser, 3)
            os.dup2(from_browser, 4)

        self.proc = subprocess.Popen([str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                      "--remote-debugging-pipe", "about:blank"], pass_fds=(3, 4), preexec_fn=wire,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        os.close(to_browser)
        os.close(from_browser)
        self.buffer, self.next_id, self.session = b"", 0, None
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        width, height = SCREEN
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})

    def send(self, method: str, params: dict | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if self.session:
            message["sessionId"] = self.session
        os.write(self.writer, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    assert "error" not in reply, f"{method}: {reply['error']}"
                    return reply["result"]
            ready, _, _ = select.select([self.reader], [], [], max(0.0, deadline - time.time()))
            assert ready, f"chromium did not answer {method} within {timeout}s"
            chunk = os.read(self.reader, 1 << 20)
            assert chunk, f"chromium closed the protocol pipe during {method} (exit code {self.proc.poll()})"
            self.buffer += chunk

    def goto(self, url: str) -> None:
        self.send("Page.navigate", {"url": url})

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"]))
        return path

    def close(self) -> None:
        for fd in (self.writer, self.reader):
            os.close(fd)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # Chromium's zygote, renderer and GPU processes too
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def page(tmp_path):
    opened = Page(tmp_path / "chromium-profile")
    yield opened
    opened.close()


# Which of the given texts are on the first screen: a text node reading exactly that, laid out inside the
# viewport, and the element on top at its centre (nothing covers it).
ON_SCREEN_JS = """(texts => {
  if (!document.body) return texts;              // right after Page.navigate the new document has no body yet
  const found = {};
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, text = node.textContent.trim();
    if (!texts.includes(text) || found[text]) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    for (const r of range.getClientRects()) {
      if (r.width <= 0 || r.left < 0 || r.top < 0 || r.right > innerWidth || r.bottom > innerHeight) continue;
      const top = document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2);
      if (top && (top === node.parentElement || top.contains(node.parentElement) || node.parentElement.contains(top)))
        found[text] = true;
    }
  }
  return texts.filter(text => !found[text]);
})(%s)"""


def keep(shot: Path) -> Path:
    """Say where a screenshot is (`pytest -rP` shows it); copy it to $DITLAB_SCREENSHOT_DIR when set."""
    print(f"screenshot: {shot}")
    if os.environ.get("DITLAB_SCREENSHOT_DIR"):
        target = Path(os.environ["DITLAB_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, target / shot.name)
    return shot


def wait_for(page: Page, expression: str, timeout: float = 60):
    """The value of a JavaScript expression once it is truthy (the React app fetches after loading), else the last."""
    deadline = time.time() + timeout
    while not (value := page.evaluate(expression)) and time.time() < deadline:
        time.sleep(1)
    return value


def test_first_screen_shows_each_row_its_metric_and_switched_parameter(finished_sweep, ui, page, tmp_path):
    """The URL `ui` prints opens the sweep's view: its runs under their row labels (`LABEL · seed S`, grouped by
    row), the metric and the switched parameter as columns, the parent run and the sweep's description — all on
    the first screen of a fresh browser, without a click."""
    names = run_names(finished_sweep.spec)
    assert ui.startswith("http://127.0.0.1:") and "/#/experiments/" in ui and "viewStateShareKey=" in ui
    wanted = [*names, "Group: patch-wise", "Group: pixel-wise", "fd", "model.adaln", "ui_sweep #1", DESCRIPTION]
    page.goto(ui)
    deadline = time.time() + 60              # the React app fetches the runs after loading
    while (missing := page.evaluate(ON_SCREEN_JS % json.dumps(wanted))) and time.time() < deadline:
        time.sleep(1)
    shot = keep(page.screenshot(tmp_path / "mlflow_ui_first_screen.png"))
    assert not missing, f"not on the first screen: {missing}; see {shot}"
    assert "Additional runs" in page.evaluate("document.body.innerText")     # the parent runs' group, open
    from PIL import Image
    with Image.open(shot) as image:
        assert image.size == SCREEN
        assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50, "the screenshot is blank"


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
    code = ("import sys; from analysis.ui import serve_ui; from harness.sweep.sweep import Sweep; "
            "sys.exit(serve_ui(Sweep.open(sys.argv[1])))")
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
        assert not [pid for pid in servers if pid_alive(pid)], "the UI server outlived serve_ui"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{base}/health", timeout=2)
    finally:
        for pid in [proc.pid, *servers]:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()


def test_the_parent_run_links_the_report_and_shows_the_samples_and_runs_wear_their_row_colours(finished_sweep, page,
                                                                                                tmp_path):
    """After `report`, the parent run's page shows the links to the report, its table and plots, and every row's
    samples side by side (an image the browser loaded from the UI's server); the report's link opens MLflow's
    artifact view of it; every run carries its row's colour, the report's."""
    _, html = write_report(finished_sweep)
    proc, url = start_ui(finished_sweep, timeout=60)
    try:
        client, parent = finished_sweep.client, finished_sweep.parent_run_id
        experiment = client.get_run(parent).info.experiment_id
        colours = row_colours([row.label for row in finished_sweep.spec.rows])
        runs = [r for r in client.search_runs([experiment], "tags.sweep = 'ui_sweep'") if "label" in r.data.tags]
        assert len(runs) == 2 and all(r.data.tags["mlflow.runColor"] == colours[r.data.tags["label"]] for r in runs)
        base = url.split("/#/")[0]
        page.goto(f"{base}/#/experiments/{experiment}/runs/{parent}?workflowType=machine_learning")
        images = ("[...document.images].filter(i => i.src.includes('get-artifact') && i.src.includes('side_by_side')"
                  " && i.complete && i.naturalWidth > 0).length")
        loaded = wait_for(page, images)
        text = page.evaluate("document.body.innerText")
        keep(page.screenshot(tmp_path / "mlflow_ui_parent_run.png"))
        assert loaded == 1 and "The report:" in text and DESCRIPTION in text
        # the table at a glance, drawn as a table, its numbers rounded as the terminal's table rounds them (the
        # run list shows every digit logged)
        page.evaluate("[...document.querySelectorAll('button')].find(b => b.textContent === 'Show more')?.click()")
        header = page.evaluate("[...document.querySelectorAll('th')].map(th => th.textContent.trim())")
        assert "row" in header and "FD ↓" in header, header
        rows = page.evaluate("[...document.querySelectorAll('tr')].map(tr => [...tr.querySelectorAll('td')]"
                             ".map(td => td.textContent.trim()))")
        shown = [row[header.index("FD ↓")] for row in rows if len(row) == len(header)]
        assert len(shown) == 2 and all(re.fullmatch(r"[\d.]+†?", cell) and len(re.sub(r"\D", "", cell)) <= 4
                                       for cell in shown), shown
        keep(page.screenshot(tmp_path / "mlflow_ui_parent_run_description.png"))
        assert "Model registry" in text and "Evaluation runs" not in text          # the model-training navigation
        link = page.evaluate(f"[...document.links].find(a => a.textContent === {json.dumps(html.name)})?.href")
        assert link and link.endswith(f"/runs/{parent}/artifactPath/report/{html.name}?workflowType=machine_learning")
        page.goto(link)
        assert wait_for(page, "document.body.innerText.includes('table.md')"), "the artifact view lists no report"
        assert "Evaluation runs" not in page.evaluate("document.body.innerText")
    finally:
        stop_ui(proc)
