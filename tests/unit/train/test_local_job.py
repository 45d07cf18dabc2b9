"""A local stage as a detached job: its supervisor runs apart from whoever started it, records its start and end in
the work dir, stops on a control file, and is LOST when it dies without an end. Real processes, no training."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from support import wait_for
from uniad.errors import TrainingFailed
from uniad.train import local_job
from uniad.train.ending import End
from uniad.trainside.uniad_workdir import read_lease
from uniad.workdir import WorkDir

SLEEP = [sys.executable, "-c", "import time; print('ranks up', flush=True); time.sleep(300)"]


def start_job(tmp_path, argv, job_id="j1", work=None, **extra) -> WorkDir:
    work_dir = WorkDir(work or tmp_path / "work")
    work_dir.path.mkdir(parents=True, exist_ok=True)
    job = {
        "job_id": job_id,
        "stage": "stage1",
        "run_id": "run-a",
        "attempt": 1,
        "work_dir": str(work_dir.path),
        "command": {"argv": argv, "env": {}, "cwd": str(work_dir.path.parent), "backend": "gloo"},
        "total_epochs": 1,
        "stall_timeout_s": 600,
        "submitted": time.time(),
        **extra,
    }
    local_job.start(work_dir, job)
    return work_dir


def running(work_dir: WorkDir, job_id: str) -> dict:
    return wait_for(
        f"job {job_id} running with its output",
        lambda: (
            (state := local_job.describe(work_dir, job_id))["JobState"] == "RUNNING"
            and "ranks up" in open(state.get("output") or os.devnull).read()
            and state
        ),
        30,
        0.2,
    )


def test_a_job_runs_apart_from_its_starter_and_records_its_end(tmp_path):
    work_dir = start_job(tmp_path, [sys.executable, "-c", "print('trained')"])
    state = local_job.wait_for_end(work_dir, "j1", 30)
    assert state["JobState"] == "COMPLETED" and state["end"]["returncode"] == 0, state
    assert "trained" in open(state["output"]).read()
    assert read_lease(str(work_dir.path)) is None  # released at its end


def test_a_stop_request_ends_the_job_and_every_process_of_it_within_seconds(tmp_path):
    work_dir = start_job(tmp_path, SLEEP)
    state = running(work_dir, "j1")
    supervisor = state["pid"]
    assert os.getsid(supervisor) == supervisor  # a session of its own: no signal to its starter's group reaches it
    assert processes_with_token_of(work_dir)
    stopped_at = time.monotonic()
    assert local_job.cancel(work_dir, "j1", "the Airflow task was stopped")["JobState"] == "RUNNING"
    state = local_job.wait_for_end(work_dir, "j1", 15)
    took = time.monotonic() - stopped_at
    assert state["JobState"] == "CANCELLED" and took < 10, (state, took)
    assert "the Airflow task was stopped" in state["end"]["message"]
    wait_for("the supervisor to exit", lambda: not os.path.exists(f"/proc/{supervisor}/stat") or _zombie(supervisor))
    assert not [pid for pid in processes_with_token_of(work_dir) if pid != supervisor]


def test_a_killed_supervisor_is_lost_and_its_ranks_go_with_it(tmp_path):
    work_dir = start_job(tmp_path, SLEEP)
    state = running(work_dir, "j1")
    ranks = processes_with_token_of(work_dir)
    assert ranks
    os.kill(state["pid"], signal.SIGKILL)
    lost = wait_for("the job to be lost", lambda: (s := local_job.describe(work_dir, "j1"))["JobState"] == "LOST" and s)
    assert "is gone" in lost["Reason"]
    wait_for("its ranks to die with it", lambda: not processes_with_token_of(work_dir), 15)
    outcome = local_job.LocalStage.finish(stage_of(tmp_path), {"job_id": "j1", "status": "LOST", "state": lost})
    assert outcome.end is End.RETRY and "resumes from the newest valid checkpoint" in outcome.message


def test_a_worker_starts_no_second_job_on_gpus_a_live_one_holds(tmp_path):
    work_dir = start_job(tmp_path, SLEEP)
    running(work_dir, "j1")
    registry = tmp_path / "worker-jobs"
    local_job.claim_worker(registry, "j1", work_dir, "stage1", "run-a")
    other = WorkDir(tmp_path / "other")
    with pytest.raises(TrainingFailed, match="local job j1 .*still trains on this worker's GPUs") as refused:
        local_job.claim_worker(registry, "j2", other, "stage1", "run-b")
    assert refused.value.retryable
    local_job.cancel(work_dir, "j1")
    local_job.wait_for_end(work_dir, "j1", 15)
    local_job.claim_worker(registry, "j2", other, "stage1", "run-b")  # the ended job left the list
    assert sorted(path.name for path in registry.glob("*.json")) == ["j2.json"]


def test_a_supervisor_that_cannot_start_is_said_at_once(tmp_path):
    work_dir = WorkDir(tmp_path / "work")
    work_dir.path.mkdir()
    with pytest.raises(TrainingFailed, match="local job j1 did not start"):
        local_job.start(work_dir, {"job_id": "j1", "stage": "stage1", "work_dir": str(work_dir.path)})


def test_what_an_end_means():
    stage = stage_of(None)
    failed = {"returncode": 1, "reason": "unhealthy", "retryable": False, "message": "stage1: nan_loss: ..."}
    outcome = stage.finish({"job_id": "j", "status": "FAILED", "state": {"end": failed}})
    assert outcome.end is End.FINAL and outcome.message == failed["message"]
    crashed = dict(failed, reason="failed", retryable=True, message="stage1 training exited with code 134")
    assert stage.finish({"job_id": "j", "status": "FAILED", "state": {"end": crashed}}).end is End.RETRY


def stage_of(tmp_path) -> local_job.LocalStage:
    from uniad.train.launch import StageSpec

    root = str(tmp_path or "/nonexistent")
    spec = StageSpec(uniad_root=root, config="c.py", work_dir=f"{root}/work", max_epochs=1, nproc_per_node=1)
    return local_job.LocalStage(spec, stage="stage1", run_id="run-a", stall_timeout_s=600)


def processes_with_token_of(work_dir: WorkDir) -> list[int]:
    """The live processes whose environment names a run token and whose working directory is the job's."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = open(f"/proc/{pid}/environ", "rb").read()  # noqa: SIM115
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if b"UNIAD_STAGE_RUN_TOKEN=" in environ and cwd == str(work_dir.path.parent) and not _zombie(int(pid)):
            found.append(int(pid))
    return found


