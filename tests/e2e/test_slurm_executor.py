"""executor=slurm on a real two-node Slurm cluster on loopback: each stage one batch job over both nodes, followed
from a deferred trigger; the audit trail, the hand-off and the metrics as with the local executor."""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from datetime import datetime
from pathlib import Path

import pytest

from support import BIN, apprise_connection, http_receiver, processes_mentioning, run, training_pools, wait_for

DAG_ID = "uniad_e2e_training"
TWO_NODES = {"profile": "mini", "executor": "slurm", "nnodes": 2, "nproc_per_node": 1}  # one gloo rank on each


def dags_test(slurm_env, conf: dict, timeout: float) -> tuple[int, str]:
    """``airflow dags test`` of the pipeline with ``conf`` in the session's Airflow home: exit code and output."""
    argv = [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)]
    done = run(argv, env=slurm_env, timeout=timeout, check=False)
    return done.returncode, done.stdout + done.stderr


def submit(slurm_env, directory: Path, script: str, *options: str) -> str:
    """A job of ``script`` with sbatch ``options``, its output in ``directory/job.out``; it runs in ``directory``,
    which names its processes in the process table. Its id."""
    argv = ["sbatch", "--parsable", *options, "-D", str(directory), "-o", str(directory / "job.out"), "--wrap", script]
    return run(argv, env=slurm_env).stdout.strip()


def job_state(slurm_env, job_id: str) -> str:
    return run(["scontrol", "show", "job", job_id], env=slurm_env, check=False).stdout


def stage1_trigger(job_id: str, work_dir: Path, **more):
    """The trigger that follows stage 1's Slurm job ``job_id`` in ``work_dir`` from now."""
    from uniad_airflow.triggers import SlurmStageTrigger

    return SlurmStageTrigger(
        job_id=job_id, stage="stage1", work_dir=str(work_dir), total_epochs=1, started=time.time(), **more
    )


