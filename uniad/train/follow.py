"""One follower for a stage's training, however it runs: a local process group or a Slurm job.

It reads the stage's text log of the current start (mmcv names it by its start time: only a log written since that
start counts) incrementally, and from it keeps the health watch (NaN/Inf, exploding gradients, stall), the check
that a resumed start really resumed (train.py ignores a ``--resume-from`` it cannot read and restarts from
``load_from``), and progress with ETA. A Slurm job that Slurm starts again (a requeue) is followed on through
``restart``: the new start's log, resume point and stall clock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..health.logs import LogReader
from ..health.monitor import ERROR, Finding, HealthMonitor, Thresholds
from ..workdir import WorkDir, text_log_of
from .progress import Progress, ProgressTracker

logger = logging.getLogger(__name__)


class StageFollower:
    """Follows one stage in ``work_dir`` from ``started`` (epoch seconds) on; ``poll`` as often as suits."""

    def __init__(
        self,
        work_dir: WorkDir,
        stage: str,
        total_epochs: int,
        *,
        started: float,
        thresholds: Thresholds | None = None,
        later_epochs: int | None = None,
        resume_point: tuple[int, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.work_dir = work_dir
        self.stage = stage
        self.monitor = HealthMonitor(thresholds)
        self.tracker = ProgressTracker(stage, total_epochs, clock=clock, later_epochs=later_epochs)
        self.started = started
        # (epoch, iterations of it in the checkpoint): the start's first record must be in that epoch, after them.
        self.resume_point = resume_point
        self.starts = 1
        self._clock = clock
        self._reader: LogReader | None = None
        self.last_record: dict = {}
        self.records: list[dict] = []  # the records the last poll read (experiment tracking logs them)

    @property
    def log(self) -> LogReader | None:
        return self._reader

    def restart(self, started: float, resume_point: tuple[int, int] | None) -> None:
        """The stage started again at ``started`` (a requeued job): follow that start's log from its resume point;
        the stall clock waits for its first record."""
        self.started, self.resume_point = started, resume_point
        self.starts += 1
        self._reader, self.last_record = None, {}
        self.monitor.wait_for_records()

    def poll(self) -> list[Progress]:
        """Read what the log gained; the progress of each train record in it."""
        if self._reader is None:
            log = self.work_dir.latest_json_log(newer_than=self.started - 1)
            if log is None:
                self.records = []
                return []
            self._reader = LogReader(text_log_of(log))  # the text log has the epoch length
            logger.info("%s: following %s", self.stage, self._reader.path)
        now = self._clock()
        progress = []
        self.records = self._reader.poll()
        for record in self.records:
            if record.get("mode") == "train":
                if not self.last_record:
                    self._check_resumed(record)
                self.last_record = record
            self.monitor.feed(record, now)
            if (update := self.tracker.update_record(record)) is not None:
                progress.append(update)
        return progress

    def finding(self, output_at: float | None = None, *, running: bool = True) -> Finding | None:
        """The first fatal finding, or a stall (silence in the log and, ``output_at`` on this follower's clock, in
        the output) while the stage is ``running``: the reason to stop it."""
        if self.monitor.fatal is not None or not running:
            return self.monitor.fatal
        last = self.last_record
        return self.monitor.check_stall(self._clock(), last.get("epoch"), last.get("iter"), output_at)

    def _check_resumed(self, record: dict) -> None:
        if self.resume_point is None:
            return
        epoch, done = self.resume_point
        if record.get("epoch") != epoch or (record.get("iter") or 0) <= done:
            expected = f"epoch {epoch}" + (f" after iteration {done}" if done else "")
            self.monitor.add(
                Finding(
                    ERROR,
                    "not_resumed",
                    f"training did not resume: its first record is epoch {record.get('epoch')} iteration "
                    f"{record.get('iter')}, expected {expected} (train.py ignores a --resume-from it cannot read and "
                    "restarts from load_from)",
                    record.get("epoch"),
                    record.get("iter"),
                )
            )
