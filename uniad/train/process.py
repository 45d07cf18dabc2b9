"""Run one training stage as a process group, stream its output, report progress, and stop it cleanly.

The launcher and every rank live in one new session (process group), so stopping the stage, from ``on_kill`` or
Ctrl-C, takes all ranks down with it instead of leaving GPUs held by orphans.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import TrainingFailed
from ..health.monitor import Finding, Thresholds
from ..trainside.uniad_workdir import LEASE_TTL_S, LEASE_WAIT_S, Lease, LeaseHeld, waiting_for
from ..workdir import WorkDir
from .ending import End, classify_end
from .follow import StageFollower
from .launch import LaunchCommand, StageSpec, build_launch, find_free_port, resolve_backend, ship_trainside
from .probes import TAIL_LINES, check_data_files, check_gpus, probe_nccl, probe_visible_gpus
from .progress import Progress, format_duration

logger = logging.getLogger(__name__)

RUN_TOKEN_ENV = "UNIAD_STAGE_RUN_TOKEN"
_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED|NCCL.*(out of memory|ncclSystemError.*alloc)"
)
OOM_ADVICE = (
    "a rank ran out of GPU memory, which a retry with the same settings repeats: lower data.samples_per_gpu or "
    "queue_length in the stage's cfg options (UniAD stage 1 takes ~50 GB per GPU with samples_per_gpu=1, "
    "queue_length=3; stage 2 ~17 GB), or train on GPUs with more memory"
)
PR_SET_PDEATHSIG = 1
POLL_S = 0.5


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A preexec hook that makes the launcher receive SIGTERM when this process dies, even by SIGKILL (Linux
    PR_SET_PDEATHSIG). torchrun shuts its ranks down on SIGTERM, so no rank outlives a killed Airflow worker.
    libc is resolved here, in the parent: between fork and exec the child only makes one foreign call."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return hook


@dataclass
class StageResult:
    stage: str
    returncode: int
    duration_s: float
    last_progress: Progress | None


class StageRun:
    """One stage's process group: ``start`` it, ``wait`` for it, ``terminate`` it from any thread."""

    def __init__(
        self,
        command: LaunchCommand,
        *,
        stage: str,
        total_epochs: int,
        emit_output: Callable[[str], None] | None = None,
        emit_progress: Callable[[Progress], None] | None = None,
        work_dir: WorkDir | None = None,
        thresholds: Thresholds | None = None,
        later_epochs: int | None = None,
        resume_point: tuple[int, int] | None = None,
        backend_reason: str | None = None,
        stop_on_findings: bool = True,
        lease_wait_s: float = LEASE_WAIT_S,
        lease_holder: str | None = None,
    ) -> None:
        self.command = command
        self.lease_wait_s = lease_wait_s
        # Who the work dir's lease names: a local job's id, else this process.
        self.lease_holder = lease_holder or f"local:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
        # (epoch, iterations of it in the checkpoint): a resumed attempt's first record must be in that epoch, after
        # those iterations.
        self.resume_point = resume_point
        self.backend_reason = backend_reason
        self.stage = stage
        self.total_epochs = total_epochs
        self.later_epochs = later_epochs
        self.thresholds = thresholds
        # The follower reads the stage's log in work_dir: progress, the health watch and the resume check; with
        # ``stop_on_findings`` a fatal finding or a stall stops the run.
        self.work_dir = work_dir
        self.stop_on_findings = stop_on_findings
        self.follower: StageFollower | None = None
        self.health_failure: Finding | None = None
        self._last_output_at: float | None = None
        self._emit_output = emit_output or (lambda line: logger.info("%s", line))
        self._emit_progress = emit_progress or (lambda progress: logger.info("%s", progress.line()))
        self._proc: subprocess.Popen[str] | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._lock = threading.Lock()
        self._terminated_by: str | None = None
        self._token = ""
        self._output = None
        self.output_path = None  # the work dir's file this attempt's output goes to, once started
        self._lease: Lease | None = None

    def start(self) -> None:
        if self.work_dir is not None:
            # Never two stages training in one work dir: a retry while an earlier attempt's ranks still train, a
            # Slurm job of the stage, a second run given the same root.
            self.work_dir.path.mkdir(parents=True, exist_ok=True)
            lease = Lease(str(self.work_dir.path), self.lease_holder)
            try:
                self._lease = lease.acquire(wait_s=self.lease_wait_s, on_wait=self._waiting_for)
            except LeaseHeld as exc:
                raise TrainingFailed(
                    f"{self.stage}: not started: {exc}. Let it end or stop it first; a retry starts once it is gone "
                    f"(at once on this host, after {LEASE_TTL_S:.0f} s without a heartbeat for another host)"
                ) from exc
        # torchrun starts every rank in a session of its own, so the launcher's process group does not reach them
        # once the launcher is gone. Each run's processes carry this token in their environment instead.
        self._token = uuid.uuid4().hex
        env = {**os.environ, **self.command.env, RUN_TOKEN_ENV: self._token}
        logger.info("starting %s in %s: %s", self.stage, self.command.cwd, self.command.argv)
        logger.info("environment additions: %s", sorted(self.command.env))
        try:
            self._proc = subprocess.Popen(
                self.command.argv,
                cwd=self.command.cwd,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                bufsize=1,
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(),
            )
        except BaseException:
            if self._lease is not None:
                self._lease.release()
            raise
        self._started = time.monotonic()
        self._started_wall = time.time()
        # Every attempt's output stays in the work dir: UniAD prints its motion, occupancy and planning metrics
        # only there (the task log gets them too, but task logs are not the stage's record).
        if self.work_dir is not None:
            self.work_dir.path.mkdir(parents=True, exist_ok=True)
            self.output_path = self.work_dir.output_file(self._started_wall)
            self._output = open(self.output_path, "a", encoding="utf-8", errors="replace", buffering=1)  # noqa: SIM115
            self.follower = StageFollower(
                self.work_dir,
                self.stage,
                self.total_epochs,
                started=self._started_wall,
                thresholds=self.thresholds,
                later_epochs=self.later_epochs,
                resume_point=self.resume_point,
            )

    def _waiting_for(self, lease: dict) -> None:
        # An earlier attempt being stopped ends within seconds.
        logger.warning("%s: %s (%s)", self.stage, waiting_for(lease, self.lease_wait_s), self.work_dir.path)

    def wait(self) -> StageResult:
        """Stream output until the group's leader exits; raise TrainingFailed unless it exited 0."""
        if self._proc is None:
            raise RuntimeError("StageRun.wait() called before start()")
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=self._pump, args=(lines,), name=f"{self.stage}-output", daemon=True)
        reader.start()
        try:
            returncode = None
            while returncode is None:
                self._drain(lines, timeout=POLL_S)
                if self.follower is not None:
                    self._follow()
                returncode = self._proc.poll()
            # The leader is gone. Ranks still alive in its group are orphans (they would also keep the output pipe
            # open forever): kill them, then read what is left.
            self._kill_group(signal.SIGKILL)
            reader.join(timeout=30)
            self._drain(lines, timeout=0)
            if self.follower is not None:
                self._follow()  # the last records
        except BaseException:
            self.terminate(reason="the launching process was interrupted")
            raise
        finally:
            if self._output is not None:
                self._output.close()
            if self._lease is not None:
                self._lease.release()
        duration = time.monotonic() - self._started
        if returncode != 0:
            why = f" ({self._terminated_by})" if self._terminated_by else ""
            oom = out_of_memory(self._tail)
            if oom:
                why += f": {OOM_ADVICE}"
            raise TrainingFailed(
                f"{self.stage} training exited with code {returncode}{why} after {format_duration(duration)}",
                returncode=returncode,
                tail=list(self._tail),
                # NaN, exploding gradients and out-of-memory come back on a plain retry; a crash or a hang may not.
                retryable=classify_end(
                    finding=self.health_failure.code if self.health_failure else None, out_of_memory=bool(oom)
                )
                is End.RETRY,
            )
        latest = self.follower.tracker.latest if self.follower is not None else None
        return StageResult(self.stage, returncode, duration, latest)

    def _follow(self) -> None:
        for progress in self.follower.poll():
            self._emit_progress(progress)
        if not self.stop_on_findings or self.health_failure is not None:
            return
        finding = self.follower.finding(self._last_output_at)
        if finding is not None:
            self.health_failure = finding
            logger.error("%s: %s", self.stage, finding.message)
            self.terminate(reason=f"stopped by the health watch: {finding.code}: {finding.message}")

    def _pump(self, lines: queue.Queue) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            lines.put(raw.rstrip("\n"))
        lines.put(None)

    def _drain(self, lines: queue.Queue, timeout: float) -> None:
        """Emit queued lines on the calling thread (Airflow's task logger is not ours to share across threads)."""
        try:
            line = lines.get(timeout=timeout) if timeout else lines.get_nowait()
            while True:
                if line is not None:
                    self._last_output_at = time.monotonic()
                    self._tail.append(line)
                    if self._output is not None:
                        self._output.write(line + "\n")
                    self._emit_output(line)
                line = lines.get_nowait()
        except queue.Empty:
            return

    def run(self) -> StageResult:
        self.start()
        return self.wait()

    def terminate(self, grace_s: float = 10.0, reason: str = "stopped") -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after ``grace_s``."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._kill_group(signal.SIGKILL)
                return
            self._terminated_by = reason
            logger.warning("stopping %s (process group %d): %s", self.stage, self._proc.pid, reason)
            self._kill_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s; killing the process group", self.stage, grace_s)
            self._kill_group(signal.SIGKILL)

    def _kill_group(self, sig: int) -> None:
        """Signal the launcher's group and every process of this run, wherever it was reparented."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in processes_with_token(self._token):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def leftover_pids(self) -> list[int]:
        return processes_with_token(self._token) if self._proc is not None else []


def out_of_memory(lines) -> bool:
    """Whether a stage's last lines of output show a rank that ran out of GPU memory."""
    return any(_OOM.search(line) for line in lines)


