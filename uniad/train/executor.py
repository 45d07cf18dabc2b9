"""The operations every way of running a stage has, as torchx's scheduler interface has them: a stage runs as jobs
that outlive whoever submitted them (a detached local process group, ``uniad.train.local_job``; a Slurm job,
``uniad.train.slurm_stage``). An attempt adopts the job it finds active before it submits one of its own, then
follows it from Airflow's triggerer with the one follower (``uniad.train.follow``) and says what its end means
(``uniad.train.ending``). The Airflow operator and triggers only call these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .ending import End
from .slurm import ACTIVE

# States a job is in while it may still train, whatever runs it: Slurm's names (a local job is PENDING while its
# supervisor starts, RUNNING after).
__all__ = ["ACTIVE", "Job", "Outcome", "StageExecutor"]


@dataclass
class Job:
    """A job of the stage: its id, when it was submitted (epoch seconds), and its state as last read."""

    job_id: str
    started: float
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.state.get("JobState") in ACTIVE

    @property
    def completed(self) -> bool:
        return self.state.get("JobState") == "COMPLETED"


@dataclass(frozen=True)
class Outcome:
    """What a job's end means for the stage: ``end`` says what follows; ``message`` says why, for the task log."""

    end: End
    message: str
    result: dict | None = None  # the stage's result when it completed
    cause: str | None = None  # what people are alerted to ("out_of_memory"), when the end has such a cause


class StageExecutor(Protocol):
    """One stage of one run, however it runs."""

    executor: str  # "local" or "slurm": the name in the plan and in the task state store
    label: str  # "local" or "Slurm", as the task log names its jobs

    def describe(self, job_id: str) -> dict[str, Any]:
        """The job's state (``JobState`` and what else is known of it)."""

    def adopt(self, known: str | None, started: float | None = None) -> Job | None:
        """The job this attempt follows instead of submitting: ``known`` (the task state store's) or any job of the
        stage and work dir that is active; None when there is none."""

    def submit(self, attempt: int, continuing: str | None = None) -> Job:
        """A new job of ``attempt`` that resumes from the newest valid checkpoint."""

    def cancel(self, job_id: str, reason: str = "cancelled") -> dict[str, Any]:
        """Stop the job; its state after."""

    def finish(self, event: dict) -> Outcome:
        """The follower's last event of a job: record its end and say what follows."""
