"""A local stage as a job of its own: the GPU worker starts it detached and Airflow follows it from the triggerer.

The task submits the job and defers; the job is a small supervisor process (``python -m uniad.train.local_job``) in
a session of its own, with no death signal tied to the worker, that runs the stage's process group beside it
(``uniad.train.process.StageRun``: the work-dir lease with its heartbeat, the output file, the health watch, the
stop of every rank). So a worker restart, an api-server outage or a triggerer restart leaves the ranks training,
and the next attempt or triggerer re-attaches to the job instead of starting another. Its files in the work dir::

    local-<id>.spec.json   what to run (argv, environment additions, resume point), written by the submitter
    local-<id>.job.json    who runs it (host, boot id, pid and its start time, started) and, once over, its end
    local-<id>.cancel      a request to stop it (mark-failed, clear, the health watch): the supervisor acts within 1 s
    local-<id>.out         the supervisor's own log (the ranks' output goes to output_<time>.txt, as before)

A job is RUNNING while its supervisor lives (same host: its pid with its start time; another host: the lease's
heartbeat), over once it recorded its end, and LOST when its supervisor is gone without one (the host lost, a
SIGKILL): a failed attempt whose retry resumes from the newest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from ..errors import TrainingFailed
from ..health.monitor import Thresholds
from ..trainside.uniad_workdir import boot_id, lease_alive, process_start, read_lease, same_host
from ..workdir import WorkDir
from .ending import End
from .executor import Job, Outcome
from .launch import LaunchCommand, StageSpec, build_launch, find_free_port, ship_trainside
from .probes import check_data_files
from .process import StageRun, out_of_memory, worker_backend
from .resume import plan_attempt

logger = logging.getLogger(__name__)

CONTROL_EVERY_S = 1.0
# A submitted job whose supervisor has not recorded its start after this long never will (it could not start).
START_GRACE_S = 120.0
LOST = "LOST"
ACTIVE = ("PENDING", "RUNNING")


def holder(job_id: str) -> str:
    """The job's name in the work dir's lease."""
    return f"local:{job_id}"


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_name(f".{path.name}.part")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    partial.replace(path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------------------- the supervisor
def supervise(spec_file: Path) -> int:
    """Run the job ``spec_file`` describes to its end, recording its start and end in its marker."""
    job = json.loads(spec_file.read_text())
    work_dir, job_id = WorkDir(job["work_dir"]), job["job_id"]
    marker_file, control = work_dir.local_marker(job_id), work_dir.local_control(job_id)
    pid = os.getpid()
    marker = {
        "job_id": job_id,
        "stage": job["stage"],
        "attempt": job["attempt"],
        "host": socket.gethostname(),
        "boot_id": boot_id(),
        "pid": pid,
        "pid_start": process_start(pid),
        "started": time.time(),
    }
    _write_json(marker_file, marker)
    run = StageRun(
        LaunchCommand(**job["command"]),
        stage=job["stage"],
        total_epochs=job["total_epochs"],
        emit_output=lambda line: None,  # StageRun writes it to the work dir's output file
        work_dir=work_dir,
        thresholds=Thresholds(stall_min_s=job["stall_timeout_s"]),
        later_epochs=job.get("later_epochs"),
        resume_point=tuple(job["resume_point"]) if job.get("resume_point") else None,
        backend_reason=job.get("backend_reason"),
        lease_holder=holder(job_id),
    )
    stopped = threading.Event()

    def stop(reason: str) -> None:
        threading.Thread(target=run.terminate, kwargs={"reason": reason}, daemon=True).start()

    def watch_control() -> None:
        # Acted on once the ranks are started: a request that came while the job waited for the lease too.
        while not stopped.wait(CONTROL_EVERY_S):
            if control.exists() and run.output_path is not None:
                stop(control.read_text().strip() or "cancelled")
                return

    signal.signal(signal.SIGTERM, lambda signum, frame: stop("the job's supervisor got SIGTERM"))
    threading.Thread(target=watch_control, name="uniad-control", daemon=True).start()
    end: dict = {}
    try:
        if control.exists():
            raise TrainingFailed(f"{job['stage']}: stopped before it started: {control.read_text().strip()}")
        run.start()
        marker["output"] = str(run.output_path)
        _write_json(marker_file, marker)
        result = run.wait()
        end = {
            "returncode": 0,
            "reason": "completed",
            "duration_s": round(result.duration_s, 1),
            "final_loss": result.last_progress.loss if result.last_progress else None,
        }
    except TrainingFailed as exc:
        finding = run.health_failure
        end = {
            "returncode": exc.returncode,
            "reason": "cancelled" if control.exists() else ("unhealthy" if finding else "failed"),
            "retryable": exc.retryable,
            "message": str(exc),
            "finding": {"code": finding.code, "message": finding.message} if finding else None,
            "out_of_memory": out_of_memory(exc.tail),
        }
    except BaseException as exc:  # an error of the supervisor itself: said in its end, then raised
        end = {"returncode": None, "reason": "failed", "retryable": True, "message": f"the supervisor failed: {exc}"}
        raise
    finally:
        stopped.set()
        marker["end"] = dict(end, time=time.time())
        _write_json(marker_file, marker)
        logger.info("job %s ended: %s", job_id, end.get("reason"))
    return 0 if end.get("returncode") == 0 else 1


def main(argv: list[str] | None = None) -> int:
    (spec_file,) = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    return supervise(Path(spec_file))


# ------------------------------------------------------------------------------------------ the executor's side
class LocalStage:
    """One stage of one run as a detached job on this GPU worker (a ``StageExecutor``). ``spec`` has this worker's
    training interpreter."""

    executor = "local"
    label = "local"  # as the task log says it: "local job <id>"

    def __init__(
        self,
        spec: StageSpec,
        *,
        stage: str,
        run_id: str,
        stall_timeout_s: float,
        later_epochs: int | None = None,
        worker_jobs: Path | None = None,
        emit: Callable[[str], None] | None = None,
    ) -> None:
        self.spec, self.stage, self.run_id = spec, stage, run_id
        # This worker's list of the local jobs it started (None: not checked): a task deferred while its job trains
        # leaves the worker free, and the next training task it takes must not start on the same GPUs.
        self.worker_jobs = worker_jobs
        self.stall_timeout_s, self.later_epochs = stall_timeout_s, later_epochs
        self.work_dir = WorkDir(spec.work_dir_path)
        self._emit = emit or logger.info

    def describe(self, job_id: str) -> dict:
        return describe(self.work_dir, job_id)

    def adopt(self, known: str | None, started: float | None = None) -> Job | None:
        """``known`` while it runs or once it completed; else the live local job the work dir's lease names (an
        attempt lost before it stored the job's id). A job that ended otherwise is no job to follow."""
        candidates = [known] if known else []
        held = leaseholder(self.work_dir)
        if held is not None and held not in candidates:
            candidates.append(held)
        for job_id in candidates:
            if self.work_dir.local_control(job_id).exists():  # being stopped (the task was cleared): not followed
                self._emit(
                    f"local job {job_id} is being stopped ({self.work_dir.local_control(job_id).read_text().strip()})"
                )
                wait_for_end(self.work_dir, job_id)
                continue
            state = self.describe(job_id)
            if state["JobState"] in (*ACTIVE, "COMPLETED"):
                return Job(job_id, started or state.get("started") or time.time(), state)
            if job_id == known:
                self._emit(f"local job {job_id} ended {state['JobState']} while no task followed it")
        return None

    def submit(self, attempt: int, continuing: str | None = None) -> Job:
        """Start a job of ``attempt`` from the newest valid checkpoint, detached from this process."""
        planned = plan_attempt(self.spec, self.stage, run_id=self.run_id)
        if planned.resumed_from:
            self._emit(f"attempt {attempt}: {planned.describe()}")
        for line in planned.skipped + planned.warnings:
            logger.warning("%s", line)
        spec = planned.spec
        check_data_files(spec)
        backend, why = worker_backend(spec.python, spec.backend, spec.nproc_per_node, self.stage, spec.needs_gpus)
        trainside = ship_trainside(self.work_dir.trainside)
        command = build_launch(
            spec, backend=backend, master_port=find_free_port(), trainside=trainside, base_env=os.environ
        )
        job_id = f"{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}"
        submitted = time.time()
        if self.worker_jobs is not None:
            claim_worker(self.worker_jobs, job_id, self.work_dir, self.stage, self.run_id)
        self._emit(f"starting {self.stage} as local job {job_id}: {command.argv}")
        start(
            self.work_dir,
            {
                "job_id": job_id,
                "stage": self.stage,
                "run_id": self.run_id,
                "attempt": attempt,
                "work_dir": str(self.work_dir.path),
                "command": {"argv": command.argv, "env": command.env, "cwd": command.cwd, "backend": backend},
                "total_epochs": spec.max_epochs,
                "later_epochs": self.later_epochs,
                "resume_point": planned.resume_point,
                "resumed_from": planned.resumed_from,
                "skipped_checkpoints": planned.skipped,
                "stall_timeout_s": self.stall_timeout_s,
                "backend_reason": why,
                "submitted": submitted,
            },
        )
        return Job(job_id, submitted, self.describe(job_id))

    def cancel(self, job_id: str, reason: str = "cancelled") -> dict:
        return cancel(self.work_dir, job_id, reason)

    def finish(self, event: dict) -> Outcome:
        """The follower's last event of a job: what its end means."""
        job_id, status, state = event["job_id"], event["status"], event.get("state") or {}
        end = state.get("end") or {}
        if status == "COMPLETED":
            job = _read_json(self.work_dir.local_spec(job_id)) or {}
            latest = self.work_dir.latest_checkpoint()
            result = {
                "stage": self.stage,
                "work_dir": str(self.work_dir.path),
                "executor": "local",
                "job_id": job_id,
                "latest_checkpoint": str(latest) if latest is not None else None,
                "backend": (job.get("command") or {}).get("backend"),
                "backend_reason": job.get("backend_reason"),
                "resumed_from": job.get("resumed_from"),
                "skipped_checkpoints": job.get("skipped_checkpoints") or [],
                "duration_s": end.get("duration_s"),
                "final_loss": end.get("final_loss"),
            }
            return Outcome(End.COMPLETED, f"local job {job_id} completed", result)
        if status == LOST:
            return Outcome(
                End.RETRY,
                f"{self.stage}: local job {job_id} is gone without recording its end ({state.get('Reason')}); a "
                "retry resumes from the newest valid checkpoint",
            )
        message = end.get("message") or f"{self.stage}: local job {job_id} ended {status}"
        cause = "out_of_memory" if end.get("out_of_memory") else None
        return Outcome(End.RETRY if end.get("retryable", True) else End.FINAL, message, cause=cause)


