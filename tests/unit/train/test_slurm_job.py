"""The Slurm batch step's own decisions, without a cluster: the resume point chosen at each start of the job, the
argv it resumes with, and what its marker says of a job the controller forgot."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest

from uniad.train import slurm
from uniad.train.launch import TRAINSIDE_DIR
from uniad.workdir import WorkDir

sys.path.insert(0, str(TRAINSIDE_DIR))  # the batch step imports its siblings as the training interpreter does
import uniad_slurm_job as batch  # noqa: E402
import uniad_workdir  # noqa: E402


def checkpoint(path: Path, complete: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"x" * 100)
    if not complete:  # a save cut short: the archive's directory at its end is missing
        path.write_bytes(path.read_bytes()[:60])
    return path


def resume(work_dir: Path, position=None, source=None, max_epochs=6) -> dict:
    return {"work_dir": str(work_dir), "from": source, "position": position, "max_epochs": max_epochs, "validate": True}


def test_a_requeued_job_resumes_from_the_newest_complete_checkpoint_it_wrote(tmp_path, capsys):
    submitted = checkpoint(tmp_path / "epoch_1.pth")
    checkpoint(tmp_path / "epoch_2_iter_5.pth")
    checkpoint(tmp_path / "epoch_2.pth", complete=False)  # killed while saving: no resume point
    chosen, position = batch.choose_resume(resume(tmp_path, [1, 0], str(submitted)), out=sys.stdout)
    assert (chosen, position) == (str(tmp_path / "epoch_2_iter_5.pth"), [1, 5])
    assert "epoch_2.pth: it was not written to its end" in capsys.readouterr().out


def test_the_first_start_keeps_the_submitted_resume_point(tmp_path):
    submitted = checkpoint(tmp_path / "epoch_3.pth")
    checkpoint(tmp_path / "epoch_2.pth")  # older than what the job was submitted with: never gone back to
    assert batch.choose_resume(resume(tmp_path, [3, 0], str(submitted))) == (str(submitted), [3, 0])
    # A job submitted to start from scratch and requeued after its first epoch goes on from that epoch.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    assert batch.choose_resume(resume(fresh)) == (None, None)
    checkpoint(fresh / "epoch_1.pth")
    assert batch.choose_resume(resume(fresh)) == (str(fresh / "epoch_1.pth"), [1, 0])


def test_a_final_checkpoint_is_resumed_only_once_its_evaluation_is_logged(tmp_path):
    checkpoint(tmp_path / "epoch_5.pth")
    checkpoint(tmp_path / "epoch_6.pth")
    assert batch.choose_resume(resume(tmp_path, [4, 0]))[1] == [5, 0]  # epoch 6 trains again, and is evaluated
    (tmp_path / "20261204_100000.log.json").write_text(
        '{"env_info": ""}\n{"mode": "val", "epoch": 6, "iter": 10, "pts_bbox_NuScenes/amota": 0.1}\n{"mode": "tr'
    )
    assert batch.choose_resume(resume(tmp_path, [4, 0]))[1] == [6, 0]


@pytest.mark.parametrize(
    ("argv", "path", "expected"),
    [
        (["train.py", "c.py", "--cfg-options", "a=1"], "/w/e.pth", ["train.py", "c.py", "--resume-from", "/w/e.pth"]),
        (["train.py", "--resume-from", "/w/old.pth", "--cfg-options"], "/w/e.pth", ["train.py", "--resume-from"]),
        (["train.py", "--resume-from", "/w/old.pth", "--cfg-options", "a=1"], None, ["train.py", "--cfg-options"]),
    ],
)
def test_the_resume_point_is_written_into_train_pys_arguments(argv, path, expected):
    rewritten = batch.with_resume(argv, path)
    assert rewritten[: len(expected)] == expected
    assert rewritten.count("--resume-from") == (1 if path else 0) and "/w/old.pth" not in rewritten


def marker(work_dir: Path, job_id: str, *ends) -> None:
    starts = [{"restart": i, "time": 1764842400.0 + i, "nodes": ["n1", "n2"], "end": end} for i, end in enumerate(ends)]
    for start in starts:
        if start["end"] is None:
            del start["end"]
    uniad_workdir.write_job_marker(str(work_dir), job_id, {"job_id": job_id, "starts": starts})


def test_a_forgotten_job_is_resolved_from_its_batch_steps_marker(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")  # no sacct: a cluster without accounting
    work_dir = WorkDir(tmp_path)
    assert slurm.forgotten_job_state("7", work_dir)["JobState"] == "UNKNOWN"
    marker(tmp_path, "7", {"time": 1764843000.0, "returncode": 0, "reason": "completed"})
    assert slurm.forgotten_job_state("7", work_dir)["JobState"] == "COMPLETED"
    # Requeued, then stopped at a checkpoint ahead of its time limit: a continuation, not a failure.
    marker(
        tmp_path,
        "8",
        {"time": 1.0, "returncode": 143, "reason": "terminated"},
        {"time": 2.0, "returncode": 75, "reason": "time_limit"},
    )
    state = slurm.forgotten_job_state("8", work_dir)
    assert (state["JobState"], state["ExitCode"]) == ("FAILED", "75:0")
    assert slurm.end_status(state, work_dir, "8") == slurm.TIME_LIMIT and slurm.TIME_LIMIT in slurm.CONTINUED
    # Started and never ended: killed with its node. Not taken for success, not for a time limit.
    marker(tmp_path, "9", None)
    lost = slurm.forgotten_job_state("9", work_dir)
    assert lost["JobState"] == "LOST" and lost["NodeList"] == "n1,n2" and "recorded no end" in lost["Reason"]
    assert json.loads((tmp_path / "slurm-9.job.json").read_text())["starts"][0]["restart"] == 0


def test_a_job_that_failed_with_the_stop_code_is_a_time_limit_only_if_its_batch_step_says_so(tmp_path):
    work_dir = WorkDir(tmp_path)
    failed = {"JobState": "FAILED", "ExitCode": "75:0"}
    assert slurm.end_status(failed, work_dir, "3") == "FAILED"  # a rank's own exit code 75: no marker, a failure
    marker(tmp_path, "3", {"time": 2.0, "returncode": 75, "reason": "time_limit"})
    assert slurm.end_status(failed, work_dir, "3") == slurm.TIME_LIMIT
    assert slurm.end_status({"JobState": "FAILED", "ExitCode": "1:0"}, work_dir, "3") == "FAILED"


@pytest.fixture
def own_signals():
    """Job.run installs its handlers in this process: give pytest's back afterwards."""
    import signal

    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGUSR2, signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(
    ("on_stop", "returncode", "reason"),
    [
        ("sys.exit(75)", 75, "time_limit"),  # the ranks checkpointed and stopped
        ("None", 75, "time_limit"),  # killed by the signal before they handled it: a continuation all the same
        ("sys.exit(0)", 0, "completed"),  # the signal came as the stage's last iteration ended
    ],
)
def test_the_stop_signal_reaches_the_ranks_and_the_end_says_why(tmp_path, own_signals, on_stop, returncode, reason):
    import os
    import signal
    import threading

    job = batch.Job({"resume": {"work_dir": str(tmp_path)}}, {"SLURM_JOB_ID": "12", "SLURM_RESTART_COUNT": "1"})
    job.record_start(["n1"], None, None)
    handler = f"signal.signal(signal.SIGUSR2, lambda *a: {on_stop})" if on_stop != "None" else "None"
    rank = f"import signal, sys, time; {handler}; time.sleep(20); sys.exit(1)"
    # As Slurm does with --signal=B:USR2@LEAD: to the batch step, which passes it on to srun (here the rank itself).
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGUSR2)).start()
    assert job.run([sys.executable, "-c", rank], dict(os.environ)) == returncode
    (start,) = json.loads((tmp_path / "slurm-12.job.json").read_text())["starts"]
    assert start["restart"] == 1 and start["end"]["reason"] == reason and start["end"]["returncode"] == returncode
