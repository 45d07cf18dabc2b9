"""Which checkpoint an attempt of a stage starts from, decided by the run's identity.

* A work dir belongs to one pipeline run (``.uniad_run.json``). A fresh run moves an older run's artifacts into
  ``previous_runs/<run>/``, so neither its training nor its gate can pick up a stale ``latest.pth``.
* A retry within the same run resumes from the newest checkpoint that passes ``inspect`` (truncated, corrupt or NaN
  files are skipped, and said so), passed to train.py as an explicit ``--resume-from``: an ``epoch_N.pth``, or,
  with ``checkpoint_interval_iters``, an ``epoch_E_iter_K.pth`` from inside epoch E. UniAD ignores a missing
  ``--resume-from`` and silently restarts from ``load_from``; the runner checks where the first logged record is.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .checkpoints import inspect_checkpoint
from .errors import CheckpointError
from .launch import StageSpec
from .pipeline import sanitize_run_id

logger = logging.getLogger(__name__)

MARKER = ".uniad_run.json"
PREVIOUS = "previous_runs"
_EPOCH_FILE = re.compile(r"^epoch_(\d+)\.pth$")
_ITER_FILE = re.compile(r"^epoch_(\d+)_iter_(\d+)\.pth$")  # trainside/uniad_iter_checkpoint.py PATTERN


@dataclass
class AttemptPlan:
    spec: StageSpec
    resumed_from: str | None = None
    resumed_epoch: int | None = None  # epochs complete in the checkpoint
    resumed_inner_iter: int = 0  # iterations of the next epoch in it (iteration checkpoints)
    skip_iters: int = 0  # the same in this attempt's iterations (the runner rescales them to its process count)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def resume_point(self) -> tuple[int, int] | None:
        """(epoch, iterations of it already trained): the first record of the attempt must come after it."""
        return (self.resumed_epoch + 1, self.skip_iters) if self.resumed_epoch is not None else None

    def describe(self) -> str:
        where = f"epoch {self.resumed_epoch}"
        if self.resumed_inner_iter:
            where = f"epoch {self.resumed_epoch + 1}, after iteration {self.resumed_inner_iter}"
        return f"resuming from {self.resumed_from} ({where})"


def read_marker(work_dir: Path) -> dict | None:
    try:
        return json.loads((work_dir / MARKER).read_text())
    except (FileNotFoundError, ValueError):
        return None


def resume_candidates(work_dir: Path) -> list[tuple[tuple[int, int], Path]]:
    """Checkpoints with their position (epochs complete, iterations of the next epoch), newest first:
    ``epoch_N.pth`` is (N, 0), ``epoch_E_iter_K.pth`` is (E - 1, K). ``latest.pth`` is only a link to one."""
    found = []
    for path in work_dir.glob("epoch_*.pth"):
        if not path.is_file():
            continue
        if match := _EPOCH_FILE.match(path.name):
            found.append(((int(match.group(1)), 0), path))
        elif match := _ITER_FILE.match(path.name):
            found.append(((int(match.group(1)) - 1, int(match.group(2))), path))
    return sorted(found, reverse=True)


def _archive(work_dir: Path, owner: str) -> Path | None:
    """Move everything but earlier archives into previous_runs/<owner>/; None when there was nothing."""
    entries = [p for p in work_dir.iterdir() if p.name != PREVIOUS]
    if not entries:
        return None
    target = work_dir / PREVIOUS / f"{sanitize_run_id(owner)}-{time.strftime('%Y%m%d_%H%M%S')}"
    target.mkdir(parents=True)
    for entry in entries:
        shutil.move(str(entry), target / entry.name)
    return target


def plan_attempt(spec: StageSpec, stage: str, run_id: str) -> AttemptPlan:
    """Fresh start for a new run (older artifacts archived); resume from the newest valid checkpoint on a retry."""
    work_dir = spec.work_dir_path
    work_dir.mkdir(parents=True, exist_ok=True)
    marker = read_marker(work_dir)
    if marker is None or marker.get("run_id") != run_id:
        owner = marker.get("run_id", "unknown") if marker else "unknown"
        archived = _archive(work_dir, owner)
        if archived is not None:
            logger.warning("%s: moved the artifacts of run %s out of the way, to %s", stage, owner, archived)
        (work_dir / MARKER).write_text(json.dumps({"run_id": run_id, "stage": stage, "started": time.time()}) + "\n")
        return AttemptPlan(spec=replace(spec, resume_from=None))

    plan = AttemptPlan(spec=spec)
    for (epoch, inner_iter), path in resume_candidates(work_dir):
        try:
            report = inspect_checkpoint(path, stage=stage)
        except CheckpointError as exc:
            plan.skipped.append(f"{path.name}: {exc}")
            continue
        if not report.valid:
            plan.skipped.append(f"{path.name}: {'; '.join(report.problems)}")
            continue
        if (report.epoch, report.inner_iter or 0) != (epoch, inner_iter):
            plan.skipped.append(
                f"{path.name}: its meta says {report.epoch} epoch(s) complete and {report.inner_iter or 0} "
                "iteration(s) of the next, which its name does not"
            )
            continue
        plan.spec = replace(spec, resume_from=str(path))
        plan.resumed_from, plan.resumed_epoch, plan.resumed_inner_iter = str(path), epoch, inner_iter
        # trainside/uniad_iter_checkpoint.py skips the samples already seen, spread over this attempt's processes.
        plan.skip_iters = inner_iter * (report.inner_iter_world_size or spec.nproc_per_node) // spec.nproc_per_node
        trained_with = report.trained_gpus
        if trained_with is not None and trained_with != spec.nproc_per_node:
            plan.warnings.append(
                f"{path.name} was trained with {trained_with} GPUs, this attempt uses {spec.nproc_per_node}: mmcv "
                "rescales the iteration counter on resume, so per-iteration schedules (warmup) shift"
            )
        break
    for line in plan.skipped:
        logger.warning("%s: not resuming from %s", stage, line)
    if plan.resumed_from is None:
        plan.spec = replace(spec, resume_from=None)
        logger.warning(
            "%s: retry of run %s found no valid checkpoint; starting the stage from the beginning", stage, run_id
        )
    return plan