def start(work_dir: WorkDir, job: dict, wait_s: float = 60.0) -> None:
    """Write ``job``'s spec and start its supervisor detached (its own session, no death signal, nothing inherited
    but the environment); return once it recorded its start. One that cannot start is said at once (an interpreter
    without the pipeline, a work dir it cannot write), with its log's last lines."""
    job_id = job["job_id"]
    _write_json(work_dir.local_spec(job_id), job)
    with open(work_dir.local_output(job_id), "ab") as output:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "uniad.train.local_job", str(work_dir.local_spec(job_id))],
            cwd=work_dir.path,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # no signal to the worker's process group reaches it
        )
    deadline = time.monotonic() + wait_s
    while not work_dir.local_marker(job_id).exists():
        if supervisor.poll() is not None or time.monotonic() > deadline:
            supervisor.kill()  # not yet started: nothing of it trains
            tail = work_dir.local_output(job_id).read_text(errors="replace").splitlines()[-20:]
            raise TrainingFailed(f"{job['stage']}: local job {job_id} did not start", supervisor.returncode, tail)
        time.sleep(0.1)


def claim_worker(registry: Path, job_id: str, work_dir: WorkDir, stage: str, run_id: str) -> None:
    """List the job in this worker's ``registry``, unless a local job of another work dir is active there: then
    refuse (retryable), since its ranks hold this worker's GPUs. Ended jobs leave the list here."""
    import fcntl

    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two tasks starting on one worker at once
        for entry in sorted(registry.glob("*.json")):
            listed = _read_json(entry) or {}
            other = WorkDir(listed.get("work_dir") or ".")
            active = listed and describe(other, listed["job_id"])["JobState"] in ACTIVE
            if not active:
                entry.unlink(missing_ok=True)
            elif other.path != work_dir.path:
                raise TrainingFailed(
                    f"{stage}: not started: local job {listed['job_id']} ({listed.get('stage')} of run "
                    f"{listed.get('run_id')}, work dir {other.path}) still trains on this worker's GPUs (its task is "
                    "deferred, so the worker took this task); the retry may run on a free worker"
                )
        _write_json(
            registry / f"{job_id}.json",
            {"job_id": job_id, "work_dir": str(work_dir.path), "stage": stage, "run_id": run_id},
        )


