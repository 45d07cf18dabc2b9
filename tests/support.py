"""Helpers shared by the unit and end-to-end tests (importable as ``support``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent
STAGE2_HEADS = dict(
    motion_head=dict(modes=3, future_steps=4), occ_head=dict(occ_steps=2), planning_head=dict(future_steps=4)
)


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
        # Tests write their UniAD roots under the temp dir; the allowlist tests narrow this.
        "UNIAD_ALLOWED_ROOTS": tempfile.gettempdir(),
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }


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


def training_pools(home: Path, run_id: str | None = None) -> dict[str, tuple[str, int]]:
    """The pool and pool slots of each training task of ``run_id`` (default: the newest run) in ``home``'s SQLite
    database: what the scheduler counts."""
    with closing(sqlite3.connect(home / "airflow.db")) as db:
        if run_id is None:
            (run_id,) = db.execute("SELECT run_id FROM dag_run ORDER BY id DESC LIMIT 1").fetchone()
        rows = db.execute(
            "SELECT task_id, pool, pool_slots FROM task_instance WHERE run_id = ? AND task_id LIKE '%_train'", (run_id,)
        )
        return {task: (pool, slots) for task, pool, slots in rows}


@contextmanager
def http_receiver():
    """An HTTP endpoint on loopback that keeps the JSON body of every POST to it (an apprise ``json://`` target, a
    webhook): its port and the bodies, in order."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    received: list[dict] = []

    class Keep(BaseHTTPRequestHandler):
        def do_POST(self):
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keep)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()
        server.server_close()


def apprise_connection(*urls: str) -> str:
    """An Airflow connection (as an ``AIRFLOW_CONN_...`` value) of Airflow's apprise provider with these URLs."""
    import json

    return json.dumps({"conn_type": "apprise", "extra": {"config": [{"path": url} for url in urls]}})


def wait_for(what: str, check, timeout_s: float = 300, every_s: float = 0.5):
    """``check()``'s first true value, asked every ``every_s``; fails saying ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)
    return value


def mini_train_argv(root, config: str, epochs: int | str) -> list[str]:
    """``python -m uniad train`` of a mini root's stage with 2 gloo ranks, as the pipeline launches it; append
    the rest of the options."""
    return [
        PYTHON,
        "-m",
        "uniad",
        "train",
        "--uniad-root",
        str(root),
        "--config",
        config,
        "--epochs",
        str(epochs),
        "--nproc-per-node",
        "2",
    ]


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


def save_mmcv_checkpoint(path: Path, stage: str, epoch: int, corrupt=None) -> Path:
    """What mmcv's CheckpointHook writes for a mini model of ``stage`` (meta, state_dict, optimizer)."""
    import torch

    from uniad.mini.compat import ensure_torchvision_importable
    from uniad.mini.model import MiniUniAD

    ensure_torchvision_importable()
    from mmcv.runner import save_checkpoint

    torch.manual_seed(0)
    model = MiniUniAD(**(STAGE2_HEADS if stage == "stage2" else {}))
    if corrupt is not None:
        corrupt(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4)
    save_checkpoint(model, str(path), optimizer=optimizer, meta=dict(epoch=epoch, iter=epoch * 40, CLASSES=["car"]))
    return path


def require_tool(path: str | Path | None, what: str) -> None:
    """Skip a test whose tool is missing, saying how to install it; in CI (``CI`` set) a missing tool is a
    failure instead, since .ci/run installs every tool and nothing may be skipped there."""
    import pytest

    if path and Path(path).exists():
        return
    message = f"{what} is missing: `bash scripts/setup.sh --test-tools` installs it (Debian packages)"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must install every tool")
    pytest.skip(message)


@contextmanager
def slurm_cluster(state: Path, port: int):
    """scripts/slurm_cluster.sh on its own state dir and ports: the environment (with SLURM_CONF) of the running
    two-node cluster; its daemons are stopped, by pid, on exit."""
    require_tool("/usr/sbin/slurmctld", "slurmctld (Debian's slurm-wlm and munge)")
    script = str(REPO / "scripts/slurm_cluster.sh")
    env = {**os.environ, "UNIAD_SLURM_DIR": str(state), "UNIAD_SLURM_PORT": str(port)}
    started = run(["bash", script, "start"], env=env, timeout=180)
    try:
        yield {**env, "SLURM_CONF": str(state / "slurm.conf"), "started": started.stdout}
    finally:
        run(["bash", script, "stop"], env=env, timeout=120)


STANDIN = REPO / "tests" / "standin"


def uniad_interpreter(version: str = "3.8") -> Path:
    """pyenv's Python ``version`` (UniAD main's 3.8, v2.0's 3.9): what UniAD's own stack runs on."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(root.glob(f"versions/{version}.*/bin/python{version}"))
    require_tool(found[-1] if found else None, f"Python {version} from pyenv (`pyenv install {version}`)")
    return found[-1]


def standin_python(base: Path, version: str = "3.8") -> Path:
    """A virtual environment of pyenv's Python ``version`` with the contract stand-in of UniAD's stack (torch,
    mmcv; tests/standin/stack) and nothing of the pipeline: what UNIAD_PYTHON is on a real GPU worker."""
    venv = base / f"uniad-py{version}"
    if not (venv / "bin/python").exists():
        run([str(uniad_interpreter(version)), "-m", "venv", "--without-pip", str(venv)])
        (venv / f"lib/python{version}/site-packages/uniad_standin.pth").write_text(f"{STANDIN / 'stack'}\n")
    return venv / "bin/python"


def standin_root(path: Path, train_samples: int = 80, val_samples: int = 20) -> Path:
    """A UniAD checkout for the contract stand-in (tests/standin/root) with its data prepared: the info files and
    motion anchors its configs name, and stage 1's pretrained load_from."""
    import pickle
    import shutil

    shutil.copytree(STANDIN / "root", path)
    for split, count in (("train", train_samples), ("val", val_samples)):
        infos = {"infos": [{"token": f"{split}-{i}"} for i in range(count)], "metadata": {"version": "v1.0-trainval"}}
        target = path / f"data/infos/nuscenes_infos_temporal_{split}.pkl"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pickle.dumps(infos, protocol=4))
    (path / "data/others").mkdir(parents=True)
    (path / "data/others/motion_anchor_infos_mode6.pkl").write_bytes(pickle.dumps({"anchors": []}, protocol=4))
    (path / "data/nuscenes").mkdir(parents=True)
    (path / "ckpts").mkdir()
    save_mmcv_checkpoint(path / "ckpts/bevformer_r101_dcn_24ep.pth", "stage1", 24)
    return path


CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


def chromium(window: str = "1400,900"):
    """Debian's Chromium, headless, driven through its chromedriver (a fresh profile per session), without the
    background traffic a closed network refuses. Skipped (or, in CI, failed) when it is not installed."""
    require_tool(CHROMIUM, "chromium")
    require_tool(CHROMEDRIVER, "chromedriver (Debian's chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--window-size={window}",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