def _zombie(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0] == b"Z"  # noqa: SIM115
    except OSError:
        return True


def test_a_new_attempt_re_attaches_to_the_live_job_of_its_work_dir(tmp_path):
    """An attempt that lost its job's id (its worker died before it stored it) finds the job by the work dir's
    lease; one whose id it kept follows it while it runs and takes its result once it completed."""
    work_dir = start_job(tmp_path, SLEEP)
    running(work_dir, "j1")
    stage = stage_of(tmp_path)
    assert stage.work_dir == work_dir
    found = stage.adopt(None)
    assert (found.job_id, found.active) == ("j1", True)
    assert stage.adopt("j1").job_id == "j1"
    local_job.cancel(work_dir, "j1")
    local_job.wait_for_end(work_dir, "j1", 15)
    assert stage.adopt("j1") is None and stage.adopt(None) is None  # cancelled: a new job resumes the stage
    done = start_job(tmp_path, [sys.executable, "-c", "pass"], job_id="j2")
    local_job.wait_for_end(done, "j2", 30)
    assert stage.adopt("j2").completed


def test_a_job_can_be_stopped_by_hand(tmp_path, capsys):
    """``python -m uniad stop WORK_DIR``: for a job no task follows any more (its trigger gone with `dags test`)."""
    from uniad.cli import main

    work_dir = start_job(tmp_path, SLEEP)
    running(work_dir, "j1")
    assert main(["stop", str(work_dir.path)]) == 0
    assert capsys.readouterr().out.strip() == "local job j1: CANCELLED"
    assert not processes_with_token_of(work_dir)
    assert main(["stop", str(work_dir.path)]) == 1  # nothing trains there now


def test_a_stop_request_while_the_job_waits_for_the_lease_is_not_lost(tmp_path):
    """The job waits for the work dir's lease (an earlier attempt still stopping); asked to stop meanwhile, it stops
    its ranks as soon as they start instead of training on."""
    from uniad.trainside.uniad_workdir import Lease

    (tmp_path / "work").mkdir()
    earlier = Lease(str(tmp_path / "work"), "local:earlier").acquire()
    try:
        work_dir = start_job(tmp_path, SLEEP)
        wait_for("the job to wait for the lease", lambda: "waiting up to" in work_dir.local_output("j1").read_text())
        local_job.cancel(work_dir, "j1", "the Airflow task was stopped")
    finally:
        earlier.release()
    state = local_job.wait_for_end(work_dir, "j1", 20)
    assert state["JobState"] == "CANCELLED", state
    assert not processes_with_token_of(work_dir)


def test_a_failed_runs_callback_stops_its_local_jobs_that_no_trigger_follows(tmp_path):
    """The DAG run's failure callback (in the dag-processor) reads the run's plan from XCom and asks the run's live
    local jobs to stop through their work dirs; another run's job trains on."""
    from uniad.run.configs import ConfigFacts
    from uniad.run.params import PipelineParams
    from uniad.run.plan import Plan
    from uniad.run.root import prepare_root
    from uniad.vocabulary import STAGE1_CONFIG, STAGE2_CONFIG
    from uniad_airflow.operators import cancel_jobs_of_run

    params = PipelineParams.from_mapping({"profile": "mini"})
    facts = {
        "stage1": ConfigFacts(STAGE1_CONFIG, evaluation_interval=1),
        "stage2": ConfigFacts(STAGE2_CONFIG, evaluation_interval=1),
    }
    plan = Plan.build(params, prepare_root(params, mini_run_dir=tmp_path / "run"), facts)

    class PreflightXCom:  # the callback's task instance: the dag-processor hands it the run's XComs
        def xcom_pull(self, task_ids: str):
            return plan.to_json() if task_ids == "preflight" else None

    failed = start_job(tmp_path, SLEEP, run_id="failed-run", work=plan.work_dir("stage1").path)
    other = start_job(tmp_path, SLEEP, job_id="j2", run_id="other-run", work=plan.work_dir("stage2").path)
    running(failed, "j1"), running(other, "j2")

    cancel_jobs_of_run({"run_id": "failed-run", "params": {"executor": "local"}})  # no plan to read: nothing
    assert not failed.local_control("j1").exists()
    cancel_jobs_of_run({"run_id": "failed-run", "params": {"executor": "local"}, "ti": PreflightXCom()})

    state = local_job.wait_for_end(failed, "j1", 15)
    assert state["JobState"] == "CANCELLED" and "run failed-run failed" in state["end"]["message"], state
    assert not processes_with_token_of(failed)
    assert local_job.describe(other, "j2")["JobState"] == "RUNNING" and processes_with_token_of(other)
    local_job.cancel(other, "j2")
    assert local_job.wait_for_end(other, "j2", 15)["JobState"] == "CANCELLED"
