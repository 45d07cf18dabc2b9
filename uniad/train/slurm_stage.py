"""A stage as Slurm jobs, behind the operations every way of running a stage has (``uniad.train.executor``): submit
or adopt, describe, cancel, and classify how a job ended. The Airflow operator asks these and defers; the trigger
follows the job with the follower a local job has too (``uniad.train.follow``).

An attempt of the stage (a task try) adopts before it submits: the job the task state store names, or any job of
the stage and work dir the cluster reports active, or one that ended while no task followed it; only then does it
submit a job of its own, which resumes from the newest valid checkpoint. A job that ended PREEMPTED, NODE_FAIL,
TIMEOUT or TIME_LIMIT is continued in a new job on the same attempt, up to ``max_continuations`` over the stage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping

from ..errors import TrainingFailed
from ..workdir import WorkDir
from . import slurm
from .ending import End, classify_end
from .executor import Job, Outcome
from .launch import SlurmSettings, StageSpec, build_slurm_job, ship_trainside
from .probes import check_data_files
from .process import OOM_ADVICE, out_of_memory
from .resume import plan_attempt

logger = logging.getLogger(__name__)


class SlurmStage:
    """One stage of one run on Slurm (a ``StageExecutor``). ``spec`` has the submitting worker's training
    interpreter; ``env`` is what the job's ranks get (``slurm.job_environment``)."""

    executor = "slurm"
    label = "Slurm"  # as the task log says it: "Slurm job <id>"

    def __init__(
        self,
        spec: StageSpec,
        settings: SlurmSettings,
        *,
        stage: str,
        run_id: str,
        env: Mapping[str, str],
        stop_signal_lead_s: int = 0,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.spec, self.settings, self.stage, self.run_id = spec, settings, stage, run_id
        self.env, self.stop_signal_lead_s = env, stop_signal_lead_s
        self.work_dir = WorkDir(spec.work_dir_path)
        self.name = slurm.job_name(stage, run_id)
        self._emit = emit or logger.info

    # ------------------------------------------------------------------------------------- describe / adopt
    def describe(self, job_id: str) -> dict[str, str]:
        """The job's state: ``scontrol``'s, else (a job the controller forgot) accounting's or its marker's."""
        state = slurm.job_state(job_id)
        if state["JobState"] == "UNKNOWN":
            state = slurm.forgotten_job_state(job_id, self.work_dir)
        return state

    def adopt(self, known: str | None, started: float | None = None) -> Job | None:
        """The job this attempt follows instead of submitting: ``known`` (the task state store's) while it runs or
        once it completed, else any job of the stage and work dir the cluster reports active or the audit trail
        does not know to have ended; None when there is none to follow. Raises (retryable) while the controller
        does not answer about ``known``: submitting then could start a second job beside one that runs on."""
        if known:
            state = self.describe(known)
            if state["JobState"] == slurm.UNREACHABLE:
                raise TrainingFailed(
                    f"{self.stage}: Slurm's controller does not answer about job {known} ({state.get('Reason')}); a "
                    "retry re-attaches to the job once it does"
                )
            if state["JobState"] in slurm.ACTIVE or state["JobState"] == "COMPLETED":
                return Job(known, started or slurm.submit_time(state) or time.time(), state)
            if state["JobState"] != "UNKNOWN":
                slurm.record_end(self.work_dir, known, state, status=slurm.end_status(state, self.work_dir, known))
        # A run of this task lost before it stored the job id, or before it recorded the job's end.
        found = slurm.unfollowed_job(self.name, self.work_dir, nnodes=self.settings.nnodes)
        if found is None:
            return None
        job_id, state = found
        if state["JobState"] not in slurm.ACTIVE and state["JobState"] != "COMPLETED":
            self._emit(f"Slurm job {job_id} ended {state['JobState']} while no task followed it; submitting a new job")
            return None
        return Job(job_id, slurm.submit_time(state) or time.time(), state)

    # ------------------------------------------------------------------------------------------------ submit
    def submit(self, attempt: int, continuing: str | None = None) -> Job:
        """Submit a job of ``attempt`` that resumes from the newest valid checkpoint (``continuing``: the job it
        continues), recorded in the audit trail."""
        planned = plan_attempt(self.spec, self.stage, run_id=self.run_id, nnodes=self.settings.nnodes)
        if planned.resumed_from:
            self._emit(f"attempt {attempt}: {planned.describe()}")
        for line in planned.skipped + planned.warnings:
            logger.warning("%s", line)
        segment = 1 + sum(job.get("attempt") == attempt for job in slurm.read_jobs(self.work_dir))
        spec = planned.spec
        facts = slurm.check_cluster(self.settings, spec.nproc_per_node, needs_gpus=spec.needs_gpus)
        check_data_files(spec)
        # The submit host cannot probe the compute nodes: auto means NCCL where the job has its GPUs.
        backend = spec.backend if spec.backend != "auto" else ("nccl" if self.settings.gpus_per_node else "gloo")
        job_file = self.work_dir.slurm_job_file(attempt, segment)
        argv, job = build_slurm_job(
            spec,
            self.settings,
            backend=backend,
            job_name=self.name,
            comment=slurm.job_comment(attempt, self.work_dir),
            job_file=job_file,
            output=self.work_dir.slurm_output("%j"),
            trainside=ship_trainside(self.work_dir.trainside),
            cpus_per_task=facts["cpus_per_task"],
            env=self.env,
            resume_position=(planned.resumed_epoch, planned.resumed_inner_iter) if planned.resumed_from else None,
            stop_signal_lead_s=self.stop_signal_lead_s,
        )
        job_file.write_text(json.dumps(job, indent=2) + "\n")
        started = time.time()
        job_id = slurm.submit(argv)
        slurm.record_job(
            self.work_dir,
            job_id,
            attempt=attempt,
            state="PENDING",
            partition=facts["partition"],
            nnodes=self.settings.nnodes,
            backend=backend,
            resume_from=planned.resumed_from,
            **({"continues": continuing} if continuing else {}),
        )
        self._emit(f"submitted Slurm job {job_id}: {argv}")
        return Job(job_id, started, {"JobState": "PENDING"})

    def cancel(self, job_id: str, reason: str = "cancelled") -> dict[str, str]:
        """Cancel the job and record it CANCELLED (one that had ended first keeps its end); its state after. (Slurm
        records no reason.)"""
        return slurm.cancel_job(self.work_dir, job_id)

    # ----------------------------------------------------------------------------------------------- the end
    def finish(self, event: dict) -> Outcome:
        """The follower's last event of a job: record the job's end and say what follows. The controller away is
        no end: nothing is recorded and a retry re-attaches to the job."""
        state, job_id, status = event.get("state", {}), event["job_id"], event["status"]
        if status == slurm.UNREACHABLE:
            return Outcome(
                End.RETRY,
                f"{self.stage}: Slurm's controller did not answer about job {job_id} for {event['away_s']:.0f} s "
                f"(UNIAD_SLURM_CONTROLLER_GRACE_S; last: {state.get('Reason')}); a retry re-attaches to the job",
            )
        line = slurm.record_end(self.work_dir, job_id, state, status=status)
        self._emit(f"Slurm job {job_id}: {line}")
        if status == "COMPLETED":
            latest = self.work_dir.latest_checkpoint()
            result = {
                "stage": self.stage,
                "work_dir": str(self.work_dir.path),
                "executor": "slurm",
                "job_id": job_id,
                "nodes": state.get("NodeList"),
                "restarts": line.get("restarts", 0),
                "segments": len(slurm.read_jobs(self.work_dir)),
                "latest_checkpoint": str(latest) if latest else None,
            }
            return Outcome(End.COMPLETED, f"Slurm job {job_id} completed", result)
        continued = sum(bool(job.get("continues")) for job in slurm.read_jobs(self.work_dir))
        tail = slurm.tail(self.work_dir.slurm_output(job_id))
        finding = (event.get("finding") or {}).get("code") if status == "unhealthy" else None
        oom = status == "OUT_OF_MEMORY" or out_of_memory(tail)
        end = classify_end(finding=finding, out_of_memory=oom, continued=status in slurm.CONTINUED)
        if end is End.CONTINUE and continued < self.settings.max_continuations:
            return Outcome(
                End.CONTINUE,
                f"Slurm job {job_id} ended {status} (reason {state.get('Reason')}): continuing the stage in a new "
                f"job from its newest checkpoint (continuation {continued + 1} of at most "
                f"{self.settings.max_continuations})",
            )
        last_lines = "\nlast lines of the job's output:\n" + "\n".join(tail) if tail else ""
        if end is End.CONTINUE:
            end, last_lines = End.RETRY, f" (after {continued} continuation(s), slurm_max_continuations){last_lines}"
        if status == "unhealthy":
            message = f"{self.stage}: Slurm job {job_id} cancelled by the health watch: {finding}: "
            return Outcome(end, message + event["finding"]["message"] + last_lines)
        if oom:
            message = f"{self.stage}: Slurm job {job_id} ended {status}: {OOM_ADVICE}{last_lines}"
            return Outcome(end, message, cause="out_of_memory")
        return Outcome(
            end,
            f"{self.stage}: Slurm job {job_id} ended {status} (exit code {state.get('ExitCode')}, reason "
            f"{state.get('Reason')}); a retry resumes from the newest valid checkpoint in a new job{last_lines}",
        )
