"""Stages that outlive Airflow, on the production shape: scripts/celery_stack.sh with two GPU workers and the
two-node Slurm cluster on loopback, every timer that bounds a multi-day task shortened to seconds.

- executor=local: a stage that runs longer than the broker's visibility timeout, the workload token and the task
  token lifetimes ends in success, one job (issue: a redelivered message made the scheduler kill it); a local job
  whose supervisor is SIGKILLed is LOST, and the retry resumes from its checkpoint in a new job.
- executor=slurm: the GPU worker SIGKILLed right after sbatch answered (before the job id was stored) and restarted:
  the retry re-attaches to the same job; the triggerer SIGKILLed and restarted mid-stage: following resumes;
  the job scancelled from outside: the retry resumes from its checkpoint in a new job; the task marked failed
  through the REST API: the job is cancelled within 30 s.

Facts come from the process table, the work dirs (slurm_jobs.jsonl, logs, checkpoints), Slurm's job records and
the task instances, never from what the code is expected to do.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from services import celery_stack, descendants, http, kill_tree
from support import processes_mentioning, run, wait_for

DAG_ID = "uniad_e2e_training"
TIMERS = {
    # Redis hands an unacknowledged message to another worker after this long (production: 7 days), looking for
    # such messages every 2 s (every 100 s).
    "UNIAD_VISIBILITY_TIMEOUT_S": "30",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__UNACKED_RESTORE_INTERVAL": "2",
    "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__UNACKED_RESTORE_THROTTLE": "1",
    # The workload token's lifetime (production: 600 s), shorter than the visibility timeout as in production, and
    # the running task's token lifetime (600 s).
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "20",
    "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME": "20",
    # A lost worker's task is failed after this long without heartbeats (300 s), checked every 5 s.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    # A lost triggerer's triggers move to a live one after this long (30 s).
    "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "15",
    "UNIAD_RETRY_DELAY_S": "2",
}
SBATCH_HOLD = """#!/bin/bash
# sbatch, then (while the hold file exists) keep the answer back: the worker can be lost after the job was
# submitted and before its id reached Airflow, the one moment only the cluster knows about the job.
out=$({sbatch} "$@") || exit $?
if [ -e "$UNIAD_TEST_SBATCH_HOLD" ]; then
  echo "$out" > "$UNIAD_TEST_SBATCH_HOLD.submitted"
  while [ -e "$UNIAD_TEST_SBATCH_HOLD" ]; do sleep 0.2; done
fi
echo "$out"
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory, slurm_env):
    base = tmp_path_factory.mktemp("long-running")
    shim = base / "bin"
    shim.mkdir()
    (shim / "sbatch").write_text(SBATCH_HOLD.format(sbatch="/usr/bin/sbatch"))
    (shim / "sbatch").chmod(0o755)
    env = {
        **TIMERS,
        **slurm_env,
        "UNIAD_TEST_SBATCH_HOLD": str(base / "hold"),
        "PATH": f"{shim}:{os.environ['PATH']}",
    }
    home = base / "airflow"
    home.mkdir()
    with celery_stack(home, redis_db=9, gpu_workers=2, extra_env=env) as running:
        yield {"home": home, "stack": running, "base": base, "slurm_env": {**os.environ, **slurm_env}}


def api(stack, method: str, path: str, body: dict | None = None):
    status, answer = http(
        method, f"http://127.0.0.1:{stack['stack'].port}/api/v2/{path}", token=stack["stack"].token(), body=body
    )
    assert status in (200, 201), (status, answer)
    return answer


def trigger(stack, run_id: str, conf: dict) -> None:
    deadline = time.monotonic() + 120
    while True:  # the dag-processor registers the DAG a few seconds after the stack is up
        status, answer = http(
            "POST",
            f"http://127.0.0.1:{stack['stack'].port}/api/v2/dags/{DAG_ID}/dagRuns",
            token=stack["stack"].token(),
            body={"dag_run_id": run_id, "logical_date": None, "conf": conf},
        )
        if status == 200:
            return
        assert status == 404 and time.monotonic() < deadline, (status, answer)
        time.sleep(2)


