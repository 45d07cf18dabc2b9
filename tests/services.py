"""Airflow services for the end-to-end tests: started in a process group of their own, stopped by group."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def cli_json(output: str):
    """The JSON of an Airflow CLI command's output; the CLI may print warnings on stdout before it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("[", "{")))
    return json.loads("\n".join(lines[start:]))


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... from the process table."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def kill_tree(pid: int) -> list[int]:
    """SIGKILL ``pid`` and every process below it (a Celery worker: its pool, the task supervisors, the task
    processes), as a host or container crash would; returns the pids, once none is alive."""
    pids = [pid, *descendants(pid)]
    for each in pids:
        try:
            os.kill(each, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while any(_state(each) not in ("Z", "gone") for each in pids):
        assert time.monotonic() < deadline, f"processes {pids} outlived SIGKILL"
        time.sleep(0.1)
    return pids


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen, grace_s: float = 60) -> None:
    """SIGTERM to the whole group (to the main pid alone would orphan its children), then SIGKILL."""
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(proc.pid) and time.monotonic() < deadline:
        proc.poll()
        time.sleep(0.5)
    if group_alive(proc.pid):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while group_alive(proc.pid) and time.monotonic() < deadline:  # orphans being reaped by init
        time.sleep(0.2)


@contextmanager
def service_group(argv: list[str], log: Path, env: dict[str, str], ready: Callable[[], bool], timeout_s: float = 180):
    """Start ``argv`` in a new session, wait until ``ready()`` is true, stop the group on exit."""
    with open(log, "w") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + timeout_s
            while not ready():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"{argv} did not become ready:\n" + log.read_text()[-5000:])
                time.sleep(1)
            yield proc
        finally:
            stop_group(proc)


@contextmanager
def mlflow_server(
    store: Path, log: Path, *, artifacts: str | None = None, env: dict[str, str] | None = None, port: int | None = None
):
    """A real MLflow tracking server on loopback, its runs in SQLite at ``store``; ``artifacts``: where it puts the
    artifacts it is sent (an S3 URI with ``env``'s endpoint and credentials). Its URL once it answers."""
    from uniad.train.launch import find_free_port

    port = port or find_free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}"]
    argv += ["--artifacts-destination", artifacts] if artifacts else []
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]

    def ready() -> bool:
        try:
            return http("GET", f"{url}/health", timeout=2)[0] == 200
        except OSError:
            return False

    with service_group(argv, log, {**os.environ, **(env or {})}, ready):
        yield url


def http(method: str, url: str, *, token: str | None = None, body: dict | None = None, timeout: float = 30):
    """(status, parsed JSON or text); HTTP errors are returned, not raised. Redirects are not followed."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode() if body is not None else None, headers=headers, method=method
    )
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        status, raw, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        if 300 <= status < 400:
            return status, exc.headers.get("Location")
    return status, json.loads(raw) if "json" in kind else raw.decode(errors="replace")


def api_healthy(port: int, component: str | None = None) -> Callable[[], bool]:
    """Ready check: the api-server answers its health endpoint (and ``component`` reports healthy)."""

    def check() -> bool:
        try:
            status, health = http("GET", f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5)
        except OSError:
            return False
        if status != 200:
            return False
        return component is None or health.get(component, {}).get("status") == "healthy"

    return check


def admin_credentials(home: Path) -> tuple[str, str]:
    """The simple auth manager's generated admin user."""
    passwords = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())
    return next(iter(passwords.items()))


def user_token(port: int, username: str, password: str) -> str:
    """A REST token of an api-server's user (``POST /auth/token``, simple and FAB auth managers alike)."""
    status, answer = http(
        "POST", f"http://127.0.0.1:{port}/auth/token", body={"username": username, "password": password}
    )
    assert status in (200, 201), answer
    return answer["access_token"]


def api_token(home: Path, port: int) -> str:
    """The simple auth manager's admin token (the embedded default)."""
    return user_token(port, *admin_credentials(home))


@dataclass(frozen=True)
class CeleryStack:
    proc: subprocess.Popen
    port: int
    db_url: str
    admin: tuple[str, str]  # the FAB admin the script created from UNIAD_ADMIN_PASSWORD
    mlflow_url: str  # the stack's MLflow tracking server
    _tokens: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def token(self) -> str:
        """The admin's REST token, asked for once: FAB hashes the password on every login, which a test polling
        every 2 s on a loaded machine turns into the api-server's main work (a login once timed out)."""
        if "admin" not in self._tokens:
            self._tokens["admin"] = user_token(self.port, *self.admin)
        return self._tokens["admin"]


@contextmanager
def celery_stack(
    home: Path,
    *,
    redis_db: int,
    dags_folder: Path | None = None,
    gpus_per_worker: int = 2,
    gpu_workers: int = 1,
    extra_env: dict[str, str] | None = None,
):
    """scripts/celery_stack.sh on a PostgreSQL database of its own (dropped afterwards) and Redis database
    ``redis_db`` (flushed first), ready once the scheduler is healthy. ``gpus_per_worker`` 2: the mini profile's two
    processes fill a worker's share of the gpu pool. ``extra_env``: more settings for every part."""
    import redis
    from sqlalchemy import create_engine, text

    from uniad.train.launch import find_free_port

    db_url = f"{POSTGRES}/uniad_test_{uuid.uuid4().hex[:10]}"
    port, mlflow_port = find_free_port(), find_free_port()
    admin = ("admin", secrets.token_urlsafe(18))
    redis.Redis(host="127.0.0.1", port=6379, db=redis_db).flushdb()
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "UNIAD_DB_URL": db_url,
        "UNIAD_BROKER_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "UNIAD_API_PORT": str(port),
        "UNIAD_GPUS_PER_WORKER": str(gpus_per_worker),
        "UNIAD_DAGS_FOLDER": str(dags_folder or REPO / "dags"),
        "UNIAD_RUNS_DIR": str(home / "uniad_runs"),
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
        "UNIAD_ADMIN_PASSWORD": admin[1],
        "UNIAD_GPU_WORKERS": str(gpu_workers),
        "UNIAD_MLFLOW_PORT": str(mlflow_port),
        **(extra_env or {}),
    }
    env.pop("MLFLOW_TRACKING_URI", None)  # the stack's own server
    argv = ["bash", str(REPO / "scripts/celery_stack.sh")]
    try:
        with service_group(argv, home / "stack.log", env, api_healthy(port, "scheduler"), timeout_s=240) as proc:
            yield CeleryStack(proc, port, db_url, admin, f"http://127.0.0.1:{mlflow_port}")
    finally:
        engine = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            for name in (db_url.rsplit("/", 1)[1], db_url.rsplit("/", 1)[1] + "_mlflow"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
