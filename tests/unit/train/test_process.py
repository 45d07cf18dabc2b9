"""StageRun with real processes: a stand-in launcher that starts 'ranks' in sessions of their own, as torchrun does."""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from uniad.errors import TrainingFailed
from uniad.train.launch import LaunchCommand
from uniad.train.process import StageRun
from uniad.workdir import WorkDir

LAUNCHER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    pids = sys.argv[1]
    # Like torchrun: every rank in a session of its own, out of the launcher's process group.
    ranks = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
             for _ in range(2)]
    with open(pids, "w") as f:
        f.write(" ".join(str(p.pid) for p in [*ranks]) + " " + str(os.getpid()))
    line = "2024-03-24 01:22:33,251 - mmdet - INFO - Epoch [1][10/40]\\tlr: 2.000e-04, eta: 0:00:10, time: 0.1, loss: 9.5"
    print(line, flush=True)
    # rank 0's logs in the work dir, as mmcv's TextLoggerHook writes them
    with open("work/20240324_012233.log", "w") as f:
        f.write(line + "\\n")
    with open("work/20240324_012233.log.json", "w") as f:
        f.write('{"env_info": ""}\\n{"mode": "train", "epoch": 1, "iter": 10, "lr": 0.0002, "loss": 9.5}\\n')
    mode = sys.argv[2]
    if mode == "fail":
        print("RuntimeError: NCCL communicator was aborted on rank 1", flush=True)
        sys.exit(3)
    if mode == "oom":
        print("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", flush=True)
        sys.exit(1)
    if mode == "ok":
        for r in ranks:
            r.kill()
        sys.exit(0)
    time.sleep(300)
    """
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it holds nothing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


def make_run(tmp_path: Path, mode: str, lines: list[str], progress: list) -> tuple[StageRun, Path]:
    script = tmp_path / "launcher.py"
    script.write_text(LAUNCHER)
    pids = tmp_path / "pids"
    command = LaunchCommand(
        argv=[sys.executable, str(script), str(pids), mode],
        env={"PYTHONUNBUFFERED": "1"},
        cwd=str(tmp_path),
        backend="gloo",
    )
    work_dir = WorkDir(tmp_path / "work")
    work_dir.path.mkdir()
    run = StageRun(
        command,
        stage="stage1",
        total_epochs=6,
        emit_output=lines.append,
        emit_progress=progress.append,
        work_dir=work_dir,
    )
    return run, pids


def read_pids(path: Path) -> list[int]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return [int(p) for p in path.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("launcher did not start")


def test_success_streams_output_and_progress_from_the_stages_log(tmp_path):
    lines, progress = [], []
    run, _ = make_run(tmp_path, "ok", lines, progress)
    result = run.run()
    assert result.returncode == 0
    assert any("Epoch [1][10/40]" in line for line in lines)
    assert progress[0].epoch == 1 and progress[0].iter == 10 and progress[0].loss == 9.5


def test_failure_raises_with_exit_code_and_last_lines(tmp_path):
    run, pids = make_run(tmp_path, "fail", [], [])
    with pytest.raises(TrainingFailed) as info:
        run.run()
    assert info.value.returncode == 3
    assert "exited with code 3" in str(info.value)
    assert "RuntimeError: NCCL communicator was aborted on rank 1" in str(info.value)
    assert info.value.retryable  # a crashed rank: the retry resumes from the newest checkpoint
    # Ranks left behind by a crashed launcher are found by the run's token and killed.
    assert wait_gone(read_pids(pids))
    assert run.leftover_pids() == []


def test_out_of_memory_fails_without_retry_and_says_what_to_lower(tmp_path):
    run, pids = make_run(tmp_path, "oom", [], [])
    with pytest.raises(TrainingFailed) as info:
        run.run()
    assert not info.value.retryable
    assert "ran out of GPU memory" in str(info.value) and "samples_per_gpu" in str(info.value)
    assert "queue_length" in str(info.value) and "~50 GB per GPU" in str(info.value)
    assert wait_gone(read_pids(pids))


def test_terminate_kills_the_whole_process_group(tmp_path):
    run, pids = make_run(tmp_path, "hang", [], [])
    outcome = {}

    def wait():
        try:
            run.wait()
        except TrainingFailed as exc:
            outcome["error"] = exc

    run.start()
    waiter = threading.Thread(target=wait)
    waiter.start()
    all_pids = read_pids(pids)
    assert all(alive(pid) for pid in all_pids)
    started = time.monotonic()
    run.terminate(grace_s=5, reason="the Airflow task was stopped")
    waiter.join(timeout=15)
    assert wait_gone(all_pids, timeout=5), "ranks survived terminate()"
    assert run.leftover_pids() == []
    assert time.monotonic() - started < 10
    assert "the Airflow task was stopped" in str(outcome["error"])
    assert outcome["error"].returncode == -15


def test_gpu_probe_needs_no_interpreter_where_there_are_no_nvidia_devices():
    from uniad.train.process import probe_visible_gpus

    if any(Path("/dev").glob("nvidia[0-9]*")):  # a GPU machine: the interpreter is asked, and a missing one is named
        with pytest.raises(TrainingFailed, match="UNIAD_PYTHON"):
            probe_visible_gpus("/nonexistent/python")
    else:
        assert probe_visible_gpus("/nonexistent/python") == 0