def processes_with_token(token: str) -> list[int]:
    """Live processes whose environment holds this run's token (Linux /proc; empty elsewhere)."""
    needle = f"{RUN_TOKEN_ENV}={token}".encode()
    found = []
    try:
        entries = os.scandir("/proc")
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                with open(f"/proc/{entry.name}/environ", "rb") as handle:
                    if needle not in handle.read().split(b"\0"):
                        continue
                with open(f"/proc/{entry.name}/stat", "rb") as handle:
                    if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue
            except OSError:
                continue
            found.append(int(entry.name))
    return found


def worker_backend(
    python: str, requested: str, nproc_per_node: int, stage: str, needs_gpus: bool = False
) -> tuple[str, str]:
    """The backend this worker trains (or evaluates) with, and why: its GPUs and NCCL's probe decide ``auto``.
    ``needs_gpus`` (profile uniad): a worker without GPUs is refused before anything is launched."""
    gpus = probe_visible_gpus(python)
    if needs_gpus:
        check_gpus(gpus, python)
    probe = requested != "gloo" and gpus >= nproc_per_node
    nccl_error = probe_nccl(python, nproc_per_node) if probe else None
    backend, why = resolve_backend(requested, gpus, nproc_per_node, nccl_error)
    (logger.warning if "falling back" in why else logger.info)("%s: backend %s (%s)", stage, backend, why)
    return backend, why


