"""What a Slurm job's end means for its stage (``SlurmStage.finish``), one rule with the local executor's."""

from __future__ import annotations

import pytest

from uniad.train import slurm
from uniad.train.ending import End, classify_end
from uniad.train.launch import SlurmSettings, StageSpec
from uniad.train.slurm_stage import SlurmStage


def stage(tmp_path, max_continuations: int = 20) -> SlurmStage:
    spec = StageSpec(
        uniad_root=str(tmp_path),
        config="projects/configs/stage1_track_map/full_track_map.py",
        work_dir="work",
        max_epochs=6,
        nproc_per_node=1,
        python="/usr/bin/python3",
    )
    (tmp_path / "work").mkdir()
    settings = SlurmSettings(nnodes=2, max_continuations=max_continuations)
    return SlurmStage(spec, settings, stage="stage1", run_id="manual__1", env={})


NAN = {"code": "non_finite_loss", "message": "loss is nan at epoch 2 iter 10"}
STALL = {"code": "stall", "message": "no new log records for 700 s"}


@pytest.mark.parametrize(
    ("status", "extra", "end", "says"),
    [
        ("COMPLETED", {}, End.COMPLETED, "completed"),
        ("TIME_LIMIT", {}, End.CONTINUE, "continuing the stage in a new job"),
        ("PREEMPTED", {}, End.CONTINUE, "continuation 1 of at most 20"),
        ("NODE_FAIL", {}, End.CONTINUE, "newest checkpoint"),
        ("FAILED", {}, End.RETRY, "a retry resumes from the newest valid checkpoint"),
        ("LOST", {}, End.RETRY, "ended LOST"),
        ("OUT_OF_MEMORY", {}, End.FINAL, "ran out of GPU memory"),
        ("unhealthy", {"finding": NAN}, End.FINAL, "non_finite_loss: loss is nan"),
        ("unhealthy", {"finding": STALL}, End.RETRY, "stall: no new log records"),
    ],
)
def test_each_end_of_a_job_is_recorded_and_decides_what_follows(tmp_path, status, extra, end, says):
    run = stage(tmp_path)
    slurm.record_job(run.work_dir, "5", attempt=1, state="PENDING", nnodes=2)
    outcome = run.finish({"job_id": "5", "status": status, "state": {"JobState": "X", "NodeList": "n[1-2]"}, **extra})
    assert outcome.end is end and says in outcome.message, outcome
    assert slurm.read_jobs(run.work_dir)[0]["state"] == status  # the audit trail has the end


def test_continuations_are_bounded_then_retried(tmp_path):
    run = stage(tmp_path, max_continuations=1)
    slurm.record_job(run.work_dir, "5", attempt=1, state="TIME_LIMIT")
    slurm.record_job(run.work_dir, "6", attempt=1, state="PENDING", continues="5")
    outcome = run.finish({"job_id": "6", "status": "TIMEOUT", "state": {}})
    assert outcome.end is End.RETRY and "after 1 continuation(s), slurm_max_continuations" in outcome.message


def test_the_controller_away_records_nothing(tmp_path):
    run = stage(tmp_path)
    slurm.record_job(run.work_dir, "5", attempt=1, state="RUNNING")
    outcome = run.finish({"job_id": "5", "status": slurm.UNREACHABLE, "away_s": 901.0, "state": {"Reason": "x"}})
    assert outcome.end is End.RETRY and "did not answer about job 5 for 901 s" in outcome.message
    assert slurm.read_jobs(run.work_dir)[0]["state"] == "RUNNING"


def test_local_and_slurm_ends_follow_one_rule():
    assert classify_end(finding="non_finite_loss") is End.FINAL and classify_end(finding="not_resumed") is End.FINAL
    assert classify_end(finding="stall") is End.RETRY and classify_end() is End.RETRY
    assert classify_end(out_of_memory=True, continued=True) is End.FINAL
    assert classify_end(continued=True) is End.CONTINUE and classify_end(completed=True) is End.COMPLETED
