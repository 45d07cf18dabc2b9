"""The triggers that follow a stage's job from Airflow's triggerer, so no worker slot is held while it trains: a
Slurm job (``SlurmStageTrigger``) or a detached local job on a GPU worker (``LocalJobTrigger``).

It polls the job's state and follows the stage through the follower the local executor uses too
(``uniad.train.follow``): progress with ETA in the task log (at most once a minute: multi-day task logs stay small),
the resume check, and the live health watch (NaN/Inf, gradient explosion, stall) that cancels the job with
``scancel`` when it fires. A job Slurm requeues is followed on into its next start (its new log, the resume point its
batch step chose); a job the controller forgot is resolved from ``sacct`` or the batch step's marker. Everything it
needs is in ``serialize()``, so a triggerer restart
resumes following the same job. Marking the task failed or clearing it calls ``on_kill``, which cancels the job
(a task marked failed before a triggerer ran its trigger: the DAG's failure callback, ``cancel_jobs_of_run``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from uniad_airflow.settings import alert_pending_s, tracking_uri

PROGRESS_EVERY_S = 60.0
TRACK_EVERY_S = 30.0  # a batch of metrics to MLflow at most this often


class RecordTracker:
    """Batches the follower's train records for the stage's MLflow run (``uniad.tracking``), off the event loop."""

    def __init__(self, tracking_run: str | None) -> None:
        self.run = tracking_run
        self.tracking = None  # a uniad.tracking.Tracking once its URI was read (off the event loop: a connection)
        self.pending: list[dict] = []
        self.after: int | None = None  # the last step logged; None until read from the run
        self.sent_at = 0.0

    async def add(self, records: list[dict], *, flush: bool = False) -> None:
        from uniad.tracking import Tracking

        if self.run is None:
            return
        self.pending += records
        now = time.monotonic()
        if not self.pending or (not flush and now - self.sent_at < TRACK_EVERY_S):
            return
        self.sent_at = now
        if self.tracking is None:
            self.tracking = Tracking(await asyncio.to_thread(tracking_uri))
        if flush:  # the stage's last records: one more try even while tracking pauses after a failure
            self.tracking.try_again()
        if self.after is None:
            self.after = await asyncio.to_thread(self.tracking.logged_step, self.run)
            if self.after is None:
                return  # tracking down: the records wait for the next batch
        logged = await asyncio.to_thread(self.tracking.log_records, self.run, self.pending, self.after)
        if logged is not None:
            self.after, self.pending = logged, []


class StageJobTrigger(BaseTrigger):
    """What every trigger that follows a stage's job is built with: the job, the stage and its work dir, where the
    attempt's log starts (``started``, epoch seconds), the stall limit and the epochs of the stages after it (for
    the pipeline ETA). ``serialize()`` holds all of it: a restarted triggerer follows the same job again."""

    def __init__(
        self,
        *,
        job_id: str,
        stage: str,
        work_dir: str,
        total_epochs: int,
        started: float,
        stall_timeout_s: float = 600.0,
        later_epochs: int | None = None,
        poll_s: float = 5.0,
        run_id: str | None = None,
        tracking_run: str | None = None,
    ) -> None:
        super().__init__()
        self.job_id = job_id
        self.run_id = run_id  # for alerts (None: a trigger serialized before they were sent from here)
        self.tracking_run = tracking_run  # the stage's MLflow run (None: tracking off or down when it deferred)
        self.stage = stage
        self.work_dir = work_dir
        self.total_epochs = total_epochs
        self.started = started
        self.stall_timeout_s = stall_timeout_s
        self.later_epochs = later_epochs
        self.poll_s = poll_s

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "job_id": self.job_id,
                "stage": self.stage,
                "work_dir": self.work_dir,
                "total_epochs": self.total_epochs,
                "started": self.started,
                "stall_timeout_s": self.stall_timeout_s,
                "later_epochs": self.later_epochs,
                "poll_s": self.poll_s,
                "run_id": self.run_id,
                "tracking_run": self.tracking_run,
                **self.more(),
            },
        )

    def more(self) -> dict[str, Any]:
        """A subclass's own arguments."""
        return {}

    def follower(self, work_dir, resume_point: tuple[int, int] | None = None):
        """The one follower (``uniad.train.follow``) of this stage's log from the job's start."""
        from uniad.health.monitor import Thresholds
        from uniad.train.follow import StageFollower

        return StageFollower(
            work_dir,
            self.stage,
            self.total_epochs,
            started=self.started,
            thresholds=Thresholds(stall_min_s=self.stall_timeout_s),
            later_epochs=self.later_epochs,
            resume_point=resume_point,
        )

    async def tell(self, follower, told: set[str]) -> None:
        """Say each new finding of the health watch in the task log once, and alert people to it (at most once per
        kind and stage of the run: ``uniad_airflow.alerts``). ``told``: the codes this trigger said already."""
        from uniad.health.monitor import ERROR

        for finding in follower.monitor.findings:
            if finding.code in told:
                continue
            told.add(finding.code)
            self.log.warning("%s: %s: %s", self.stage, finding.code, finding.message)
            await self.alert(
                finding.code, finding.message, failure=finding.severity == ERROR, epoch=finding.epoch, it=finding.iter
            )

    def tracker(self):
        """Logs the train records the follower reads to the stage's MLflow run, at most every ``TRACK_EVERY_S``
        (a batch), from where any earlier follower of the stage stopped."""
        return RecordTracker(self.tracking_run)

    async def alert(self, kind: str, message: str, **how: Any) -> None:
        """Alert people, off the triggerer's event loop; the task log says what became of it."""
        from uniad_airflow.alerts import StageAlerts

        if self.run_id is None:
            return
        outcome = await asyncio.to_thread(
            StageAlerts(self.work_dir, self.run_id, self.stage).alert, kind, message, **how
        )
        if outcome is not None:
            self.log.info("%s", outcome)


