"""How a stage's run ended decides what follows, for every executor (a local process group, a Slurm job)."""

from __future__ import annotations

from enum import Enum


class End(str, Enum):
    COMPLETED = "completed"
    # Preempted, a node lost, the time limit: the stage goes on in a new job from its newest checkpoint, and no retry
    # is spent.
    CONTINUE = "continue"
    # A crashed rank, a stall, a job cancelled from outside, the controller away: a retry resumes from the newest
    # valid checkpoint.
    RETRY = "retry"
    # NaN/Inf or exploding gradients, a start that did not resume, out of memory: a retry with the same settings
    # fails the same way.
    FINAL = "final"


def classify_end(
    *, finding: str | None = None, out_of_memory: bool = False, continued: bool = False, completed: bool = False
) -> End:
    """The one rule: ``finding`` is the code of what the health watch stopped the run for (``stall`` is the only
    one a retry may cure), ``continued`` an end that says nothing against the training."""
    if completed:
        return End.COMPLETED
    if out_of_memory or (finding is not None and finding != "stall"):
        return End.FINAL
    return End.CONTINUE if continued else End.RETRY