def task(stack, run_id: str, task_id: str) -> dict:
    return api(stack, "GET", f"dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/{task_id}")


def run_state(stack, run_id: str, timeout_s: float = 600) -> str:
    def ended():
        state = api(stack, "GET", f"dags/{DAG_ID}/dagRuns/{run_id}")["state"]
        return state if state in ("success", "failed") else None

    return wait_for(f"run {run_id} to end", ended, timeout_s, every_s=2)


def task_log(stack, run_id: str, task_id: str, try_number: int) -> str:
    path = stack["home"] / f"logs/dag_id={DAG_ID}/run_id={run_id}/task_id={task_id}/attempt={try_number}.log"
    return path.read_text() if path.exists() else ""


def executions(stack, task_id: str, run_id: str) -> list[str]:
    """The GPU workers' own record of each task message they executed for ``run_id``'s ``task_id``."""
    found = []
    for log in sorted((stack["home"] / "logs").glob("worker-gpu*.log")):
        for line in log.read_text().splitlines():
            if "Executing workload in Celery" in line and f"task_id='{task_id}'" in line and run_id in line:
                found.append(f"{log.name}: {line[:160]}")
    return found


def jobs(work_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (work_dir / "slurm_jobs.jsonl").read_text().splitlines()]


def pid_of(stack, part: str) -> int:
    """The pid of ``part``'s current process (scripts/celery_stack.sh starts a part again when it dies)."""
    return int((stack["home"] / "logs" / f"{part}.pid").read_text())


def restarted(stack, part: str, old_pid: int, timeout_s: float = 60) -> int:
    return wait_for(f"{part} to be started again", lambda: (pid := pid_of(stack, part)) != old_pid and pid, timeout_s)


STAGE1 = "projects/work_dirs/stage1_track_map/full_track_map"
STAGE2 = "projects/work_dirs/stage2_e2e/full_e2e"
SLURM = {"profile": "mini", "executor": "slurm", "nnodes": 2, "nproc_per_node": 1}


def test_a_local_stage_outlives_the_visibility_timeout_and_token_lifetimes(stack, tmp_path):
    root = tmp_path / "uniad-local"
    trigger(stack, "soak", {"profile": "mini", "uniad_root": str(root), "stage1_epochs": 12, "stage2_epochs": 1})
    assert run_state(stack, "soak") == "success", task(stack, "soak", "stage1_train")
    stage1 = task(stack, "soak", "stage1_train")
    seconds = (
        datetime.fromisoformat(stage1["end_date"]) - datetime.fromisoformat(stage1["start_date"])
    ).total_seconds()
    timers = [float(TIMERS[key]) for key in TIMERS if "TIMEOUT_S" in key or "EXPIRATION" in key or "QUEUED" in key]
    assert seconds > max(timers) + 20, f"the stage ({seconds} s) must outlive every shortened timer"
    # Executed once: one try, two messages executed by the two GPU workers together (the start of the stage's job,
    # then its end after the task was deferred), one job, one training launch.
    assert stage1["try_number"] == 1
    assert len(executions(stack, "stage1_train", "soak")) == 2, executions(stack, "stage1_train", "soak")
    assert len(list((root / STAGE1).glob("local-*.spec.json"))) == 1
    assert len(list((root / STAGE1).glob("output_*.txt"))) == 1
    records = next((root / STAGE1).glob("*.log.json")).read_text().splitlines()
    assert json.loads(records[-1])["epoch"] == 12


