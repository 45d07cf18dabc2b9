"""The work dir's lease: one holder trains in a work dir at a time, whoever started it (a local stage, a Slurm job)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from uniad.errors import TrainingFailed
from uniad.train.launch import LaunchCommand
from uniad.train.process import StageRun
from uniad.trainside.uniad_workdir import LEASE_FILE, LEASE_TTL_S, Lease, LeaseHeld, lease_alive, read_lease
from uniad.workdir import WorkDir


def test_a_second_holder_is_refused_while_the_first_holds_the_lease(tmp_path):
    first = Lease(str(tmp_path), "slurm:41").acquire()
    with pytest.raises(LeaseHeld, match="slurm:41 already trains in this work dir"):
        Lease(str(tmp_path), "slurm:42").acquire()
    again = Lease(str(tmp_path), "slurm:41").acquire()  # the same job started again (a requeue) holds it still
    first.release()
    again.release()
    assert read_lease(str(tmp_path)) is None
    Lease(str(tmp_path), "slurm:42").acquire().release()


def holder_process(work_dir, holder: str, hold_s: float) -> subprocess.Popen:
    """A process of its own that takes the lease as ``holder``, says "held", and exits after ``hold_s`` without
    releasing it (as a stopped attempt's process does when it is killed)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys; sys.path[:0] = {sys.path!r}; "
            "from uniad.trainside.uniad_workdir import Lease; import os, time; "
            f"Lease({str(work_dir)!r}, {holder!r}).acquire(); print('held', flush=True); time.sleep({hold_s}); "
            "os._exit(0)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_holder_gone_from_this_host_frees_the_lease_at_once(tmp_path):
    holder = holder_process(tmp_path, "local:other", hold_s=60)
    try:
        lease = read_lease(str(tmp_path))
        assert lease["pid"] == holder.pid and lease_alive(lease, time.time())
        with pytest.raises(LeaseHeld):
            Lease(str(tmp_path), "local:me").acquire()
    finally:
        holder.kill()  # as a worker SIGKILLed: no release, the lease file stays
        holder.wait()
    assert read_lease(str(tmp_path))["holder"] == "local:other"
    Lease(str(tmp_path), "local:me").acquire().release()


def test_a_new_holder_waits_for_a_live_one_being_stopped(tmp_path):
    """A retry that Airflow starts while the attempt it replaces is still being stopped: it waits for that process
    to go, then trains, instead of failing for a lease that is gone seconds later."""
    holder = holder_process(tmp_path, "local:earlier-attempt", hold_s=2)
    told = []
    began = time.monotonic()
    lease = Lease(str(tmp_path), "local:retry").acquire(wait_s=30, on_wait=told.append)
    waited = time.monotonic() - began
    holder.wait()
    assert [held["holder"] for held in told] == ["local:earlier-attempt"]
    assert 1 < waited < 30 and read_lease(str(tmp_path))["holder"] == "local:retry"
    lease.release()


def test_a_superseded_start_neither_renews_nor_removes_the_new_lease(tmp_path):
    """A requeued Slurm job starts again under the same holder name while its earlier start is still being killed:
    the new start takes the lease over, and the earlier start's release leaves it in place."""
    earlier = Lease(str(tmp_path), "slurm:5").acquire()
    later = Lease(str(tmp_path), "slurm:5").acquire()
    earlier.release()
    held = read_lease(str(tmp_path))
    assert held is not None and held["token"] == later.record["token"]
    later.release()
    assert read_lease(str(tmp_path)) is None


def test_a_holder_on_another_host_counts_until_its_heartbeat_is_too_old(tmp_path):
    now = time.time()
    other = {"holder": "slurm:7", "host": "n1", "boot_id": "another-boot", "pid": 1, "pid_start": 1}
    assert lease_alive({**other, "heartbeat": now - 10}, now)
    assert not lease_alive({**other, "heartbeat": now - LEASE_TTL_S - 1}, now)


def test_a_local_stage_does_not_start_where_a_live_holder_trains(tmp_path):
    work_dir = WorkDir(tmp_path / "work")
    work_dir.path.mkdir()
    (work_dir.path / LEASE_FILE).write_text(
        json.dumps(
            {"holder": "slurm:9", "host": "n1", "boot_id": "b", "pid": 1, "pid_start": 1, "heartbeat": time.time()}
        )
    )
    command = LaunchCommand(
        argv=[sys.executable, "-c", "raise SystemExit(0)"], env={}, cwd=str(tmp_path), backend="gloo"
    )
    run = StageRun(command, stage="stage1", total_epochs=1, work_dir=work_dir, lease_wait_s=1)
    with pytest.raises(
        TrainingFailed, match="not started: slurm:9 already trains in this work dir .* after waiting 1 s"
    ) as info:
        run.run()
    assert info.value.retryable and run._proc is None  # nothing was launched
    # A new run does not move a live holder's checkpoints aside either.
    (work_dir.path / ".uniad_run.json").write_text(json.dumps({"run_id": "older", "stage": "stage1"}))
    with pytest.raises(TrainingFailed, match="slurm:9 \\(host n1\\) still trains in it"):
        work_dir.claim("newer", "stage1")
    assert (work_dir.path / ".uniad_run.json").exists()


def test_a_local_stage_holds_the_lease_while_it_runs_and_frees_it(tmp_path):
    work_dir = WorkDir(tmp_path / "work")
    work_dir.path.mkdir()
    probe = f"import json; print(json.load(open({str(work_dir.path / LEASE_FILE)!r}))['holder'])"
    command = LaunchCommand(argv=[sys.executable, "-c", probe], env={}, cwd=str(tmp_path), backend="gloo")
    lines = []
    StageRun(command, stage="stage1", total_epochs=1, work_dir=work_dir, emit_output=lines.append).run()
    assert lines[0].startswith("local:") and read_lease(str(work_dir.path)) is None


def test_a_holder_in_another_container_of_this_host_counts_by_its_heartbeat(tmp_path):
    """Containers on one host share the boot id but not their pids: a pid of the GPU worker's container means
    nothing in the triggerer's, so only the heartbeat says whether the holder lives."""
    from uniad.trainside.uniad_workdir import boot_id

    now = time.time()
    mine = Lease(str(tmp_path), "local:j").record  # this process, this host
    assert lease_alive({**mine, "heartbeat": now - LEASE_TTL_S - 1}, now)  # its process lives: the heartbeat is moot
    elsewhere = {**mine, "host": "gpu-worker-1", "boot_id": boot_id()}
    assert lease_alive({**elsewhere, "heartbeat": now - 10}, now)
    assert not lease_alive({**elsewhere, "heartbeat": now - LEASE_TTL_S - 1}, now)