async def first_event(trigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def wait_until_idle(slurm_env, why: str) -> None:
    """Both nodes idle again, as the tests after this one need them."""
    idle = ["2", "idle"]
    wait_for(why, lambda: run(["sinfo", "-h", "-o", "%D %t"], env=slurm_env).stdout.split() == idle, 60, 1)


def test_both_stages_run_as_two_node_jobs(airflow_home, slurm_env, tmp_path):
    root = tmp_path / "uniad-mini"
    conf = {
        **TWO_NODES,
        "uniad_root": str(root),
        "stage1_epochs": 2,
        "stage2_epochs": 1,
    }
    returncode, output = dags_test(slurm_env, conf, timeout=900)
    assert returncode == 0, output[-6000:]
    assert "Slurm: partition uniad, 2 node(s)" in output
    # The deployment's policy took the Slurm stages out of the GPU workers' pool (uniad_airflow.policy).
    assert training_pools(airflow_home) == dict.fromkeys(["stage1_train", "stage2_train"], ("default_pool", 1))
    for work, epochs in (("stage1_track_map/full_track_map", 2), ("stage2_e2e/full_e2e", 1)):
        work_dir = root / "projects/work_dirs" / work
        (job,) = [json.loads(line) for line in (work_dir / "slurm_jobs.jsonl").read_text().splitlines()]
        assert (job["state"], job["nodes"], job["nnodes"], job["attempt"]) == ("COMPLETED", "n[1-2]", 2, 1), job
        assert f"submitted Slurm job {job['job_id']}" in output
        job_output = (work_dir / f"slurm-{job['job_id']}.out").read_text()
        assert "2 node(s) ['n1', 'n2'], rendezvous 127.0.0.1:" in job_output
        meta, *records = [json.loads(line) for line in next(work_dir.glob("*.log.json")).read_text().splitlines()]
        assert records[-1]["mode"] == "val" and records[-1]["epoch"] == epochs
        assert "world_size: 2" in meta["env_info"]  # one rank on each of the two nodes
    provenance = json.loads((root / "ckpts/full_track_map.pth.provenance.json").read_text())
    assert provenance["epoch"] == 2
    assert processes_mentioning(str(root)) == []


def test_nan_cancels_the_job_from_the_trigger_and_fails_without_retry(airflow_home, slurm_env, tmp_path):
    root = tmp_path / "uniad-mini-nan"
    conf = {
        **TWO_NODES,
        "uniad_root": str(root),
        "stage1_epochs": 8,  # far more left after the fault than the cancel may take, however slow the machine
        "stage1_cfg_options": ["fault_injection.kind=nan_loss", "fault_injection.epoch=2", "fault_injection.iter=5"],
    }
    returncode, output = dags_test(slurm_env, conf, timeout=600)
    assert returncode != 0
    assert "non_finite_loss: loss is nan at epoch 2" in output and "cancelling it" in output, output[-4000:]
    assert "AirflowFailException" in output  # no retry: NaN comes back on a plain retry
    assert output.count("submitted Slurm job") == 1
    work_dir = root / "projects/work_dirs/stage1_track_map/full_track_map"
    (job,) = [json.loads(line) for line in (work_dir / "slurm_jobs.jsonl").read_text().splitlines()]
    assert job["state"] == "unhealthy"
    state = run(["scontrol", "show", "job", job["job_id"]], env=slurm_env).stdout
    assert "JobState=CANCELLED" in state, state
    # Cancelled promptly, timed by the clocks of the log and of Slurm rather than by how many iterations a loaded
    # machine gets through meanwhile: the NaN is logged at epoch 2 iter 10 and the trigger polls every 5 s.
    text_log = next(work_dir.glob("*.log.json")).with_suffix("").read_text()
    logged = re.search(r"^(\S+ \S+),\d+ - \S+ - INFO - Epoch \[2\]\[10/", text_log, re.MULTILINE)
    ended = re.search(r"EndTime=(\S+)", state)
    assert logged and ended, (text_log[-2000:], state)
    assert job["end"] == ended[1]
    latency = datetime.fromisoformat(ended[1]) - datetime.fromisoformat(logged[1])
    assert latency.total_seconds() <= 20, (logged[0], ended[0])
    records = [json.loads(line) for line in next(work_dir.glob("*.log.json")).read_text().splitlines()[1:]]
    assert records[-1]["epoch"] < 8
    assert processes_mentioning(str(root)) == []


@pytest.mark.parametrize("job_ends_first", [False, True])
def test_on_kill_cancels_the_job_and_records_how_it_ended(slurm_env, tmp_path, monkeypatch, job_ends_first):
    """The trigger's on_kill (task marked failed or cleared) on a real job: a running one is cancelled and recorded
    CANCELLED with its end; one that had already completed keeps COMPLETED in the audit trail."""
    from uniad.train import slurm
    from uniad.workdir import WorkDir

    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    work_dir = WorkDir(tmp_path)
    marker = tmp_path / "job-ran"
    script = "true" if job_ends_first else f"touch {marker}; exec sleep 300"
    job_id = submit(slurm_env, tmp_path, script, "-N1")
    slurm.record_job(work_dir, job_id, attempt=1, state="PENDING", nnodes=1)
    reached = "JobState=COMPLETED" if job_ends_first else "JobState=RUNNING"
    wait_for(
        f"job {job_id} to reach {reached}",
        lambda: reached in job_state(slurm_env, job_id) and (job_ends_first or marker.exists()),
        60,
    )

    assert job_ends_first or processes_mentioning(str(tmp_path))  # the check below can see the running job
    trigger = stage1_trigger(job_id, tmp_path, stall_timeout_s=600, later_epochs=0)
    asyncio.run(trigger.on_kill())

    (line,) = slurm.read_jobs(work_dir)
    assert line["state"] == ("COMPLETED" if job_ends_first else "CANCELLED"), line
    assert line["end"] not in (None, "Unknown") and line["nodes"], line
    # The job's process is killed, not left to run.
    wait_for("the cancelled job's process to end", lambda: not processes_mentioning(str(tmp_path)), 60)


def test_a_failed_runs_callback_cancels_the_jobs_no_trigger_follows(slurm_env, tmp_path, monkeypatch):
    """The DAG run's failure callback on real jobs: the run's stage job that no trigger follows (its task marked
    failed before a triggerer picked the trigger up) is cancelled and recorded CANCELLED; another run's job trains
    on."""
    from uniad.train import slurm
    from uniad.workdir import WorkDir
    from uniad_airflow.operators import cancel_jobs_of_run

    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    jobs = {}
    for run_id in ("failed-run", "other-run"):
        work_dir = WorkDir(tmp_path / run_id)
        work_dir.path.mkdir()
        name, comment = slurm.job_name("stage2", run_id), slurm.job_comment(1, work_dir)
        job_id = submit(slurm_env, work_dir.path, "exec sleep 300", "-N1", f"--job-name={name}", f"--comment={comment}")
        slurm.record_job(work_dir, job_id, attempt=1, state="PENDING", nnodes=1)
        jobs[run_id] = (work_dir, job_id)
    wait_for("the jobs to start", lambda: all(processes_mentioning(str(d.path)) for d, _ in jobs.values()), 60)

    cancel_jobs_of_run({"run_id": "failed-run", "params": {"executor": "slurm"}})

    (work_dir, job_id), (other_dir, other_id) = jobs["failed-run"], jobs["other-run"]
    wait_for("the failed run's job to be cancelled", lambda: "JobState=CANCELLED" in job_state(slurm_env, job_id), 30)
    (line,) = slurm.read_jobs(work_dir)
    assert line["state"] == "CANCELLED" and line["end"] not in (None, "Unknown"), line
    wait_for("the cancelled job's process to end", lambda: not processes_mentioning(str(work_dir.path)), 60)
    assert "JobState=RUNNING" in job_state(slurm_env, other_id)
    assert slurm.read_jobs(other_dir)[0]["state"] == "PENDING" and processes_mentioning(str(other_dir.path))
    run(["scancel", other_id], env=slurm_env)


def test_the_controller_away_is_no_end_and_a_new_attempt_adopts_the_job(slurm_env, tmp_path, monkeypatch):
    """slurmctld stopped for 60 s while a stage's job runs, then started again: a trigger with the shipped grace
    (UNIAD_SLURM_CONTROLLER_GRACE_S unset) follows the job through the outage to COMPLETED; one with a 15 s grace
    ends UNREACHABLE (the operator fails it for a retry, recording no end). A new attempt adopts the running job
    even where the audit trail took the outage for its end, as the trail of an earlier version did."""
    import signal

    from uniad.train import slurm
    from uniad.workdir import WorkDir
    from uniad_airflow.settings import slurm_controller_grace_s

    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    monkeypatch.delenv("UNIAD_SLURM_CONTROLLER_GRACE_S", raising=False)
    work_dir, name = WorkDir(tmp_path), slurm.job_name("stage1", "outage")
    marker = tmp_path / "job-ran"
    comment = slurm.job_comment(1, work_dir)
    job_id = submit(
        slurm_env, tmp_path, f"touch {marker}; exec sleep 90", "-N1", f"--job-name={name}", f"--comment={comment}"
    )
    slurm.record_job(work_dir, job_id, attempt=1, state="PENDING", nnodes=1)
    wait_for(f"job {job_id} to start", marker.exists, 60)

    def follower(grace_s: float):
        return stage1_trigger(job_id, tmp_path, poll_s=1, controller_grace_s=grace_s)

    ctld_pid = int((Path(slurm_env["SLURM_CONF"]).parent / "slurmctld.pid").read_text())

    async def outage() -> tuple[dict, dict, float]:
        patient = asyncio.create_task(first_event(follower(slurm_controller_grace_s())))
        impatient = asyncio.create_task(first_event(follower(15)))
        await asyncio.sleep(2)
        os.kill(ctld_pid, signal.SIGTERM)
        stopped_at = time.monotonic()
        gave_up = await asyncio.wait_for(impatient, 90)
        await asyncio.sleep(max(0.0, 60 - (time.monotonic() - stopped_at)))
        assert not patient.done(), patient.result()
        await asyncio.to_thread(run, ["slurmctld"], env=slurm_env)  # its state (the job) is in StateSaveLocation
        away_s = time.monotonic() - stopped_at

        # While the job runs on: the trail as a follower that took the silence for an end left it.
        def running() -> bool:
            return "JobState=RUNNING" in job_state(slurm_env, job_id)

        await asyncio.to_thread(wait_for, "the restarted controller to report the job running", running, 60, 1)
        slurm.record_job(work_dir, job_id, state="UNKNOWN", end="Unknown")
        adopted = await asyncio.to_thread(slurm.unfollowed_job, name, work_dir, 1)
        assert adopted is not None and adopted[0] == job_id and adopted[1]["JobState"] == "RUNNING", adopted
        assert slurm.read_jobs(work_dir)[0]["state"] == "RUNNING"
        return gave_up, await asyncio.wait_for(patient, 180), away_s

    gave_up, followed, away_s = asyncio.run(outage())
    assert gave_up["status"] == slurm.UNREACHABLE and gave_up["away_s"] >= 15, gave_up
    assert followed["status"] == "COMPLETED" and away_s >= 60, (followed, away_s)
    assert [job["job_id"] for job in slurm.read_jobs(work_dir)] == [job_id]  # one job, adopted, never a second
    wait_until_idle(slurm_env, "the cluster to come back idle after the controller's restart")


def test_a_job_pending_too_long_is_alerted_once(slurm_env, tmp_path, monkeypatch):
    """A stage's job held in the queue (sbatch --hold, as a full partition keeps one waiting): once it has waited
    longer than UNIAD_ALERT_PENDING_S, the trigger following it alerts people, once, with Slurm's reason, through
    an apprise connection to an HTTP endpoint on loopback."""
    from uniad.train import slurm

    monkeypatch.setenv("SLURM_CONF", slurm_env["SLURM_CONF"])
    monkeypatch.setenv("UNIAD_ALERT_PENDING_S", "3")
    name = slurm.job_name("stage1", "pending_run")
    job_id = submit(slurm_env, tmp_path, "exec sleep 60", "-N1", "--hold", f"--job-name={name}")
    try:
        with http_receiver() as (port, received):
            monkeypatch.setenv("AIRFLOW_CONN_UNIAD_NOTIFY", apprise_connection(f"json://127.0.0.1:{port}/"))
            trigger = stage1_trigger(job_id, tmp_path, poll_s=1, run_id="pending_run")

            async def follow_for(seconds: float) -> None:
                following = asyncio.create_task(first_event(trigger))
                await asyncio.sleep(seconds)  # many polls past the limit
                assert not following.done(), following.result()  # a pending job is no end
                following.cancel()

            asyncio.run(follow_for(12))
            assert "JobState=PENDING" in job_state(slurm_env, job_id)
    finally:
        run(["scancel", job_id], env=slurm_env)
    (alert,) = received
    assert alert["title"] == "[UniAD] stage1 of pending_run: pending", alert
    assert f"Slurm job {job_id} has waited in the queue" in alert["message"] and "JobHeldUser" in alert["message"]
    wait_until_idle(slurm_env, "the cluster to be idle again")


def pipeline_under_fault(slurm_env, conf: dict, fault=None, timeout: float = 1500) -> dict:
    """``airflow dags test`` of the pipeline with ``conf`` while ``fault()`` runs beside it (its result under
    "fault") and squeue is sampled every 2 s: how many jobs of the run's root were RUNNING at each sample."""
    import threading

    root, running, stop, outcome = conf["uniad_root"], [], threading.Event(), {}

    def sample() -> None:
        while not stop.wait(2):
            listed = run(["squeue", "--noheader", "--states=RUNNING", "--format=%j|%k"], env=slurm_env, check=False)
            running.append(sum(root in line for line in listed.stdout.splitlines()))

    def inject() -> None:
        try:
            outcome["fault"] = fault()
        except BaseException as exc:  # noqa: BLE001 - shown by the test that asked for the fault
            outcome["fault_error"] = exc

    threads = [threading.Thread(target=sample, daemon=True)]
    threads += [threading.Thread(target=inject, daemon=True)] if fault is not None else []
    for thread in threads:
        thread.start()
    try:
        outcome["returncode"], outcome["output"] = dags_test(slurm_env, conf, timeout=timeout)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    if "fault_error" in outcome:
        raise outcome["fault_error"]
    outcome["running"] = running
    return outcome


def train_records(log: Path) -> list[tuple[int, int]]:
    """(epoch, iteration) of each train record of a json log."""
    records = [json.loads(line) for line in log.read_text().splitlines()[1:] if '"mode": "train"' in line]
    return [(record["epoch"], record["iter"]) for record in records]


EPOCHS_PAST_THE_LIMIT = 7


def test_a_stage_longer_than_the_time_limit_stops_at_checkpoints_and_continues(airflow_home, slurm_env, tmp_path):
    """Stage 1 needs several times the 1-minute time limit of its partition: ahead of the limit each job is
    signalled, its ranks write a checkpoint at the next iteration and stop, and the stage continues in a new job
    from there, on the same try, never two at once; no epoch is trained again from scratch after its checkpoint
    existed; the run succeeds and the audit trail links every job to the one it continues."""
    root = tmp_path / "uniad-mini-limit"
    conf = {
        **TWO_NODES,
        "uniad_root": str(root),
        # 7 epochs of 40 iterations whose batches each wait 0.5 s (a slow shared filesystem): 140 s of waiting, 20-50 s
        # of computing and ~15 s of starting, over 3 minutes uninterrupted however loaded the machine is: at least 3x
        # the limit. A 1-minute job is signalled 10-40 s in, after ~15 s of starting, so it trains 10-25 s of it: 7 to
        # 20 jobs (12 here, beside other tests). The lower lr keeps the mini's gradients calm over the restarts.
        "stage1_epochs": EPOCHS_PAST_THE_LIMIT,
        "stage1_cfg_options": [
            "optimizer.lr=0.0005",
            "fault_injection.kind=slow_data",
            "fault_injection.epoch=1",
            "fault_injection.seconds=0.5",
        ],
        "stage2_epochs": 1,
    }
    # The partition's limit, as clusters cap jobs (1 minute: Slurm's smallest); the jobs name none of their own.
    # Slurm checks limits about every 30 s and may signal up to a minute early: a 20 s lead signals 10-40 s in.
    run(["scontrol", "update", "partitionname=uniad", "maxtime=1"], env=slurm_env)
    try:
        started = time.monotonic()
        outcome = pipeline_under_fault({**slurm_env, "UNIAD_SLURM_STOP_SIGNAL_LEAD_S": "20"}, conf)
        took = time.monotonic() - started
    finally:
        run(["scontrol", "update", "partitionname=uniad", "maxtime=unlimited"], env=slurm_env)
    assert outcome["returncode"] == 0, outcome["output"][-6000:]
    work_dir = root / "projects/work_dirs/stage1_track_map/full_track_map"
    jobs = [json.loads(line) for line in (work_dir / "slurm_jobs.jsonl").read_text().splitlines()]
    states = [job["state"] for job in jobs]
    assert len(jobs) >= 3 and states[-1] == "COMPLETED" and set(states[:-1]) <= {"TIME_LIMIT", "TIMEOUT"}, jobs
    assert "TIME_LIMIT" in states  # at least one stopped at its own checkpoint on the signal
    assert all(job["attempt"] == 1 for job in jobs)  # continued, not retried
    assert [job.get("continues") for job in jobs] == [None] + [job["job_id"] for job in jobs[:-1]]
    assert max(outcome["running"]) == 1 and outcome["running"].count(1) > 10, outcome["running"]
    # Each job trained from the checkpoint its predecessor left, one per job: its log starts right after it. A job
    # stopped on the signal lost nothing it had logged; one whose limit came first lost at most its last epoch.
    logs = sorted(work_dir.glob("*.log.json"))
    assert len(logs) == len(jobs), logs
    for before, job, log, previous in zip(jobs, jobs[1:], logs[1:], logs):
        where = re.search(r"epoch_(\d+)(?:_iter_(\d+))?\.pth$", job["resume_from"])
        epoch, done = int(where[1]), int(where[2] or 0)
        resumed_at = (epoch, done) if where[2] else (epoch + 1, 0)  # (epoch, iterations of it done)
        first, last = train_records(log)[:1], train_records(previous)[-1:]
        # A job whose time ran out after the last epoch's checkpoint (while it evaluated) leaves nothing to train.
        if resumed_at[0] <= EPOCHS_PAST_THE_LIMIT:
            assert first and first[0][0] == resumed_at[0] and first[0][1] > resumed_at[1], (job, log.name, first)
        if before["state"] == "TIME_LIMIT" and last:
            assert last[0] <= resumed_at or last[0] == (resumed_at[0] - 1, 40), (before, last, resumed_at)
    assert json.loads((root / "ckpts/full_track_map.pth.provenance.json").read_text())["epoch"] == EPOCHS_PAST_THE_LIMIT
    assert processes_mentioning(str(root)) == []
    print(
        f"{len(jobs)} jobs for {EPOCHS_PAST_THE_LIMIT} epochs in {took:.0f} s ({states}); running: {outcome['running']}"
    )


def release_the_requeue_hold(slurm_env, job_id: str, requeued_at: float) -> None:
    """Slurm holds a requeued job for about two minutes (Reason=BeginTime: measured 144 s from requeue to the next
    start here), which is Slurm's and nothing of the pipeline's: an admin's release keeps the suite's time for what
    the tests check. Not before the earlier start's processes are gone (PENDING, no longer COMPLETING), and not within
    the second of the requeue: slurmd revokes the job's credentials as of that second, and a start in it is refused
    ("Killing non-startable batch job: Job credential revoked", seen under the suite's load when the hold was released
    at once), which is what Slurm's hold guards against."""

    def held() -> bool:
        state = job_state(slurm_env, job_id)
        return "JobState=PENDING" in state and "Reason=BeginTime" in state

    wait_for(f"job {job_id} to pend", held, 120, 0.5)
    time.sleep(max(0.0, int(requeued_at) + 2 - time.time()))
    run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], env=slurm_env)