def test_a_slurm_stage_outlives_its_worker_and_the_triggerer(stack, tmp_path):
    root, hold = tmp_path / "uniad-slurm", stack["base"] / "hold"
    hold.touch()
    trigger(stack, "worker_lost", {**SLURM, "uniad_root": str(root), "stage1_epochs": 8, "stage2_epochs": 6})
    job_id = wait_for("sbatch", lambda: Path(f"{hold}.submitted").exists() and Path(f"{hold}.submitted").read_text())
    job_id = job_id.strip()
    # The GPU worker whose task waits on sbatch's answer is lost with every process below it; the stack starts
    # it again, as compose's restart policy would.
    worker = next(
        part
        for part in ("worker-gpu", "worker-gpu-2")
        if any("sbatch" in _cmdline(pid) for pid in _tree(pid_of(stack, part)))
    )
    lost = pid_of(stack, worker)
    kill_tree(lost)
    lost_at = time.monotonic()
    hold.unlink()
    restarted(stack, worker, lost)
    wait_for(
        "the retry to re-attach",
        lambda: "re-attaching to Slurm job" in task_log(stack, "worker_lost", "stage1_train", 2),
        timeout_s=180,
    )
    reattach_s = time.monotonic() - lost_at
    assert f"re-attaching to Slurm job {job_id} " in task_log(stack, "worker_lost", "stage1_train", 2)

    # Stage 2's job running, followed by its trigger: the triggerer is lost, and started again.
    wait_for(
        "stage 2 to be deferred",
        lambda: task(stack, "worker_lost", "stage2_train")["state"] == "deferred",
        timeout_s=300,
    )
    (stage2_job,) = [job["job_id"] for job in jobs(root / STAGE2)]
    followed = wait_for("the trigger to follow the job", lambda: following(stack, "worker_lost", stage2_job))
    lost = pid_of(stack, "triggerer")
    kill_tree(lost)
    triggerer_lost_at = time.monotonic()
    restarted(stack, "triggerer", lost)
    wait_for(
        "a new trigger to follow the job", lambda: following(stack, "worker_lost", stage2_job) > followed, timeout_s=120
    )
    refollow_s = time.monotonic() - triggerer_lost_at
    assert run_state(stack, "worker_lost") == "success", task(stack, "worker_lost", "stage2_train")

    # One job per stage, on both nodes; stage 1's job trained straight through its worker's loss.
    (stage1_job,) = jobs(root / STAGE1)
    assert (stage1_job["job_id"], stage1_job["attempt"], stage1_job["state"]) == (job_id, 1, "COMPLETED")
    (stage2,) = jobs(root / STAGE2)
    assert (stage2["job_id"], stage2["state"], stage2["nodes"]) == (stage2_job, "COMPLETED", "n[1-2]")
    assert task(stack, "worker_lost", "stage1_train")["try_number"] == 2
    assert task(stack, "worker_lost", "stage2_train")["try_number"] == 1
    (log,) = (root / STAGE1).glob("*.log.json")
    assert sum('"env_info"' in line for line in log.read_text().splitlines()) == 1  # one training, not two
    assert processes_mentioning(str(root)) == []
    print(
        f"re-attached {reattach_s:.1f} s after the worker was lost; following resumed {refollow_s:.1f} s after "
        "the triggerer was lost"
    )


