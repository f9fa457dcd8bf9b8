"""A sweep's tracking server: on a real PostgreSQL (scripts/local_postgres.sh; skipped saying why without one), and
beyond the loopback only with the sweep's credentials (harness/sweep/auth.py), which never leave the files and
processes that need them."""
import base64
import json
import stat
import urllib.error
import urllib.request

import pytest
from conftest import ON_POSTGRES, SLOW, STORES, children, states, wait_until, write_sweep
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from commands.cli import main
from harness.sweep.auth import CREDENTIALS_FILE
from harness.sweep.server import running_server
from harness.sweep.spec import load_sweep


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def post(url: str, path: str, body: dict, user: tuple[str, str] | None = None) -> int:
    """The HTTP status of a REST call (MLflow's REST API, as any client on the network could send it)."""
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.parametrize("tracking", [pytest.param("postgresql", marks=ON_POSTGRES)], indirect=True)
def test_mlflow_server_serves_the_sweeps_postgresql_store_and_refuses_another(tracking, sweep_dir, capsys):
    path = write_sweep(sweep_dir, name="pgserver", seeds=[0], tracking=tracking)
    assert main(["mlflow-server", str(path), "--backend-uri", tracking["uri"]]) == 0
    assert f"store {tracking['uri']}" in capsys.readouterr().out
    spec = load_sweep(path)
    url = running_server(spec)
    assert json.loads((spec.folder / "server.json").read_text())["backend"] == tracking["uri"]
    served = MlflowClient(url).get_experiment_by_name(spec.experiment_name)   # the experiment, through the server
    direct = MlflowClient(tracking["uri"]).get_experiment_by_name(spec.experiment_name)
    assert served.experiment_id == direct.experiment_id and served.tags == direct.tags
    other = tracking["uri"].rsplit("/", 1)[0] + "/elsewhere"
    assert main(["mlflow-server", str(path), "--backend-uri", other]) == 2
    assert "--backend-uri: not the sweep's store" in error_line(capsys)
    assert main([str(path), "--wait"]) == 0                     # the jobs log through that server
    assert {s.state for s in states(path).values()} == {"done"}
    assert main(["mlflow-server", str(path), "--stop"]) == 0


def test_a_password_in_the_tracking_uri_is_refused_without_repeating_it(sweep_dir, capsys):
    path = write_sweep(sweep_dir, tracking={"uri": "postgresql://ditlab:hunter2-secret@db.cluster/ditlab"})
    assert main([str(path), "--dry-run"]) == 2
    err = error_line(capsys)
    assert "tracking.uri: holds a password" in err and "~/.pgpass" in err and "hunter2" not in err


@pytest.mark.parametrize("tracking", STORES, indirect=True)
def test_a_server_beyond_the_loopback_refuses_unauthenticated_writes_while_the_jobs_log(tracking, sweep_dir,
                                                                                       monkeypatch):
    for variable in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(variable, raising=False)
    path = write_sweep(sweep_dir, name="auth", overrides={**SLOW, "train.steps": 4000}, seeds=[0],
                       rows=[{"label": "pixel-wise", "set": {"model.adaln": "C"}}],
                       tracking={**tracking, "host": "0.0.0.0"})
    assert main([str(path)]) == 0
    spec = load_sweep(path)
    credentials_file = spec.folder / CREDENTIALS_FILE
    assert stat.S_IMODE(credentials_file.stat().st_mode) == 0o600          # only its owner reads it
    credentials = json.loads(credentials_file.read_text())
    user = (credentials["username"], credentials["password"])
    url = json.loads((spec.folder / "server.json").read_text())["url"]      # by this machine's name, as nodes see it
    experiment = MlflowClient(tracking.get("uri") or f"sqlite:///{spec.folder / 'mlflow.db'}") \
        .get_experiment_by_name(spec.experiment_name).experiment_id
    wait_until(lambda: states(path)[("pixel-wise", 0)].step, what="the job to log its first steps")
    logged = states(path)[("pixel-wise", 0)].step

    create = {"experiment_id": experiment, "run_name": "intruder"}
    assert post(url, "/api/2.0/mlflow/runs/create", create) == 401                     # no credentials
    assert post(url, "/api/2.0/mlflow/runs/create", create, (user[0], "guess")) == 401  # a wrong password
    assert post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment]}) == 401   # nor reads
    with pytest.raises(MlflowException, match="401"):
        MlflowClient(url).search_runs([experiment])
    assert post(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment]}, user) == 200
    wait_until(lambda: states(path)[("pixel-wise", 0)].step > logged, what="the job to log on")   # with its own
    assert main(["cancel", str(path)]) == 0
    wait_until(lambda: states(path)[("pixel-wise", 0)].state == "failed", what="the cancelled run to end")
    client, _, kids = children(path)
    assert [kid.info.run_name for kid in kids] == ["pixel-wise · seed 0"]   # the refused calls created nothing
    assert [r.info.run_name for r in client.search_runs([experiment], "attributes.run_name = 'intruder'")] == []
    (kid,) = kids
    # the password is in the credentials file and nowhere else: no log, manifest, job file, param or tag
    for file in spec.folder.rglob("*"):
        if file.is_file() and file != credentials_file:
            assert credentials["password"].encode() not in file.read_bytes(), file
    assert credentials["password"] not in json.dumps({**kid.data.params, **kid.data.tags})
