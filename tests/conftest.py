"""Shared fixtures. Airflow's settings are read at import, so its environment is set before anything imports it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="uniad-airflow-home-"))


def airflow_env(home: Path) -> dict[str, str]:
    """An isolated Airflow (SQLite, LocalExecutor) over this repository's dags/ and plugins/."""
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
        "UNIAD_RUNS_DIR": str(home / "uniad_runs"),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


os.environ.update(airflow_env(_AIRFLOW_HOME))
sys.path.insert(0, str(REPO / "plugins"))


def run(argv: list[str], *, env: dict | None = None, timeout: float = 600, check: bool = True, cwd=None):
    """Run a command and show its output when it fails."""
    done = subprocess.run(
        argv, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout, cwd=cwd
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{argv} exited {done.returncode}\n--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
        )
    return done


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's Airflow home with a migrated database and the gpu pool."""
    marker = _AIRFLOW_HOME / ".ready"
    if not marker.exists():
        run([str(BIN / "airflow"), "db", "migrate"], timeout=300)
        run([str(BIN / "airflow"), "pools", "set", "gpu", "8", "GPU slots"], timeout=120)
        marker.touch()
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory) -> dict:
    """A mini root trained for real: stage 1 (2 epochs), promoted, then stage 2 (1 epoch) from it.

    Both stages run through ``python -m uniad train`` with 2 gloo processes, as the DAG runs them.
    """
    root = tmp_path_factory.mktemp("mini-root")
    run([PYTHON, "-m", "uniad", "init-mini", str(root)])
    common = ["--uniad-root", str(root), "--nproc-per-node", "2", "--backend", "auto"]
    stage1 = run(
        [
            PYTHON,
            "-m",
            "uniad",
            "train",
            *common,
            "--config",
            "projects/configs/stage1_track_map/full_track_map.py",
            "--epochs",
            "2",
            "--stage-name",
            "stage1",
        ],
        timeout=600,
    )
    stage1_dir = root / "projects/work_dirs/stage1_track_map/full_track_map"
    ckpt = root / "ckpts/full_track_map.pth"
    run([PYTHON, "-m", "uniad", "promote", str(stage1_dir / "latest.pth"), str(ckpt), "--expect-epoch", "2"])
    stage2 = run(
        [
            PYTHON,
            "-m",
            "uniad",
            "train",
            *common,
            "--config",
            "projects/configs/stage2_e2e/full_e2e.py",
            "--epochs",
            "1",
            "--load-from",
            str(ckpt),
            "--stage-name",
            "stage2",
        ],
        timeout=600,
    )
    return {
        "root": root,
        "stage1_dir": stage1_dir,
        "stage2_dir": root / "projects/work_dirs/stage2_e2e/full_e2e",
        "ckpt": ckpt,
        "stage1_stdout": stage1.stdout,
        "stage1_stderr": stage1.stderr,
        "stage2_stdout": stage2.stdout,
        "stage2_stderr": stage2.stderr,
    }


def processes_mentioning(text: str) -> list[str]:
    """Live (non-zombie) processes whose command line or working directory mentions ``text``: the process-table
    check for orphans. Ranks run with relative paths from the UniAD root, so their cwd is what names the run."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if (text in cmdline or text in cwd) and state != "Z":
            found.append(f"{proc.name} (cwd {cwd}): {cmdline}")
    return found


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server on loopback (moto's standalone server) in its own process group: its URL."""
    from services import http, service_group
    from uniad.launch import find_free_port

    port = find_free_port()
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return http("GET", url, timeout=2)[0] == 200
        except OSError:
            return False

    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with service_group([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], log, dict(os.environ), ready):
        yield url


@pytest.fixture
def s3_client(s3_server):
    """A boto3 S3 client of the loopback server (any credentials do)."""
    import boto3

    return boto3.client(
        "s3", endpoint_url=s3_server, aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1"
    )
