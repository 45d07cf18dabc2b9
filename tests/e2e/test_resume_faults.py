"""Resume on retry with real training: a crash or a killed rank mid-epoch, the retry resumes from the newest valid
checkpoint (an epoch's, or a mid-epoch one) and the stage ends with all its epochs; stale checkpoints of another run
are never picked up."""

from __future__ import annotations

import os

import pytest

from support import PYTHON, mini_train_argv, processes_mentioning, run
from uniad.artifacts.checkpoints import inspect_checkpoint
from uniad.health.gate import validate_stage
from uniad.health.logs import read_log
from uniad.train.launch import StageSpec
from uniad.train.resume import plan_attempt
from uniad.workdir import WorkDir

CONFIG = "projects/configs/stage1_track_map/full_track_map.py"
WORK = "projects/work_dirs/stage1_track_map/full_track_map"


def train(root, run_id, *extra, check=False, epochs=3):
    return run(
        [
            *mini_train_argv(root, CONFIG, str(epochs)),
            "--run-id",
            run_id,
            "--stage",
            "stage1",
            *extra,
        ],
        check=check,
        timeout=300,
    )


def test_mid_epoch_checkpoint_resume_ends_bit_identical_to_an_uninterrupted_run(tmp_path, trained_root):
    """checkpoint_interval_iters: a crash at iteration 26 of epoch 2 loses 6 iterations, not the epoch, and the
    resumed stage is the same computation as trained_root's uninterrupted one (same seed, 2 epochs, 2 ranks)."""
    import torch

    root = tmp_path / "root"
    run([PYTHON, "-m", "uniad", "init-mini", str(root)])
    options = [
        "--checkpoint-interval-iters",
        "10",
        "--cfg-options",
        "fault_injection.kind=crash",
        "fault_injection.epoch=2",
        "fault_injection.iter=26",
        "fault_injection.once=True",
    ]
    first = train(root, "run-m", *options, epochs=2)
    assert first.returncode == 1 and "exited with code" in first.stderr
    assert processes_mentioning(str(root)) == []
    work = root / WORK
    # Epoch 1's iteration checkpoints went once epoch_1.pth existed; of epoch 2's only the newest is kept.
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_1.pth", "epoch_2_iter_20.pth", "latest.pth"]
    assert (work / "latest.pth").resolve().name == "epoch_1.pth" and not list(work.glob(".*.part"))
    report = inspect_checkpoint(work / "epoch_2_iter_20.pth", stage="stage1")
    assert report.valid and (report.epoch, report.iter, report.inner_iter) == (1, 60, 20)

    # A truncated newer checkpoint, as a crash during a save leaves: the retry must skip it and say why.
    (work / "epoch_2.pth").write_bytes((work / "epoch_1.pth").read_bytes()[:1000])

    second = train(root, "run-m", *options, epochs=2)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "epoch_2.pth: " in second.stderr and "unreadable or truncated" in second.stderr
    assert f"resuming from {work / 'epoch_2_iter_20.pth'} (epoch 2, after iteration 20)" in second.stdout
    first_log, resumed_log = sorted(work.glob("*.log.json"))
    resumed_text = resumed_log.with_suffix("").read_text()
    assert "resumed epoch 1, iter 60" in resumed_text and "skipping its first 20 iterations" in resumed_text

    # Iterations 21-26 were redone; the logged ones carry the uninterrupted run's numbers and losses.
    def train_records(log):
        return [r for r in read_log(log)[0] if r["mode"] == "train"]

    got = [(r["epoch"], r["iter"], r["loss"]) for r in train_records(first_log)[:6] + train_records(resumed_log)]
    reference_log = sorted(trained_root["stage1_dir"].glob("*.log.json"))[-1]
    assert got == [(r["epoch"], r["iter"], r["loss"]) for r in train_records(reference_log)]
    assert [(r["epoch"], r["iter"]) for r in train_records(resumed_log)] == [(2, 30), (2, 40)]
    # Both ended with the final epoch's evaluation, on the same weights: the same metrics.
    (ours_val,) = [r for r in read_log(resumed_log)[0] if r["mode"] == "val"]
    (reference_val,) = [r for r in read_log(reference_log)[0] if r["mode"] == "val"]
    assert ours_val == reference_val and ours_val["epoch"] == 2
    assert sorted(p.name for p in work.glob("*.pth")) == ["epoch_1.pth", "epoch_2.pth", "latest.pth"]
    ours = torch.load(work / "epoch_2.pth", weights_only=True)
    reference = torch.load(trained_root["stage1_dir"] / "epoch_2.pth", weights_only=True)
    assert ours["state_dict"].keys() == reference["state_dict"].keys()
    assert all(torch.equal(ours["state_dict"][k], reference["state_dict"][k]) for k in reference["state_dict"])
    assert (ours["meta"]["epoch"], ours["meta"]["iter"]) == (2, 80) and "mid_epoch" not in ours["meta"]
    gate = validate_stage(WorkDir(work), "stage1", expect_epoch=2)
    assert gate["verdict"] == "healthy" and gate["progress"] == 1.0 and len(gate["logs"]) == 2
    assert "- records: 8" in (work / "health/report.md").read_text()


