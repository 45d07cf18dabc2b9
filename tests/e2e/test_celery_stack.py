"""The production shape: scripts/celery_stack.sh (CeleryExecutor on PostgreSQL + Redis, a default-queue worker and a
gpu-queue worker), triggered once with `airflow dags trigger` and once through the REST API."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest

from services import celery_stack, cli_json, group_alive, http
from support import BIN, REPO, run
from uniad.artifacts.checkpoints import inspect_checkpoint

DAG_ID = "uniad_e2e_training"
TASKS = [
    "preflight",
    "fetch_pretrained",
    "stage1_train",
    "validate_stage1",
    "promote_checkpoint",
    "upload_stage1",
    "stage2_train",
    "validate_stage2",
    "upload_stage2",
    "publish_model",
]
# Where the GPUs are: training, and publish_model (it may evaluate the champion with tools/test.py).
ON_GPUS = {"stage1_train", "stage2_train", "publish_model"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("airflow-celery")
    with celery_stack(home, redis_db=7) as running:
        cli_env = {
            **os.environ,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": running.db_url,
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        }
        yield {"home": home, "port": running.port, "cli_env": cli_env, "stack": running}
    assert not group_alive(running.proc.pid), "a part of the stack outlived its process group's shutdown"


def wait_for_success(airflow: str, env: dict, run_ids: list[str], timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    states: dict = {}
    while time.monotonic() < deadline:
        listed = cli_json(run([airflow, "dags", "list-runs", DAG_ID, "-o", "json"], env=env).stdout)
        states = {r["run_id"]: r["state"] for r in listed if r["run_id"] in run_ids}
        if len(states) == len(run_ids) and set(states.values()) <= {"success", "failed"}:
            break
        time.sleep(3)
    assert set(states.values()) == {"success"} and len(states) == len(run_ids), states


def test_runs_on_celery_with_training_on_the_gpu_worker(stack, tmp_path):
    home, port, env = stack["home"], stack["port"], stack["cli_env"]
    airflow = str(BIN / "airflow")
    deadline = time.monotonic() + 120
    while DAG_ID not in run([airflow, "dags", "list", "-o", "json"], env=env, check=False).stdout:
        assert time.monotonic() < deadline, "the dag-processor never registered the DAG"
        time.sleep(3)
    pools = cli_json(run([airflow, "pools", "get", "gpu", "-o", "json"], env=env).stdout)
    assert int(pools[0]["slots"]) == 2  # 1 worker x 2 GPUs

    roots = {"cli_run": tmp_path / "root-cli", "rest_run": tmp_path / "root-rest"}
    conf = {"profile": "mini", "stage1_epochs": 1, "stage2_epochs": 1}
    run(
        [
            airflow,
            "dags",
            "trigger",
            DAG_ID,
            "-r",
            "cli_run",
            "-c",
            json.dumps({**conf, "uniad_root": str(roots["cli_run"])}),
        ],
        env=env,
    )
    token = stack["stack"].token()  # the FAB admin created from the deployment secret
    status, answer = http(
        "POST",
        f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/dagRuns",
        token=token,
        body={"dag_run_id": "rest_run", "logical_date": None, "conf": {**conf, "uniad_root": str(roots["rest_run"])}},
    )
    assert status == 200, answer
    wait_for_success(airflow, env, list(roots))

    for run_id, root in roots.items():
        status, tis = http(
            "GET", f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances", token=token
        )
        assert status == 200, tis
        by_task = {t["task_id"]: t for t in tis["task_instances"]}
        assert {t: by_task[t]["state"] for t in TASKS} == {
            t: "skipped" if t.startswith("upload_") else "success"
            for t in TASKS  # no s3_uri
        }
        for task in TASKS:
            expected = ("gpu", "gpu", 2) if task in ON_GPUS else ("default", "default_pool", 1)
            assert (by_task[task]["queue"], by_task[task]["pool"], by_task[task]["pool_slots"]) == expected, task
        assert inspect_checkpoint(root / "ckpts/full_track_map.pth", stage="stage1", expect_epoch=1).valid

    # Routing, from the workers' own logs: the gpu worker ran the GPU tasks of both runs and nothing else.
    executed = {}
    for worker in ("worker-gpu", "worker-default"):
        text = (Path(home) / "logs" / f"{worker}.log").read_text()
        executed[worker] = sorted(re.findall(r"Executing workload in Celery: .*? task_id='([a-z0-9_]+)'", text))
    assert executed["worker-gpu"] == sorted([t for t in TASKS if t in ON_GPUS] * 2), executed
    assert executed["worker-default"] == sorted([t for t in TASKS if t not in ON_GPUS] * 2), executed