def describe(work_dir: WorkDir, job_id: str) -> dict:
    """The local job's state: PENDING (its supervisor starting), RUNNING, COMPLETED, FAILED, CANCELLED or LOST; with
    its marker's facts (``host``, ``pid``, ``started``, ``end``)."""
    marker = _read_json(work_dir.local_marker(job_id))
    if marker is None:
        spec = _read_json(work_dir.local_spec(job_id))
        if spec is not None and time.time() - spec.get("submitted", 0) < START_GRACE_S:
            return {"JobState": "PENDING"}
        return {"JobState": LOST, "Reason": "its supervisor never recorded a start"}
    state = dict(marker)
    end = marker.get("end")
    if end is not None:
        state["JobState"] = {"completed": "COMPLETED", "cancelled": "CANCELLED"}.get(end.get("reason"), "FAILED")
    elif supervisor_alive(work_dir, job_id, marker):
        state["JobState"] = "RUNNING"
    else:
        state["JobState"], state["Reason"] = LOST, f"its supervisor (pid {marker.get('pid')}) is gone"
    return state


def supervisor_alive(work_dir: WorkDir, job_id: str, marker: dict) -> bool:
    """On the supervisor's host: its process (pid with its start time). Elsewhere (another host, another container
    of this one: the triggerer's): the heartbeat its lease gets every 15 s."""
    if same_host(marker):
        return process_start(marker.get("pid")) == marker.get("pid_start")
    lease = read_lease(str(work_dir.path)) or {}
    return lease.get("holder") == holder(job_id) and lease_alive(lease, time.time())


