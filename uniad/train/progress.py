"""Where a stage is and when it will end: one ETA estimator for the task log and the dashboard.

The ETA is remaining iterations x seconds per iteration, measured on this run (wall clock between records in the
task log, mmcv's logged ``time`` in the dashboard), never mmcv's own ``eta`` field. The pipeline ETA adds the later
stages' iterations at the same rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from ..health.logs import parse_mmcv_train_line


def estimate_eta(
    remaining_iters: int, seconds_per_iter: float, later_iters: int | None = None
) -> tuple[float, float | None]:
    """(this stage's ETA, the pipeline's ETA or None when ``later_iters`` is not known) in seconds."""
    eta = max(remaining_iters, 0) * seconds_per_iter
    return eta, (eta + later_iters * seconds_per_iter if later_iters is not None else None)


def format_duration(seconds: float) -> str:
    return str(timedelta(seconds=int(max(seconds, 0))))


@dataclass
class Progress:
    """Where a stage is, from the latest mmcv train line, with a wall-clock ETA for the whole stage."""

    stage: str
    epoch: int
    total_epochs: int
    iter: int
    iters_per_epoch: int
    fraction: float
    loss: float | None
    elapsed_s: float
    eta_s: float | None
    pipeline_eta_s: float | None = None

    def line(self) -> str:
        parts = [
            f"[{self.stage}] epoch {self.epoch}/{self.total_epochs} iter {self.iter}/{self.iters_per_epoch}",
            f"{self.fraction * 100:5.1f}%",
        ]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        parts.append(f"elapsed {format_duration(self.elapsed_s)}")
        parts.append(f"ETA {format_duration(self.eta_s)}" if self.eta_s is not None else "ETA --")
        if self.pipeline_eta_s is not None:
            parts.append(f"pipeline ETA {format_duration(self.pipeline_eta_s)}")
        return " | ".join(parts)


class ProgressTracker:
    """Turns train lines into Progress; the ETA comes from the observed rate, not from mmcv's own estimate."""

    def __init__(
        self,
        stage: str,
        total_epochs: int,
        clock: Callable[[], float] = time.monotonic,
        later_epochs: int | None = None,
    ) -> None:
        self.stage = stage
        self.total_epochs = total_epochs
        # Epochs of the stages after this one; their time is estimated at this stage's seconds per iteration.
        self.later_epochs = later_epochs
        self._clock = clock
        self._start = clock()
        self._first: tuple[float, int] | None = None  # (clock, global iteration) of the first record seen
        self.latest: Progress | None = None

    def update(self, line: str) -> Progress | None:
        record = parse_mmcv_train_line(line)
        return self.update_record(record) if record is not None else None

    def update_record(self, record: dict) -> Progress | None:
        """The same from a parsed train record of a text log (which says the epoch length)."""
        if record.get("mode") != "train" or not record.get("iters_per_epoch"):
            return None
        now = self._clock()
        per_epoch = record["iters_per_epoch"]
        total_iters = max(self.total_epochs * per_epoch, 1)
        done = (record["epoch"] - 1) * per_epoch + record["iter"]
        fraction = min(done / total_iters, 1.0)
        eta = pipeline_eta = None
        if self._first is None:
            self._first = (now, done)
        elif done > self._first[1]:
            seconds_per_iter = (now - self._first[0]) / (done - self._first[1])
            later = self.later_epochs * per_epoch if self.later_epochs is not None else None
            eta, pipeline_eta = estimate_eta(total_iters - done, seconds_per_iter, later)
        loss = record.get("loss")
        self.latest = Progress(
            stage=self.stage,
            epoch=record["epoch"],
            total_epochs=self.total_epochs,
            iter=record["iter"],
            iters_per_epoch=per_epoch,
            fraction=fraction,
            loss=loss if isinstance(loss, float) else None,
            elapsed_s=now - self._start,
            eta_s=eta,
            pipeline_eta_s=pipeline_eta,
        )
        return self.latest