def test_a_requeued_job_and_one_that_loses_a_node_go_on_from_the_checkpoints_they_wrote(
    airflow_home, slurm_env, tmp_path
):
    """The running 2-node stage-1 job, twice put back in the queue by Slurm: ``scontrol requeue`` inside epoch 2 (what
    preemption does on clusters with JobRequeue=1), then node n2 set DOWN inside epoch 4 (``NODE_FAIL``, requeued).
    Each time Slurm starts the same job again, its batch step resumes from the newest checkpoint the job wrote, not
    from the job's first arguments, on healthy nodes; the trigger follows the new start's log, at most the checkpoint
    interval is lost, never two jobs run at once, and the run succeeds. (One pipeline run for both faults.)"""
    root = tmp_path / "uniad-mini-requeue"
    work_dir = root / "projects/work_dirs/stage1_track_map/full_track_map"
    conf = {
        **TWO_NODES,
        "uniad_root": str(root),
        "stage1_epochs": 5,  # 3x the data: 120 iterations an epoch, ~7 s on a quiet machine
        "stage1_cfg_options": ["data.train.num_samples=960", "optimizer.lr=0.0005"],
        "stage2_epochs": 1,
        "checkpoint_interval_iters": 25,
    }

    def starts(job_id: str) -> list[dict]:
        marker = work_dir / f"slurm-{job_id}.job.json"
        return json.loads(marker.read_text())["starts"] if marker.exists() else []

    def started_again(job_id: str, faulted_at: float, count: int) -> float:
        """Release the hold, wait for the job's next start; seconds from the fault to that start."""
        release_the_requeue_hold(slurm_env, job_id, faulted_at)
        wait_for(f"job {job_id}'s start {count}", lambda: len(starts(job_id)) == count, 600, 1)
        return time.time() - faulted_at

    def requeue_then_lose_a_node() -> list[float]:
        wait_for("a checkpoint inside epoch 2", lambda: list(work_dir.glob("epoch_2_iter_*.pth")), 600, 0.2)
        (job,) = [json.loads(line) for line in (work_dir / "slurm_jobs.jsonl").read_text().splitlines()]
        job_id = job["job_id"]
        run(["scontrol", "requeue", job_id], env=slurm_env)
        times = [started_again(job_id, time.time(), 2)]
        wait_for("a checkpoint inside epoch 4", lambda: list(work_dir.glob("epoch_4_iter_*.pth")), 600, 0.2)
        run(["scontrol", "update", "nodename=n2", "state=down", "reason=lost in a test"], env=slurm_env)
        lost_at = time.time()
        try:
            # Slurm kills it and puts it back in the queue: NODE_FAIL, requeued.
            wait_for(f"job {job_id} to leave n2", lambda: "JobState=RUNNING" not in job_state(slurm_env, job_id), 60)
        finally:
            # The node comes back (ReturnToService=2 may have returned it already: then Slurm answers "Invalid node
            # state specified"); the job waits for two healthy nodes meanwhile.
            run(["scontrol", "update", "nodename=n2", "state=resume"], env=slurm_env, check=False)
        times.append(started_again(job_id, lost_at, 3))
        return times

    outcome = pipeline_under_fault(slurm_env, conf, requeue_then_lose_a_node)
    assert outcome["returncode"] == 0, outcome["output"][-6000:]
    jobs = [json.loads(line) for line in (work_dir / "slurm_jobs.jsonl").read_text().splitlines()]
    outputs = {path.name: path.read_text()[-3000:] for path in sorted(work_dir.glob("slurm-*.out"))}
    assert len(jobs) == 1, (jobs, outputs, outcome["output"][-8000:])
    (job,) = jobs
    assert (job["state"], job["restarts"], job["attempt"]) == ("COMPLETED", 2, 1), job
    recorded = starts(job["job_id"])
    assert [start["restart"] for start in recorded] == [0, 1, 2], recorded
    assert [start["end"]["reason"] != "completed" for start in recorded] == [True, True, False], recorded
    logs = sorted(work_dir.glob("*.log.json"))
    assert len(logs) == 3, logs
    lost = []
    for before, start, log, in_epoch in zip(logs, recorded[1:], logs[1:], (2, 4)):
        epochs_done, done = start["position"]
        # From inside the epoch of the fault, the newest checkpoint: the one the job wrote there, on both nodes.
        assert (epochs_done + 1, start["nodes"]) == (in_epoch, ["n1", "n2"]) and done > 0, start
        assert start["resume_from"].endswith(f"epoch_{in_epoch}_iter_{done}.pth"), start
        trained, resumed = train_records(before)[-1], train_records(log)[0]
        assert resumed[0] == in_epoch and resumed[1] > done, (resumed, start)
        # Iterations logged after the checkpoint (the log is every 10 iterations, so a checkpoint may be the newer).
        lost.append(max(0, (trained[0] - 1) * 120 + trained[1] - (epochs_done * 120 + done)))
        assert lost[-1] <= 25, (trained, start)
    for restart in (1, 2):
        assert f"job {job['job_id']} was requeued (restart {restart}" in outcome["output"]
    assert max(outcome["running"]) == 1, outcome["running"]
    assert json.loads((root / "ckpts/full_track_map.pth.provenance.json").read_text())["epoch"] == 5
    assert processes_mentioning(str(root)) == []
    wait_until_idle(slurm_env, "n2 to come back idle")
    again = [round(seconds, 1) for seconds in outcome["fault"]]
    print(f"requeued, then a node lost: each started again {again} s after the fault; lost {lost} logged iterations")