def cancel(work_dir: WorkDir, job_id: str, reason: str = "cancelled") -> dict:
    """Ask the job's supervisor to stop it (it stops the ranks: SIGTERM, SIGKILL 10 s later); its state now."""
    state = describe(work_dir, job_id)
    if state["JobState"] in ACTIVE:
        work_dir.local_control(job_id).write_text(reason + "\n")
    return state


def cancel_run_jobs(work_dirs: Iterable[WorkDir], run_id: str) -> list[str]:
    """Stop every local job of ``run_id`` in ``work_dirs`` that is still pending or running: the ids asked to stop.
    A run that failed leaves none training, also where no trigger followed its job (a task marked failed before a
    triggerer picked it up): its supervisor, wherever it runs, stops the ranks on the control file."""
    stopped = []
    for work_dir in work_dirs:
        for job_id in work_dir.local_jobs():
            job = _read_json(work_dir.local_spec(job_id)) or {}
            if job.get("run_id") == run_id and cancel(work_dir, job_id, f"run {run_id} failed")["JobState"] in ACTIVE:
                stopped.append(job_id)
    return stopped


def wait_for_end(work_dir: WorkDir, job_id: str, timeout_s: float = 15.0) -> dict:
    """The job's state once it is over, or as it is after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = describe(work_dir, job_id)
        if state["JobState"] not in ACTIVE or time.monotonic() >= deadline:
            return state
        time.sleep(0.5)


def leaseholder(work_dir: WorkDir) -> str | None:
    """The local job the work dir's lease names, if one does."""
    held = str((read_lease(str(work_dir.path)) or {}).get("holder") or "")
    return held[len("local:") :] if held.startswith("local:") else None


def resume_point(work_dir: WorkDir, job_id: str) -> tuple[int, int] | None:
    """Where the job resumes (epoch, iterations of it done): its first record must come after it."""
    point = (_read_json(work_dir.local_spec(job_id)) or {}).get("resume_point")
    return tuple(point) if point else None


class OutputTail:
    """The lines a job's output file gained since the last ``read`` (whole lines only, unless ``final``)."""

    def __init__(self) -> None:
        self.offset, self.partial = 0, b""

    def read(self, path: str | None, final: bool = False) -> list[str]:
        if not path:
            return []
        try:
            with open(path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        data, self.partial = self.partial + data, b""
        lines = data.split(b"\n")
        if not final:
            self.partial = lines.pop()
        return [line.decode("utf-8", "replace") for line in lines if line]


if __name__ == "__main__":
    sys.exit(main())
