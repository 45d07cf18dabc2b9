"""make slurm: a real two-node Slurm cluster on loopback, started and stopped by pid."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from support import REPO, processes_mentioning, run, slurm_cluster, wait_for

SCRIPT = REPO / "scripts/slurm_cluster.sh"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("slurm")
    with slurm_cluster(state, 26817) as env:
        assert "partition uniad, nodes n1 n2" in env["started"]
        # Idempotent: a second start finds the daemons by their pid files and starts nothing.
        pids = {p.name: p.read_text().strip() for p in state.glob("*.pid")}
        run(["bash", str(SCRIPT), "start"], env=env, timeout=180)
        assert {p.name: p.read_text().strip() for p in state.glob("*.pid")} == pids
        yield {"env": env, "state": state, "pids": pids}


def test_two_nodes_run_one_task_each(cluster):
    env = cluster["env"]
    assert run(["sinfo", "-h", "-o", "%P %D %t %N"], env=env).stdout.split() == ["uniad*", "2", "idle", "n[1-2]"]
    out = run(["srun", "-N2", "-n2", "bash", "-c", "echo $SLURMD_NODENAME $SLURM_PROCID"], env=env, timeout=60)
    assert sorted(out.stdout.split("\n")[:2]) == ["n1 0", "n2 1"]


def test_stand_in_gpus_are_handed_out_as_on_a_gpu_cluster(cluster):
    """Each node's two stand-in GPUs (GRES backed by device files): the ranks of a job that requests them see them
    all in CUDA_VISIBLE_DEVICES, a job that requests none sees none."""
    env = cluster["env"]
    assert run(["sinfo", "-h", "-o", "%G"], env=env).stdout.strip() == "gpu:2"
    command = ["bash", "-c", 'echo "$SLURMD_NODENAME $SLURM_PROCID ${CUDA_VISIBLE_DEVICES:-none}"']
    with_gpus = run(["srun", "-N2", "--ntasks-per-node=2", "--gres=gpu:2", *command], env=env, timeout=60)
    assert sorted(with_gpus.stdout.split("\n")[:4]) == ["n1 0 0,1", "n1 1 0,1", "n2 2 0,1", "n2 3 0,1"]
    assert run(["srun", "-N1", "-n1", *command], env=env, timeout=60).stdout.split()[2] == "none"


def test_a_batch_job_runs_on_both_nodes(cluster, tmp_path):
    env = cluster["env"]
    out = tmp_path / "job.out"
    job = run(
        [
            "sbatch",
            "--parsable",
            "-N2",
            "--ntasks-per-node=1",
            "-o",
            str(out),
            "--wrap",
            "srun bash -c 'echo $SLURMD_NODENAME'",
        ],
        env=env,
    ).stdout.strip()
    deadline = time.monotonic() + 60
    state = ""
    while time.monotonic() < deadline:
        state = run(["scontrol", "show", "job", job], env=env).stdout
        if "JobState=COMPLETED" in state:
            break
        time.sleep(1)
    assert "JobState=COMPLETED" in state, state
    assert sorted(out.read_text().split()) == ["n1", "n2"]


def test_a_second_job_of_a_stage_waits_for_the_first(cluster, tmp_path):
    """What the pipeline's sbatch options (build_slurm_job) rely on: with --dependency=singleton a job named like one
    that runs pends on it (Reason=Dependency) while nodes are free, and starts once it has ended."""
    env = cluster["env"]

    def submit(tag: str) -> str:
        marker = tmp_path / tag
        argv = ["sbatch", "--parsable", "-N1", "--job-name=uniad-stage1-run", "--dependency=singleton", "--requeue"]
        return run([*argv, "-o", "/dev/null", "--wrap", f"touch {marker}; exec sleep 8"], env=env).stdout.strip()

    first, submitted = submit("first"), time.monotonic()
    wait_for("the first job to start", (tmp_path / "first").exists, 60)
    second = submit("second")
    time.sleep(3)
    state = run(["scontrol", "show", "job", second], env=env).stdout
    assert "JobState=PENDING" in state and "Reason=Dependency" in state, state
    assert not (tmp_path / "second").exists()
    started = (tmp_path / "second").exists
    wait_for("the second job to start after the first", started, 60 - (time.monotonic() - submitted))
    assert "JobState=RUNNING" not in run(["scontrol", "show", "job", first], env=env).stdout


def test_stop_ends_every_daemon_by_pid_and_every_job(cluster, tmp_path):
    pids = [int(p) for p in cluster["pids"].values()]
    assert len(pids) == 3  # slurmctld, slurmd n1, slurmd n2
    marker = f"sleep-{uuid.uuid4().hex[:12]}"  # names this job's processes in the process table
    job = run(
        [
            "sbatch",
            "--parsable",
            "-N2",
            "--ntasks-per-node=1",
            "-o",
            str(tmp_path / "job.out"),
            "--wrap",
            f"srun bash -c 'exec -a {marker} sleep 600'",
        ],
        env=cluster["env"],
    ).stdout.strip()
    deadline = time.monotonic() + 60
    while len(processes_mentioning(marker)) < 2:  # one rank on each node
        assert time.monotonic() < deadline, run(["scontrol", "show", "job", job], env=cluster["env"]).stdout
        time.sleep(0.5)
    run(["bash", str(SCRIPT), "stop"], env=cluster["env"], timeout=120)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.5)
    assert not any(_alive(p) for p in pids)
    assert not list(cluster["state"].glob("*.pid"))
    # A running job's slurmstepd, srun and ranks would outlive the daemons: stop cancels the jobs first.
    assert processes_mentioning(marker) == []
    assert [p for p in processes_mentioning("slurmstepd") if f"[{job}." in p] == []


def _alive(pid: int) -> bool:
    return subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode == 0