def make_stage_run(
    spec: StageSpec,
    *,
    stage: str,
    emit_output: Callable[[str], None] | None = None,
    emit_progress: Callable[[Progress], None] | None = None,
    thresholds: Thresholds | None = None,
    watch: bool = True,
    later_epochs: int | None = None,
    resume_point: tuple[int, int] | None = None,
) -> StageRun:
    """Check this worker can train the stage (its data, its GPUs), resolve the backend here, ship the trainside
    modules into the work dir, pick a free rendezvous port and build the stage's process. ``spec.python``: this
    worker's training interpreter."""
    check_data_files(spec)
    backend, why = worker_backend(spec.python, spec.backend, spec.nproc_per_node, stage, spec.needs_gpus)
    work_dir = WorkDir(spec.work_dir_path)
    trainside = ship_trainside(work_dir.trainside)
    command = build_launch(
        spec, backend=backend, master_port=find_free_port(), trainside=trainside, base_env=os.environ
    )
    return StageRun(
        command,
        stage=stage,
        total_epochs=spec.max_epochs,
        emit_output=emit_output,
        emit_progress=emit_progress,
        work_dir=work_dir,
        stop_on_findings=watch,
        thresholds=thresholds,
        later_epochs=later_epochs,
        resume_point=resume_point,
        backend_reason=why,
    )
