"""The production shape: scripts/celery_stack.sh (CeleryExecutor on PostgreSQL + Redis, a default-queue worker and a
gpu-queue worker) with its shipped timers, triggered once with `airflow dags trigger` and once through the REST API;
then a local stage, a job detached from the GPU worker, trains through an api-server outage, a rolling restart of the
other parts and the GPU worker's loss."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from services import api_healthy, celery_stack, cli_json, group_alive, http, kill_tree
from support import BIN, REPO, processes_mentioning, run, wait_for
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
OUTAGE_S = 120  # the api-server killed this long, then frozen this long, while a local stage trains
EPOCHS = 14  # of that stage: it trains on after the outages and the restarts


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

    # Tracking on the stack's MLflow server (its runs in the stack's PostgreSQL): each pipeline run with its two stage
    # runs, their metrics logged from the triggerer as they trained, the gate's report uploaded by the workers.
    from mlflow.tracking import MlflowClient

    mlflow = MlflowClient(tracking_uri=stack["stack"].mlflow_url)
    experiment = mlflow.get_experiment_by_name("uniad_e2e_training")

    def pipeline_runs_ended() -> bool:  # the run's success callback ends them, in the dag-processor, after the run
        runs = mlflow.search_runs([experiment.experiment_id], "tags.`uniad.stage` = 'pipeline'")
        return len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)

    wait_for("the pipeline runs' MLflow runs to end FINISHED", pipeline_runs_ended, 120, 2)
    tracked = mlflow.search_runs([experiment.experiment_id])
    for run_id in roots:
        stages = {r.data.tags["uniad.stage"]: r for r in tracked if r.data.tags["airflow.run_id"] == run_id}
        assert set(stages) == {"pipeline", "stage1", "stage2"} and stages["pipeline"].info.status == "FINISHED"
        for stage in ("stage1", "stage2"):
            steps = [m.step for m in mlflow.get_metric_history(stages[stage].info.run_id, "loss")]
            assert sorted(steps) == [10, 20, 30, 40], (run_id, stage, steps)
            artifacts = {a.path for a in mlflow.list_artifacts(stages[stage].info.run_id, "health")}
            assert "health/report.md" in artifacts, artifacts

    # Routing, from the workers' own logs: the gpu worker ran the GPU tasks of both runs and nothing else; a training
    # task twice (it starts its stage's job and defers, then takes the job's end).
    executed = {}
    for worker in ("worker-gpu", "worker-default"):
        text = (Path(home) / "logs" / f"{worker}.log").read_text()
        executed[worker] = sorted(re.findall(r"Executing workload in Celery: .*? task_id='([a-z0-9_]+)'", text))
    twice = ["stage1_train", "stage2_train"] * 2
    assert executed["worker-gpu"] == sorted([t for t in TASKS if t in ON_GPUS] * 2 + twice), executed
    assert executed["worker-default"] == sorted([t for t in TASKS if t not in ON_GPUS] * 2), executed


def test_a_local_stage_trains_through_an_api_server_outage_a_rolling_restart_and_a_lost_worker(stack, tmp_path):
    """While stage 1 trains as a local job on the GPU worker, its task deferred, with the shipped settings: the
    api-server killed and kept down for 120 s, then frozen (SIGSTOP) for 120 s, during which the GPU worker is
    SIGKILLed with every process below it (the stack starts it again, as compose's loop does); then the api-server,
    scheduler, dag-processor and triggerer restarted one after another, as a deploy does. The job's supervisor,
    launcher and ranks are the same processes throughout, it was launched once, the triggerer followed it on, and
    the run succeeds on try 1."""
    home, port = stack["home"], stack["port"]
    logs = Path(home) / "logs"
    token = stack["stack"].token()
    root = tmp_path / "root-outage"
    work = root / "projects/work_dirs/stage1_track_map/full_track_map"
    # Training that waits 0.8 s for each batch (a slow shared filesystem): 14 epochs last about 8 minutes, so it trains
    # on well after the outages and the restarts (about 6 minutes), and not much longer on a loaded machine.
    slow = ["fault_injection.kind=slow_data", "fault_injection.epoch=1", "fault_injection.seconds=0.8"]
    conf = {
        "profile": "mini",
        "uniad_root": str(root),
        "stage1_epochs": EPOCHS,
        "stage1_cfg_options": slow,
        "stage2_epochs": 1,
    }
    status, answer = http(
        "POST",
        f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/dagRuns",
        token=token,
        body={"dag_run_id": "outage_run", "logical_date": None, "conf": conf},
    )
    assert status == 200, answer

    def records() -> int:
        return sum(len(log.read_text().splitlines()) - 1 for log in work.glob("*.log.json"))

    def pid_of(part: str) -> int | None:
        """The pid the stack script wrote for ``part``; None while it rewrites the file (a start under way)."""
        text = (logs / f"{part}.pid").read_text().strip()
        return int(text) if text else None

    def stage_processes() -> set[str]:
        return {line.split()[0] for line in processes_mentioning(str(root))}

    def stage1_state() -> str:
        status, ti = http(
            "GET",
            f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/dagRuns/outage_run/taskInstances/stage1_train",
            token=token,
        )
        assert status == 200, ti
        return ti["state"]

    wait_for("stage 1 to train", lambda: records() >= 2, 300, 1)
    wait_for("stage 1's task to defer to its job", lambda: stage1_state() == "deferred", 60, 1)
    ranks = stage_processes()
    assert len(ranks) >= 4, ranks  # the job's supervisor, the launcher and both ranks

    began, killed = time.monotonic(), 0
    while time.monotonic() - began < OUTAGE_S:  # the stack starts it again 5 s after it dies: kill each new one
        pid = pid_of("api-server")
        if pid is not None and Path(f"/proc/{pid}").exists():
            kill_tree(pid)
            killed += 1
        assert not api_healthy(port)(), "the api-server answered during the outage"
        time.sleep(0.5)
    wait_for("the api-server to come back", api_healthy(port), 180, 2)
    frozen = pid_of("api-server")
    os.kill(frozen, signal.SIGSTOP)  # hung: connections are accepted and never answered
    try:
        frozen_at = time.monotonic()
        lost = pid_of("worker-gpu")
        kill_tree(lost)  # SIGKILL, the worker and every process below it
        wait_for("the GPU worker to start again", lambda: pid_of("worker-gpu") not in (None, lost), 120, 0.5)
        assert ranks <= stage_processes(), f"the stage's processes changed with the GPU worker's loss: {ranks}"
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - frozen_at)))
        assert not api_healthy(port)(), "the frozen api-server answered"
    finally:
        os.kill(frozen, signal.SIGCONT)
    wait_for("the api-server to answer again", api_healthy(port), 180, 2)
    assert ranks <= stage_processes(), f"the stage's processes changed across the outage: {ranks}"

    restarts = {}
    for part, component in (
        ("api-server", None),
        ("scheduler", "scheduler"),
        ("dag-processor", "dag_processor"),
        ("triggerer", "triggerer"),
    ):
        old, stopped = pid_of(part), time.monotonic()
        os.kill(old, signal.SIGTERM)
        wait_for(f"{part} to start again", lambda p=part, o=old: pid_of(p) not in (None, o), 120, 0.5)
        wait_for(f"{part} to be healthy again", api_healthy(port, component), 180, 2)
        restarts[part] = round(time.monotonic() - stopped)
    assert ranks <= stage_processes(), f"the stage's processes changed across the restarts: {ranks}"
    during = records()
    wait_for("stage 1 to train on after the restarts", lambda: records() > during, 300, 2)
    wait_for_success(str(BIN / "airflow"), stack["cli_env"], ["outage_run"], timeout_s=900)

    status, ti = http(
        "GET",
        f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/dagRuns/outage_run/taskInstances/stage1_train",
        token=token,
    )
    assert status == 200 and (ti["state"], ti["try_number"]) == ("success", 1), ti
    assert len(list(work.glob("output_*.txt"))) == 1 and len(list(work.glob("*.log.json"))) == 1  # launched once
    assert len(list(work.glob("local-*.spec.json"))) == 1  # one job
    # The task's log and its triggers' (one file per trigger where the triggerer writes them apart).
    task_logs = logs / f"dag_id={DAG_ID}/run_id=outage_run/task_id=stage1_train"
    log = "".join(path.read_text() for path in sorted(task_logs.rglob("*")) if path.is_file())
    assert log.count("following local job") >= 2  # the restarted triggerer followed the same job on
    assert f"epoch {EPOCHS}/{EPOCHS} iter 40/40 | 100.0%" in log  # the trigger's progress, to the stage's end
    print(
        f"api-server down {OUTAGE_S} s ({killed} start(s) killed), then frozen {OUTAGE_S} s with the GPU worker "
        f"SIGKILLed meanwhile, then restarted with the other parts (seconds each: {restarts}); the stage trained on "
        f"in the same processes "
        f"{sorted(ranks)}"
    )
