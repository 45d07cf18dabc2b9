"""Which checkpoint an attempt of a stage starts from, decided by the run's identity.

* A work dir belongs to one pipeline run (``WorkDir.claim``). A fresh run moves an older run's artifacts into
  ``previous_runs/<run>/``, so neither its training nor its gate can pick up a stale ``latest.pth``.
* A retry within the same run resumes from the newest checkpoint that passes ``inspect`` (truncated, corrupt or NaN
  files are skipped, and said so), passed to train.py as an explicit ``--resume-from``: an ``epoch_N.pth``, or,
  with ``checkpoint_interval_iters``, an ``epoch_E_iter_K.pth`` from inside epoch E. UniAD ignores a missing
  ``--resume-from`` and silently restarts from ``load_from``; the runner checks where the first logged record is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

from ..artifacts.checkpoints import inspect_checkpoint
from ..errors import CheckpointError
from ..trainside.uniad_workdir import final_without_evaluation
from ..workdir import WorkDir
from .launch import StageSpec

logger = logging.getLogger(__name__)


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


def plan_attempt(spec: StageSpec, stage: str, run_id: str, nnodes: int = 1) -> AttemptPlan:
    """Fresh start for a new run (older artifacts archived); resume from the newest valid checkpoint on a retry.
    ``nnodes``: the nodes the attempt's ranks run on (a Slurm job's), each with ``spec.nproc_per_node`` of them."""
    work_dir = WorkDir(spec.work_dir_path)
    if not work_dir.claim(run_id, stage):
        return AttemptPlan(spec=replace(spec, resume_from=None))

    plan = AttemptPlan(spec=spec)
    for (epoch, inner_iter), path in work_dir.resume_candidates():
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
        if final_without_evaluation(work_dir.path, (epoch, inner_iter), spec.max_epochs, spec.validate):
            plan.skipped.append(
                f"{path.name}: the final epoch's evaluation is not in the logs; the last epoch trains again from the "
                "checkpoint before it, and is evaluated"
            )
            continue
        world_size = nnodes * spec.nproc_per_node
        if inner_iter and report.inner_iter_world_size not in (None, world_size):
            # UniAD's DistributedGroupSampler gives each rank a contiguous block of a permutation padded to the world
            # size: with another world size, skipping the first K batches skips the wrong samples.
            plan.skipped.append(
                f"{path.name}: a mid-epoch checkpoint of {report.inner_iter_world_size} processes cannot be resumed "
                f"by {world_size}: the sampler's order depends on the world size, so the rest of its epoch would "
                "train the wrong samples; resuming from the last epoch checkpoint instead"
            )
            continue
        plan.spec = replace(spec, resume_from=str(path))
        plan.resumed_from, plan.resumed_epoch, plan.resumed_inner_iter = str(path), epoch, inner_iter
        plan.skip_iters = inner_iter
        trained_with = report.trained_world_size
        if trained_with is not None and trained_with != world_size:
            plan.warnings.append(
                f"{path.name} was trained by {trained_with} processes, this attempt runs {world_size}: mmcv "
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