class SlurmStageTrigger(StageJobTrigger):
    def __init__(self, *, controller_grace_s: float = 900.0, **facts: Any) -> None:
        super().__init__(**facts)
        self.controller_grace_s = controller_grace_s

    def more(self) -> dict[str, Any]:
        return {"controller_grace_s": self.controller_grace_s}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from uniad.train import slurm
        from uniad.workdir import WorkDir

        work_dir = WorkDir(Path(self.work_dir))
        follower = self.follower(work_dir)
        output = work_dir.slurm_output(self.job_id)
        logged_at = 0.0
        away_since: float | None = None  # when the controller stopped answering
        misses = 0
        restarts = None  # Slurm's count of the job's restarts, as last seen
        starts_seen = 0  # starts the batch step recorded
        told: set[str] = set()
        pending_limit, told_pending = alert_pending_s(), False
        tracker = self.tracker()
        self.log.info("following Slurm job %s of %s (work dir %s)", self.job_id, self.stage, self.work_dir)
        while True:
            asked_at = time.monotonic()  # scontrol itself keeps trying a silent controller for a while
            state = await slurm.ajob_state(self.job_id)
            if state["JobState"] == slurm.UNREACHABLE:
                # No answer is not an end: the job runs on under slurmd while the controller restarts.
                now = time.monotonic()
                if away_since is None:
                    away_since = asked_at
                    self.log.warning(
                        "job %s: Slurm's controller does not answer (%s); following on for up to %.0f s",
                        self.job_id,
                        state.get("Reason"),
                        self.controller_grace_s,
                    )
                away = now - away_since
                if away >= self.controller_grace_s:
                    yield TriggerEvent(
                        {"job_id": self.job_id, "status": slurm.UNREACHABLE, "away_s": away, "state": state}
                    )
                    return
                # Back off to once a minute: a controller coming back is not helped by every trigger asking at once.
                misses += 1
                await asyncio.sleep(min(self.poll_s * 2**misses, 60.0, self.controller_grace_s - away))
                continue
            if away_since is not None:
                self.log.info(
                    "job %s: Slurm's controller answers again after %.0f s: %s",
                    self.job_id,
                    time.monotonic() - away_since,
                    state["JobState"],
                )
                away_since, misses = None, 0
            if state["JobState"] == "UNKNOWN":  # forgotten (older than MinJobAge): accounting or the job's marker
                state = await asyncio.to_thread(slurm.forgotten_job_state, self.job_id, work_dir)
                self.log.warning("job %s: the controller no longer knows it; %s", self.job_id, state.get("Reason"))
            seen = state.get("Restarts")
            if seen is not None and seen != restarts:
                if restarts is not None:
                    # Slurm put the job back in the queue (preemption, a lost node, scontrol requeue): it starts
                    # again under the same id, from the checkpoint its batch step chooses then.
                    self.log.warning(
                        "job %s was requeued (restart %s, %s): following its next start", self.job_id, seen, state
                    )
                    follower.monitor.wait_for_records()
                    await asyncio.to_thread(slurm.record_job, work_dir, self.job_id, restarts=int(seen))
                restarts = seen
            marker = work_dir.job_marker(self.job_id) or {}
            starts = marker.get("starts") or []
            if len(starts) > starts_seen:
                latest = starts[-1]
                position = latest.get("position")
                resume_point = (position[0] + 1, position[1]) if position else None
                if starts_seen == 0:
                    follower.started, follower.resume_point = min(follower.started, latest["time"]), resume_point
                else:
                    follower.restart(latest["time"], resume_point)
                self.log.info(
                    "job %s started (restart %s) on %s, resuming from %s",
                    self.job_id,
                    latest.get("restart"),
                    latest.get("nodes"),
                    latest.get("resume_from") or "nothing",
                )
                starts_seen = len(starts)
            now = time.monotonic()
            for progress in follower.poll():
                if now - logged_at >= PROGRESS_EVERY_S:
                    self.log.info("job %s on %s: %s", self.job_id, state.get("NodeList"), progress.line())
                    logged_at = now
            await tracker.add(follower.records, flush=state["JobState"] not in slurm.ACTIVE)
            submitted = slurm.submit_time(state)
            if (
                state["JobState"] == "PENDING"
                and submitted
                and time.time() - submitted > pending_limit
                and not told_pending
            ):
                told_pending = True
                await self.alert(
                    "pending",
                    f"Slurm job {self.job_id} has waited in the queue for {time.time() - submitted:.0f} s (reason "
                    f"{state.get('Reason')}; alert after UNIAD_ALERT_PENDING_S={pending_limit:.0f} s)",
                )
            if state["JobState"] in slurm.ACTIVE:
                output_at = output.stat().st_mtime if output.exists() else None
                # The stall clock only runs while the job runs; output activity counts as liveness.
                finding = follower.finding(
                    now - (time.time() - output_at) if output_at else None, running=state["JobState"] == "RUNNING"
                )
                await self.tell(follower, told)  # errors are alerted before the stop
                if finding is not None:
                    self.log.error("job %s: cancelling it for %s", self.job_id, finding.code)
                    await slurm.acancel(self.job_id)
                    state = await slurm.ajob_state(self.job_id)  # the audit trail gets the cancelled job's end time
                    yield TriggerEvent(
                        {"job_id": self.job_id, "status": "unhealthy", "finding": asdict(finding), "state": state}
                    )
                    return
                await asyncio.sleep(self.poll_s)
                continue
            status = await asyncio.to_thread(slurm.end_status, state, work_dir, self.job_id)
            yield TriggerEvent({"job_id": self.job_id, "status": status, "state": state})
            return

    async def on_kill(self) -> None:
        """The task was marked failed or cleared: the job must not train on alone; its end goes to the audit trail
        (no execute_complete will record it)."""
        from uniad.train.slurm import UNREACHABLE, cancel_job
        from uniad.workdir import WorkDir

        self.log.warning("the task was stopped: cancelling Slurm job %s", self.job_id)
        state = await asyncio.to_thread(cancel_job, WorkDir(Path(self.work_dir)), self.job_id)
        if state["JobState"] == UNREACHABLE:
            self.log.error(
                "Slurm's controller does not answer (%s): job %s may train on; the run's failure callback cancels "
                "it if the run fails, else cancel it with scancel %s",
                state.get("Reason"),
                self.job_id,
                self.job_id,
            )


