"""The project's exception types. Messages say what went wrong and how to fix it."""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: bad input or a state the pipeline refuses to work with."""


class LaunchError(PipelineError):
    """A launch spec could not be built from the given settings."""


class TrainingFailed(PipelineError):
    """A training stage exited non-zero or was stopped; carries the exit code and the tail of its output."""

    def __init__(self, message: str, returncode: int | None = None, tail: list[str] | None = None) -> None:
        self.returncode = returncode
        self.tail = list(tail or [])
        if self.tail:
            message = message + "\nlast lines of output:\n" + "\n".join(self.tail)
        super().__init__(message)


class CheckpointError(PipelineError):
    """A checkpoint is unreadable, unsafe or not valid for what it is used for."""


class GateFailed(PipelineError):
    """A stage did not pass its gate: unhealthy training or an invalid checkpoint."""
