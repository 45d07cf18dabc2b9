"""The on-disk contract of a stage's work dir, and of a published checkpoint: every file name the pipeline reads or
writes is spelled here, and nowhere else.

    <work_dir>/                  projects/work_dirs/<group>/<config name>/ (UniAD's layout)
      .uniad_run.json            which pipeline run owns the folder (run id, stage, start time)
      .uniad_lease.json          who trains in it now (a local stage's process, a Slurm job), with a heartbeat
      <YYYYMMDD_HHMMSS>.log      mmcv's text log of one attempt (rank 0); .log.json the same as json lines
      output_<YYYYMMDD_HHMMSS>.txt  the launcher's output of one attempt: what rank 0 prints (UniAD's motion,
                                 occupancy and planning metric tables) and the ranks' errors
      epoch_N.pth, latest.pth    mmcv's CheckpointHook; latest.pth is a symlink to the newest epoch file
      epoch_E_iter_K.pth         a checkpoint inside epoch E after K iterations (checkpoint_interval_iters)
      slurm_jobs.jsonl           executor=slurm: one line per submitted job (id, attempt, nodes, state, times)
      slurm-<job id>.out         executor=slurm: a job's output (all ranks; what output_*.txt is for a local run)
      slurm-attempt-<N>[-<S>].json  the job file the batch step of attempt N (its S-th job) reads (the ranks' argv)
      slurm-<job id>.job.json    the batch step's record of each start of the job (a requeue starts it again) and its
                                 end: where it resumed from, and why it ended (completed, failed, its time limit)
      local-<id>.spec.json       executor=local: what the stage's detached local job runs (argv, resume point)
      local-<id>.job.json        who runs it (host, boot id, its supervisor's pid) and, once over, its end
      local-<id>.cancel          a request to stop it (mark-failed, clear), which its supervisor acts on
      local-<id>.out             its supervisor's log
      .uniad_trainside/          the modules the training interpreter runs (uniad/trainside), shipped per attempt
      champion_evaluation/       executor=slurm: the job that scored a champion published without metrics
      health/                    the gate's report.md and plots
      alerts.jsonl               the alerts about the stage: one line per kind, sent or why not (uniad_airflow.alerts)
      <config name>.py           mmcv's dump of the resolved config; tf_logs/ a config's TensorBoard logs
      previous_runs/<run>-<time>/  what older runs left here, moved aside when a new run claims the folder
    <published>.pth.provenance.json  beside a promoted checkpoint: source, sha256, epoch

The names the training processes write come from ``uniad.trainside.uniad_workdir``, which they import too.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from .errors import TrainingFailed
from .trainside import uniad_workdir as contract
from .trainside.uniad_workdir import EPOCH_FILE, ITER_FILE, LATEST, MID_EPOCH_META_KEY

logger = logging.getLogger(__name__)

__all__ = ["EPOCH_FILE", "ITER_FILE", "LATEST", "MID_EPOCH_META_KEY", "WorkDir", "default_work_dir"]

MARKER = ".uniad_run.json"
PREVIOUS = "previous_runs"
HEALTH = "health"
ALERTS = "alerts.jsonl"
TF_LOGS = "tf_logs"
JSON_LOGS = "*.log.json"
TEXT_LOGS = "*.log"
OUTPUTS = "output_*.txt"
SLURM_OUTPUTS = "slurm-*.out"
LOCAL_OUTPUTS = "local-*.out"
SLURM_JOBS = "slurm_jobs.jsonl"
TRAINSIDE = ".uniad_trainside"
CHAMPION_EVALUATION = "champion_evaluation"


def sanitize_run_id(run_id: str) -> str:
    """A run id as one safe folder name (manual__2026-11-24T09:00:00+00:00 -> manual__2026-11-24T09_00_00_00_00)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", run_id).strip("._") or "run"
    return cleaned[:200]


def default_work_dir(config: str) -> str:
    """UniAD's layout: projects/configs/<group>/<name>.py -> projects/work_dirs/<group>/<name>/."""
    path = PurePosixPath(config)
    return f"projects/work_dirs/{path.parent.name}/{path.stem}/"


def provenance_path(published: str | Path) -> Path:
    """The sidecar of a published checkpoint: where it came from and its sha256."""
    published = Path(published)
    return published.with_name(published.name + ".provenance.json")