class LocalJobTrigger(StageJobTrigger):
    """Follows a stage's detached local job (``uniad.train.local_job``) from the triggerer: the ranks' output into the
    task log as it is written, progress with ETA (at most once a minute, and the last), the health watch's findings.
    The job's supervisor beside the ranks stops them on a fatal finding or a stall itself, so that holds while no
    triggerer runs. The job's end (its supervisor's record), or its supervisor gone without one (``LOST``: the host
    lost, a SIGKILL), is the event. A triggerer restart follows the same job again from ``serialize()``; marking the
    task failed or clearing it calls ``on_kill``, which stops the job through its control file."""

    def __init__(self, *, poll_s: float = 2.0, **facts: Any) -> None:
        super().__init__(poll_s=poll_s, **facts)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from uniad.train import local_job
        from uniad.workdir import WorkDir

        work_dir = WorkDir(Path(self.work_dir))
        follower = self.follower(work_dir, local_job.resume_point(work_dir, self.job_id))
        output = local_job.OutputTail()
        logged_at, last, told = 0.0, None, set()
        tracker = self.tracker()
        self.log.info("following local job %s of %s (work dir %s)", self.job_id, self.stage, self.work_dir)
        while True:
            state = await asyncio.to_thread(local_job.describe, work_dir, self.job_id)
            for line in await asyncio.to_thread(output.read, state.get("output")):
                self.log.info("%s", line)
            now = time.monotonic()
            for progress in follower.poll():
                last = progress
                if now - logged_at >= PROGRESS_EVERY_S:
                    self.log.info("%s", progress.line())
                    logged_at = now
            await tracker.add(follower.records, flush=state["JobState"] not in local_job.ACTIVE)
            await self.tell(follower, told)
            if state["JobState"] in local_job.ACTIVE:
                await asyncio.sleep(self.poll_s)
                continue
            for line in await asyncio.to_thread(output.read, state.get("output"), True):
                self.log.info("%s", line)
            if last is not None:
                self.log.info("%s", last.line())
            stopped_for = (state.get("end") or {}).get("finding")
            if stopped_for:  # what the supervisor stopped the ranks for (a stall: only it watches the clock)
                await self.alert(stopped_for["code"], stopped_for["message"], failure=True)
            yield TriggerEvent({"job_id": self.job_id, "status": state["JobState"], "state": state})
            return

    async def on_kill(self) -> None:
        """The task was marked failed or cleared: its job must not train on alone."""
        from uniad.train import local_job
        from uniad.workdir import WorkDir

        self.log.warning("the task was stopped: stopping local job %s", self.job_id)
        work_dir = WorkDir(Path(self.work_dir))
        await asyncio.to_thread(local_job.cancel, work_dir, self.job_id, "the Airflow task was stopped")
        state = await asyncio.to_thread(local_job.wait_for_end, work_dir, self.job_id)
        self.log.warning("local job %s: %s", self.job_id, state["JobState"])
