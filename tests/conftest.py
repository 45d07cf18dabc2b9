"""Shared fixtures. Airflow's settings are read at import, so its environment is set before anything imports it.

Tests under ``unit/`` are fast: no training, no services. Tests under ``e2e/`` train or start services and are
marked ``e2e`` here; ``make test-fast`` runs only ``unit/``, and a unit test that asks for a fixture that trains or
starts a service is refused at collection.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

from support import BIN, PYTHON, REPO, airflow_env, mini_train_argv, run
from uniad.vocabulary import STAGE1_CONFIG, STAGE2_CONFIG

_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="uniad-airflow-home-"))
os.environ.update(airflow_env(_AIRFLOW_HOME))
sys.path.insert(0, str(REPO / "plugins"))

E2E_DIR = Path(__file__).resolve().parent / "e2e"
E2E_FIXTURES = {"trained_root", "reference_run", "s3_server", "s3_client", "slurm_env"}


# make test runs the suite on two pytest-xdist workers, each with its own Airflow home and session fixtures. The
# end-to-end tests that share a session fixture (a trained root, the reference run, the Slurm cluster, the S3
# server) run in one worker, so it is built once, and every other end-to-end module runs whole in one worker, so
# its module fixtures (service stacks) are built once too; unit tests go wherever a worker is free.
XDIST_GROUPS = {
    "test_e2e_airflow": "reference_run",
    "test_dashboard_ui": "reference_run",
    "test_mini_training": "trained_root",
    "test_dashboard_views": "trained_root",
    "test_resume_faults": "trained_root",
    "test_slurm_executor": "slurm",
    "test_long_running_faults": "slurm",
    "test_uniad_contract": "slurm",
    "test_slurm_cluster": "slurm",  # two clusters starting at once would race to start the host's munged
    "test_s3_and_alerts_e2e": "s3",
    "test_storage": "s3",
}
# Seconds each group took in one worker (make test on 2 cores, 2026-11-30; slurm 2026-12-04; celery stack
# 2026-12-05): the workers take the longest first, so that neither is left with a long group after the other ran out
# of work. A group not listed counts 30 s.
GROUP_SECONDS = {
    "slurm": 1080,
    "test_celery_stack": 850,
    "reference_run": 390,
    "trained_root": 150,
    "test_model_quality": 130,
    "s3": 200,
    "test_health_watch": 50,
    "test_access_control": 45,
}


def xdist_group(nodeid: str) -> str:
    """The unit of work a worker takes whole: an end-to-end module's group, or a unit test alone."""
    path = Path(nodeid.split("::", 1)[0])
    if path.parent.name != "e2e":
        return nodeid
    return XDIST_GROUPS.get(path.stem, path.stem)


def group_seconds(nodeid: str) -> float:
    group = xdist_group(nodeid)
    return 0.0 if group == nodeid else GROUP_SECONDS.get(group, 30)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config, log):
    # A scheduler of our own rather than xdist_group marks: pytest 9 keeps a node's id where pytest-xdist 3.8's
    # loadgroup no longer renames it, so those marks group nothing. The groups go out in collection order, which
    # pytest_collection_modifyitems made longest first.
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    config.option.loadscopereorder = False  # xdist's own order: the most tests first
    return GroupScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: -group_seconds(item.nodeid))  # stable: a group's tests keep their order
    for item in items:
        if E2E_DIR in Path(item.fspath).parents:
            item.add_marker(pytest.mark.e2e)
        elif E2E_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(
                f"{item.nodeid} is a unit test but uses {sorted(E2E_FIXTURES & set(item.fixturenames))}, which "
                "train or start a service: move it to tests/e2e/"
            )


@pytest.fixture(scope="session", autouse=True)
def no_local_job_outlives_the_session(tmp_path_factory):
    """Local stages are jobs detached from whoever started them: one that a failed test left training must not
    outlive the session (each test asserts from the process table that its own jobs ended)."""
    yield
    import signal
    import time

    from support import processes_mentioning

    base = str(tmp_path_factory.getbasetemp())
    for line in processes_mentioning(base):
        if "uniad.train.local_job" in line:
            os.kill(int(line.split()[0]), signal.SIGTERM)  # its supervisor stops its ranks
    time.sleep(1)
    deadline = time.monotonic() + 15
    while (left := processes_mentioning(base)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for line in left:
        try:
            os.kill(int(line.split()[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="session")
def airflow_home() -> Path:
    """The session's Airflow home with a migrated database and the gpu pool."""
    marker = _AIRFLOW_HOME / ".ready"
    if not marker.exists():
        run([str(BIN / "airflow"), "db", "migrate"], timeout=300)
        run([str(BIN / "airflow"), "pools", "set", "--include-deferred", "gpu", "8", "GPU slots"], timeout=120)
        run([str(BIN / "python"), "-m", "uniad_airflow.policy"], timeout=120)
        marker.touch()
    return _AIRFLOW_HOME


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory) -> dict:
    """A mini root trained for real: stage 1 (2 epochs), promoted, then stage 2 (1 epoch) from it.

    Both stages run through ``python -m uniad train`` with 2 gloo processes, as the DAG runs them.
    """
    root = tmp_path_factory.mktemp("mini-root")
    run([PYTHON, "-m", "uniad", "init-mini", str(root)])
    stage1 = run([*mini_train_argv(root, STAGE1_CONFIG, 2), "--backend", "auto", "--stage-name", "stage1"], timeout=600)
    stage1_dir = root / "projects/work_dirs/stage1_track_map/full_track_map"
    ckpt = root / "ckpts/full_track_map.pth"
    run([PYTHON, "-m", "uniad", "promote", str(stage1_dir / "latest.pth"), str(ckpt), "--expect-epoch", "2"])
    stage2 = run(
        [*mini_train_argv(root, STAGE2_CONFIG, 1), "--load-from", str(ckpt), "--stage-name", "stage2"], timeout=600
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


@pytest.fixture(scope="session")
def reference_run(airflow_home, tmp_path_factory) -> dict:
    """The main job on the embedded default, once for the session: ``airflow dags test`` of the whole pipeline with
    the form's defaults (6 + 20 epochs) and a mid-epoch checkpoint every 15 iterations, in the session's Airflow
    home (its run is in the metadata database the dashboard tests serve). Its root and output."""
    root = tmp_path_factory.mktemp("reference") / "uniad-mini"
    conf = {"profile": "mini", "uniad_root": str(root), "checkpoint_interval_iters": 15}
    done = run([str(BIN / "airflow"), "dags", "test", "uniad_e2e_training", "-c", json.dumps(conf)], timeout=900)
    return {"root": root, "conf": conf, "output": done.stdout + done.stderr}


@pytest.fixture(scope="session")
def slurm_env(tmp_path_factory) -> dict[str, str]:
    """The two-node Slurm cluster on loopback (scripts/slurm_cluster.sh, 2 stand-in GPUs per node) that the
    end-to-end tests share: the environment that points at it. Tests tell their jobs apart by name and work dir."""
    from support import slurm_cluster

    with slurm_cluster(tmp_path_factory.mktemp("slurm"), 27817) as env:
        yield {"SLURM_CONF": env["SLURM_CONF"]}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server on loopback (moto's standalone server) in its own process group: its URL."""
    from services import http, service_group
    from uniad.train.launch import find_free_port

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