def test_a_cancelled_job_is_retried_from_its_checkpoint_and_marking_failed_cancels(stack, tmp_path):
    root = tmp_path / "uniad-cancel"
    trigger(stack, "cancelled", {**SLURM, "uniad_root": str(root), "stage1_epochs": 3, "stage2_epochs": 6})
    first = wait_for("epoch 1's checkpoint", lambda: (root / STAGE1 / "epoch_1.pth").exists() and jobs(root / STAGE1))
    run(["scancel", first[0]["job_id"]], env=stack["slurm_env"])  # an operator, a preemption script, ...
    wait_for("the job to end", lambda: "JobState=CANCELLED" in _scontrol(stack, first[0]["job_id"]), timeout_s=30)
    newest = max(int(path.stem.split("_")[1]) for path in (root / STAGE1).glob("epoch_*.pth"))
    wait_for("the retry's job", lambda: len(jobs(root / STAGE1)) == 2 and jobs(root / STAGE1)[1], timeout_s=180)
    wait_for(
        "stage 2 to be deferred", lambda: task(stack, "cancelled", "stage2_train")["state"] == "deferred", timeout_s=300
    )
    (stage2_job,) = jobs(root / STAGE2)
    wait_for("stage 2's job to run", lambda: "JobState=RUNNING" in _scontrol(stack, stage2_job["job_id"]))
    api(stack, "PATCH", f"dags/{DAG_ID}/dagRuns/cancelled/taskInstances/stage2_train", {"new_state": "failed"})
    marked_at = time.monotonic()
    wait_for(
        "the job to be cancelled", lambda: "JobState=CANCELLED" in _scontrol(stack, stage2_job["job_id"]), timeout_s=30
    )
    cancel_s = time.monotonic() - marked_at
    wait_for("the audit trail to record it", lambda: jobs(root / STAGE2)[0]["state"] == "CANCELLED", timeout_s=30)
    assert jobs(root / STAGE2)[0]["end"] not in (None, "Unknown")
    assert run_state(stack, "cancelled") == "failed"

    cancelled, retried = jobs(root / STAGE1)
    assert (cancelled["attempt"], cancelled["state"]) == (1, "CANCELLED")
    assert (retried["attempt"], retried["state"]) == (2, "COMPLETED")
    retry_log = task_log(stack, "cancelled", "stage1_train", 2)
    assert f"epoch_{newest}.pth (epoch {newest})" in retry_log and "resuming from" in retry_log, retry_log[-3000:]
    assert (root / STAGE1 / "epoch_3.pth").exists()
    wait_for("the cancelled job's ranks to exit", lambda: processes_mentioning(str(root)) == [], timeout_s=30)
    print(f"job cancelled {cancel_s:.1f} s after the task was marked failed")


def following(stack, run_id: str, job_id: str) -> int:
    """How many times a trigger started following ``job_id`` (the triggers' lines in the task's logs)."""
    logs = (stack["home"] / f"logs/dag_id={DAG_ID}/run_id={run_id}/task_id=stage2_train").glob("*")
    return sum(path.read_text().count(f"following Slurm job {job_id} ") for path in logs if path.is_file())


def _scontrol(stack, job_id: str) -> str:
    return run(["scontrol", "show", "job", job_id], env=stack["slurm_env"], check=False).stdout


def _tree(pid: int) -> list[int]:
    return [pid, *descendants(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def test_a_local_job_whose_supervisor_is_lost_is_retried_from_its_checkpoint(stack, tmp_path):
    """The local job's supervisor SIGKILLed mid-stage (a host lost looks the same from the work dir: no end recorded,
    the lease's heartbeat stops): its ranks go with it, the trigger reports the job LOST, and the retry starts a new
    job that resumes from the newest checkpoint; the run succeeds."""
    root = tmp_path / "uniad-lost"
    trigger(stack, "job_lost", {"profile": "mini", "uniad_root": str(root), "stage1_epochs": 3, "stage2_epochs": 1})
    work = root / STAGE1
    wait_for("epoch 1's checkpoint", lambda: (work / "epoch_1.pth").exists(), 300)
    (marker,) = work.glob("local-*.job.json")
    supervisor = json.loads(marker.read_text())["pid"]
    os.kill(supervisor, signal.SIGKILL)
    assert run_state(stack, "job_lost") == "success", task(stack, "job_lost", "stage1_train")
    assert task(stack, "job_lost", "stage1_train")["try_number"] == 2
    specs = sorted(work.glob("local-*.spec.json"))
    assert len(specs) == 2, specs
    first, second = (json.loads(path.read_text()) for path in specs)
    assert json.loads(marker.read_text()).get("end") is None  # it never recorded one
    assert second["attempt"] == 2 and second["resumed_from"].endswith(".pth"), second
    lost = task_log(stack, "job_lost", "stage1_train", 1)
    assert f"local job {first['job_id']} is gone without recording its end" in lost, lost[-3000:]
    assert processes_mentioning(str(root)) == []
