"""Who may write to a sweep's tracking server.

A server that listens beyond the loopback (`tracking: {host: 0.0.0.0}`, so that a cluster's compute nodes reach
it) is reachable by everyone on that network: it runs MLflow's own authentication (`mlflow server --app-name
basic-auth`, MLflow's "Username and Password Authentication"), with one account made per sweep:

- the credentials are made once (random, `secrets`) and kept in `<sweep folder>/tracking-credentials.json`, a file
  only its owner may read (created 0600; a file others may read is refused);
- MLflow's user store is `<sweep folder>/tracking-auth.db` (0600); its only user is the sweep's, an admin;
  everyone else, unauthenticated or with a wrong password, is refused (HTTP 401), reads included;
- jobs get them through their environment (`MLFLOW_TRACKING_USERNAME`/`MLFLOW_TRACKING_PASSWORD`, which MLflow's
  client sends): exported for the submission only, inherited by local jobs and by SLURM jobs (sbatch exports
  the submitting environment), never in a command line, a job's pickled call, a config, a param or a log.

A server on the loopback (the default, 127.0.0.1: jobs on this machine) stays open, as MLflow's own default.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit.errors import ConfigError

CREDENTIALS_FILE = "tracking-credentials.json"
AUTH_DB_FILE = "tracking-auth.db"
AUTH_CONFIG_FILE = "tracking-auth.ini"
# MLflow checks a password with a slow hash on every request; the sweep's one account never changes its password,
# so a successful check is cached (MLflow's `auth_cache_ttl_seconds`) instead of costing CPU on every metric logged.
AUTH_CACHE_S = 600


def loopback(host: str) -> bool:
    """`host` is only reachable from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str
    secret_key: str                    # MLflow's Flask secret (CSRF of its sign-up page), static per server

    def job_environment(self) -> dict[str, str]:
        """What MLflow's client reads to authenticate every request of a job."""
        return {"MLFLOW_TRACKING_USERNAME": self.username, "MLFLOW_TRACKING_PASSWORD": self.password}

    def server_environment(self, folder: Path) -> dict[str, str]:
        """What `mlflow server --app-name basic-auth` reads: its config file (the user store under the sweep
        folder), the admin account it creates on its first start, its secret key."""
        config = folder / AUTH_CONFIG_FILE
        config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                          f"database_uri = sqlite:///{(folder / AUTH_DB_FILE).resolve()}\n"
                          f"admin_username = {self.username}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                          f"auth_cache_ttl_seconds = {AUTH_CACHE_S}\n")
        _private_file(folder / AUTH_DB_FILE)
        return {"MLFLOW_AUTH_CONFIG_PATH": str(config), "MLFLOW_AUTH_ADMIN_USERNAME": self.username,
                "MLFLOW_AUTH_ADMIN_PASSWORD": self.password, "MLFLOW_FLASK_SERVER_SECRET_KEY": self.secret_key}

    def __repr__(self) -> str:                # never printed, even in a traceback's locals
        return f"Credentials(username={self.username!r}, password=***)"


def _private_file(path: Path) -> None:
    """An empty file only its owner may read or write (kept as it is when it exists)."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.chmod(path, 0o600)


def sweep_credentials(folder: Path, name: str, create: bool = True) -> Credentials | None:
    """The sweep's credentials: read from its file, or (`create`) made now. A file that others may read is
    refused; a new account replaces the user store of an older one (its password is gone)."""
    path = folder / CREDENTIALS_FILE
    if path.exists():
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError("tracking.host", reason=f"{path} may be read by others (mode {stat.filemode(mode)}); "
                              f"run `chmod 600 {path}`, or delete it and the sweep's MLflow server to make new ones")
        return Credentials(**json.loads(path.read_text()))
    if not create:
        return None
    credentials = Credentials(username=f"ditlab-{name}"[:64], password=secrets.token_urlsafe(24),
                              secret_key=secrets.token_urlsafe(32))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / AUTH_DB_FILE).unlink(missing_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(asdict(credentials), handle)
    return credentials


@contextlib.contextmanager
def exported(environment: dict[str, str]):
    """`environment` in this process's environment while the block submits jobs (they inherit it), restored after."""
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
