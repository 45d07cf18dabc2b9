"""The project's exception types, one per layer. Messages say what went wrong and how to fix it.

Whether a failure is worth a retry is part of the type (``retryable``): bad input, a refused checkpoint or a failed
gate come back the same on a retry; a crashed or preempted process, or a failed transfer, may not.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: bad input or a state the pipeline refuses to work with."""

    retryable = False


class ParamError(PipelineError):
    """A trigger parameter (or a CLI argument) is invalid; raised before any GPU is taken."""


class LaunchError(PipelineError):
    """A stage cannot be launched on this worker as asked (backend, GPUs, interpreter)."""


class TrainingFailed(PipelineError):
    """A training stage exited non-zero or was stopped; carries the exit code and the tail of its output.

    ``retryable`` is False when a retry would fail the same way: the health watch stopped the run for NaN/Inf
    or exploding gradients."""

    def __init__(
        self, message: str, returncode: int | None = None, tail: list[str] | None = None, *, retryable: bool = True
    ) -> None:
        self.returncode = returncode
        self.tail = list(tail or [])
        self.retryable = retryable
        if self.tail:
            message = message + "\nlast lines of output:\n" + "\n".join(self.tail)
        super().__init__(message)


class CheckpointError(PipelineError):
    """A checkpoint is unreadable, unsafe or not valid for what it is used for."""


class StorageError(PipelineError):
    """An S3 location is malformed, or a transfer failed or does not match its source."""

    retryable = True


class GateFailed(PipelineError):
    """A stage did not pass its gate: unhealthy training or an invalid checkpoint."""