def test_resume_that_silently_restarts_is_stopped(tmp_path):
    """UniAD ignores a --resume-from it cannot read; the runner notices from the first logged epoch."""
    root = tmp_path / "root"
    run([PYTHON, "-m", "uniad", "init-mini", str(root)])
    assert (
        train(
            root,
            "run-a",
            "--cfg-options",
            "fault_injection.kind=crash",
            "fault_injection.epoch=2",
            "fault_injection.iter=5",
        ).returncode
        == 1
    )
    work = root / WORK
    # The checkpoint the attempt was planned with is gone by the time train.py starts (a cleanup job, another
    # mount): train.py then restarts from epoch 1 without a word, which the runner must catch.
    spec = StageSpec(
        uniad_root=str(root), config=CONFIG, work_dir=WORK + "/", max_epochs=3, nproc_per_node=2, python=PYTHON
    )
    attempt = plan_attempt(spec, "stage1", run_id="run-a")
    assert attempt.resumed_epoch == 1
    os.rename(work / "epoch_1.pth", work / "moved.pth")
    from uniad.errors import TrainingFailed
    from uniad.train.process import make_stage_run

    stage_run = make_stage_run(attempt.spec, stage="stage1", resume_point=attempt.resume_point)
    with pytest.raises(
        TrainingFailed,
        match="not_resumed: training did not resume: its first record is epoch 1 iteration 10, expected epoch 2",
    ):
        stage_run.run()
    assert stage_run.leftover_pids() == []


def test_kill_9_of_a_rank_fails_the_attempt_and_the_retry_finishes(tmp_path):
    import signal
    import subprocess
    import time

    root = tmp_path / "root"
    run([PYTHON, "-m", "uniad", "init-mini", str(root)])
    proc = subprocess.Popen(
        [
            *mini_train_argv(root, CONFIG, 3),
            "--run-id",
            "run-k",
            "--stage",
            "stage1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("[full_track_map] epoch 2/3 iter 20/40"):
            break
    ranks = [p for p in processes_mentioning(str(root)) if "tools/train.py" in p and "torch.distributed" not in p]
    assert len(ranks) == 2, ranks
    os.kill(int(ranks[1].split()[0]), signal.SIGKILL)
    started = time.monotonic()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "training exited with code" in stderr, stderr[-2000:]
    assert time.monotonic() - started < 60
    assert processes_mentioning(str(root)) == []

    work = root / WORK
    retry = train(root, "run-k")
    assert retry.returncode == 0, retry.stdout[-2000:] + retry.stderr[-2000:]
    assert f"resuming from {work / 'epoch_1.pth'} (epoch 1)" in retry.stdout
    assert inspect_checkpoint(work / "latest.pth", stage="stage1", expect_epoch=3).valid
    assert sorted(p.name for p in work.glob("epoch_*.pth")) == ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth"]