def pretrained_path(root: str | Path, uri: str) -> Path:
    """Where a pretrained object fetched from ``uri`` lands: ``<root>/ckpts/<its name>``, where configs load it."""
    return Path(root) / "ckpts" / PurePosixPath(uri).name


def text_log_of(json_log: str | Path) -> Path:
    """mmcv writes ``X.log`` beside ``X.log.json``; the text log has the epoch length, the json one does not."""
    path = Path(json_log)
    return path.with_suffix("") if path.name.endswith(".log.json") else path


def log_start_time(log: Path) -> float | None:
    """mmcv names a log by its start time in local time: 20261124_101500.log.json."""
    try:
        return time.mktime(time.strptime(log.name.split(".", 1)[0], "%Y%m%d_%H%M%S"))
    except ValueError:
        return None


@dataclass(frozen=True)
class WorkDir:
    """One stage's work dir (or a run's archive of it in ``previous_runs/``)."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------ checkpoints
    @property
    def latest(self) -> Path:
        return self.path / LATEST

    def latest_checkpoint(self) -> Path | None:
        """The epoch file ``latest.pth`` points to, resolved; None before the first epoch ends."""
        return self.latest.resolve() if self.latest.exists() else None

    def resume_candidates(self) -> list[tuple[tuple[int, int], Path]]:
        """Checkpoints with their position (epochs complete, iterations of the next epoch), newest first:
        ``epoch_N.pth`` is (N, 0), ``epoch_E_iter_K.pth`` is (E - 1, K). ``latest.pth`` is only a link to one."""
        return [(position, Path(path)) for position, path in contract.resume_candidates(self.path)]

    # ------------------------------------------------------------------ logs
    def json_logs(self) -> list[Path]:
        """The stage's json logs in start order: one per attempt (a new run moved older runs' logs aside)."""
        return sorted(self.path.glob(JSON_LOGS))

    def latest_json_log(self, newer_than: float | None = None) -> Path | None:
        """The newest json log, optionally only one written since ``newer_than`` (this attempt's, not an older)."""
        candidates = []
        for path in self.path.glob(JSON_LOGS):
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                continue
            if newer_than is None or mtime >= newer_than:
                candidates.append((path.name, path))
        return max(candidates)[1] if candidates else None

    def output_file(self, started: float) -> Path:
        """Where an attempt started at ``started`` (epoch seconds) keeps its output, named like mmcv's logs."""
        return self.path / f"output_{time.strftime('%Y%m%d_%H%M%S', time.localtime(started))}.txt"

    def outputs(self) -> list[Path]:
        """The attempts' outputs (local runs' and Slurm jobs'), oldest first."""
        found = [*self.path.glob(OUTPUTS), *self.path.glob(SLURM_OUTPUTS)]
        return sorted(found, key=lambda p: (p.stat().st_mtime, p.name))

    @property
    def slurm_jobs(self) -> Path:
        return self.path / SLURM_JOBS

    def slurm_output(self, job: str) -> Path:
        """A Slurm job's output: ``job`` is its id, or sbatch's ``%j`` before it has one."""
        return self.path / f"slurm-{job}.out"

    def slurm_job_file(self, attempt: int, segment: int = 1) -> Path:
        """The job file of an attempt's ``segment``-th job (later ones continue a preempted or timed-out job)."""
        return self.path / (
            f"slurm-attempt-{attempt}.json" if segment == 1 else f"slurm-attempt-{attempt}-{segment}.json"
        )

    def local_spec(self, job_id: str) -> Path:
        """What local job ``job_id`` runs (``uniad.train.local_job``)."""
        return self.path / f"local-{job_id}.spec.json"

    def local_jobs(self) -> list[str]:
        """The ids of the local jobs started in this folder (their specs), oldest first."""
        return sorted(path.name[len("local-") : -len(".spec.json")] for path in self.path.glob("local-*.spec.json"))

    def local_marker(self, job_id: str) -> Path:
        """Who runs local job ``job_id`` and, once over, its end."""
        return self.path / f"local-{job_id}.job.json"

    def local_control(self, job_id: str) -> Path:
        """A request to stop local job ``job_id``, with its reason."""
        return self.path / f"local-{job_id}.cancel"

    def local_output(self, job_id: str) -> Path:
        """Local job ``job_id``'s supervisor log (the ranks' output is in ``output_<time>.txt``)."""
        return self.path / f"local-{job_id}.out"

    def job_marker(self, job_id: str) -> dict | None:
        """What the batch step of Slurm job ``job_id`` recorded of its starts and its end (``slurm-<id>.job.json``)."""
        return contract.read_job_marker(self.path, job_id)

    @property
    def champion_evaluation(self) -> WorkDir:
        """Where a Slurm job scoring the champion keeps its job file and output, apart from the stage's own."""
        return WorkDir(self.path / CHAMPION_EVALUATION)

    @property
    def trainside(self) -> Path:
        """Where an attempt's copy of the trainside modules lies (``uniad.train.launch.ship_trainside``)."""
        return self.path / TRAINSIDE

    @property
    def health_dir(self) -> Path:
        return self.path / HEALTH

    @property
    def alerts(self) -> Path:
        return self.path / ALERTS

    @property
    def tf_logs(self) -> Path:
        return self.path / TF_LOGS

    def resolved_config(self, config: str) -> Path:
        """mmcv's dump of the config the stage trained with (train.py writes it beside the logs)."""
        return self.path / PurePosixPath(config).name

    def stage_outputs(self) -> list[tuple[Path, str]]:
        """(file, its name relative to the work dir) of the logs and health report a finished stage leaves."""
        files = []
        for pattern in (TEXT_LOGS, JSON_LOGS, OUTPUTS, SLURM_OUTPUTS, LOCAL_OUTPUTS, SLURM_JOBS, f"{HEALTH}/*"):
            files += [(p, p.relative_to(self.path).as_posix()) for p in sorted(self.path.glob(pattern)) if p.is_file()]
        return files

    # ------------------------------------------------------------------ ownership
    def read_marker(self) -> dict | None:
        try:
            return json.loads((self.path / MARKER).read_text())
        except (FileNotFoundError, ValueError):
            return None

    def owned_by(self, run_id: str) -> bool:
        marker = self.read_marker()
        return marker is not None and marker.get("run_id") == run_id

    def claim(self, run_id: str, stage: str) -> bool:
        """Make the folder this run's. True when it already was (a retry); otherwise an older run's artifacts are
        moved into ``previous_runs/`` first, so neither training nor the gate can pick up a stale ``latest.pth``."""
        self.path.mkdir(parents=True, exist_ok=True)
        marker = self.read_marker()
        if marker is not None and marker.get("run_id") == run_id:
            return True
        owner = marker.get("run_id", "unknown") if marker else "unknown"
        lease = self.live_holder()
        if lease is not None:
            # Moving a live stage's checkpoints aside would pull them from under its ranks.
            raise TrainingFailed(
                f"{stage}: the work dir {self.path} is run {owner}'s, and {lease.get('holder')} (host "
                f"{lease.get('host')}) still trains in it: give this run another uniad_root or work dir, or let that "
                "one end first"
            )
        archived = self._archive(owner)
        if archived is not None:
            logger.warning("%s: moved the artifacts of run %s out of the way, to %s", stage, owner, archived)
        (self.path / MARKER).write_text(json.dumps({"run_id": run_id, "stage": stage, "started": time.time()}) + "\n")
        return False

    def live_holder(self) -> dict | None:
        """The lease of whoever trains in the folder now (a local job, a Slurm job), or None."""
        lease = contract.read_lease(self.path)
        return lease if lease is not None and contract.lease_alive(lease, time.time()) else None

    def _archive(self, owner: str) -> Path | None:
        """Move everything but earlier archives into previous_runs/<owner>-<time>/; None when there was nothing."""
        entries = [p for p in self.path.iterdir() if p.name != PREVIOUS]
        if not entries:
            return None
        target = self.path / PREVIOUS / f"{sanitize_run_id(owner)}-{time.strftime('%Y%m%d_%H%M%S')}"
        target.mkdir(parents=True)
        for entry in entries:
            shutil.move(str(entry), target / entry.name)
        return target

    def for_run(self, run_id: str) -> WorkDir | None:
        """This run's folder of the stage: the work dir while the run owns it, else its archive in previous_runs/."""
        if self.owned_by(run_id):
            return self
        for archived in sorted((self.path / PREVIOUS).glob(f"{sanitize_run_id(run_id)}-*"), reverse=True):
            candidate = WorkDir(archived)
            if candidate.owned_by(run_id):
                return candidate
        return None
