"""The one follower of a stage (local process group and Slurm job alike), on logs written as mmcv writes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

from uniad.health.monitor import Thresholds
from uniad.train.follow import StageFollower
from uniad.workdir import WorkDir

LINE = (
    "2026-12-04 10:00:00,000 - mmdet - INFO - Epoch [{e}][{i}/40]\tlr: 2.000e-04, eta: 0:01:00, time: 0.5, loss: {loss}"
)


def write_log(work_dir: Path, name: str, records: list[tuple[int, int, str]], at: float) -> None:
    """mmcv's text and json logs of one start, with their files' times set to ``at``."""
    text = work_dir / f"{name}.log"
    text.write_text("".join(LINE.format(e=e, i=i, loss=loss) + "\n" for e, i, loss in records))
    (work_dir / f"{name}.log.json").write_text('{"env_info": ""}\n')
    for path in (text, work_dir / f"{name}.log.json"):
        os.utime(path, (at, at))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_requeued_start_is_followed_in_its_own_log_from_its_resume_point(tmp_path):
    clock = Clock()
    started = time.time() - 100
    write_log(tmp_path, "20261204_100000", [(1, 10, "2.0"), (1, 20, "1.5")], at=started + 10)
    follower = StageFollower(
        WorkDir(tmp_path), "stage1", 2, started=started, thresholds=Thresholds(stall_min_s=60), clock=clock
    )
    progress = follower.poll()
    assert [(p.epoch, p.iter) for p in progress] == [(1, 10), (1, 20)] and progress[0].iters_per_epoch == 40
    clock.now += 61
    assert follower.finding().code == "stall"  # silence while it runs

    # Requeued: however long it waits for its next start, no stall; the new start's log is the one followed.
    follower = StageFollower(
        WorkDir(tmp_path), "stage1", 2, started=started, thresholds=Thresholds(stall_min_s=60), clock=clock
    )
    follower.poll()
    follower.restart(started + 50, resume_point=(1, 20))
    clock.now += 600
    assert follower.finding() is None and follower.poll() == []
    write_log(tmp_path, "20261204_100100", [(1, 30, "1.2")], at=started + 60)
    assert [(p.epoch, p.iter) for p in follower.poll()] == [(1, 30)]
    assert follower.finding() is None and follower.starts == 2 and follower.log.path.name == "20261204_100100.log"


def test_a_start_that_did_not_resume_is_fatal(tmp_path):
    started = time.time() - 100
    write_log(tmp_path, "20261204_100000", [(1, 10, "2.0")], at=started + 10)
    follower = StageFollower(WorkDir(tmp_path), "stage1", 6, started=started, resume_point=(3, 0))
    follower.poll()
    finding = follower.finding()
    assert finding.code == "not_resumed" and "expected epoch 3" in finding.message


def test_an_older_log_is_not_this_starts(tmp_path):
    started = time.time()
    write_log(tmp_path, "20261203_100000", [(6, 40, "0.5")], at=started - 3600)
    follower = StageFollower(WorkDir(tmp_path), "stage1", 6, started=started)
    assert follower.poll() == [] and follower.log is None
