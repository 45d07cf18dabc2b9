"""A stage as a Slurm job, without a cluster: the sbatch argv, the job file, the audit trail, the settings."""

from __future__ import annotations

import json
import shlex
from datetime import datetime
from pathlib import Path

import pytest

from uniad.errors import LaunchError, ParamError
from uniad.run.params import PipelineParams
from uniad.train import slurm
from uniad.train.launch import SlurmSettings, StageSpec, build_slurm_job
from uniad.workdir import WorkDir

NASTY = "data.samples_per_gpu=1; touch /tmp/pwned $(id) `id` | cat"


def spec(**overrides) -> StageSpec:
    values = dict(
        uniad_root="/workspace/UniAD",
        config="projects/configs/stage1_track_map/base_track_map.py",
        work_dir="projects/work_dirs/stage1_track_map/base_track_map/",
        max_epochs=6,
        nproc_per_node=8,
        cfg_options=("data.workers_per_gpu=4", NASTY),
        python="/opt/uniad-venv/bin/python",
    )
    values.update(overrides)
    return StageSpec(**values)


def test_the_job_runs_uniads_slurm_launcher_over_srun_with_argv_lists(tmp_path):
    settings = SlurmSettings(
        nnodes=2,
        partition="gpu",
        account="perception",
        time_limit="2-00:00:00",
        extra_args=("--exclusive",),
        gpus_per_node=8,
        gpu_type="a100",
    )
    name = slurm.job_name("stage1", "manual__2026-11-24T09:00:00+00:00")
    comment = slurm.job_comment(2, WorkDir(tmp_path / "work dir"))
    trainside = tmp_path / "work dir/.uniad_trainside"
    argv, job = build_slurm_job(
        spec(),
        settings,
        backend="nccl",
        job_name=name,
        comment=comment,
        job_file=tmp_path / "job.json",
        output=tmp_path / "slurm-%j.out",
        trainside=trainside,
        cpus_per_task=5,
        env={"PATH": "/usr/bin:/bin"},
        resume_position=(2, 0),
        stop_signal_lead_s=600,
    )
    # UniAD's tools/uniad_slurm_train.sh: --gres=gpu:N and --cpus-per-task=5 per node and rank; nothing of the
    # submitting worker's environment (--export=NONE).
    assert argv[:15] == [
        "sbatch",
        "--parsable",
        "--job-name=uniad-stage1-manual__2026-11-24T09_00_00_00_00",
        f"--comment=attempt=2:{tmp_path}/work dir",
        "--dependency=singleton",  # two jobs of one stage of a run never run at once
        "--requeue",  # preempted or a node lost: Slurm starts it again; its batch step resumes from what it wrote
        "--open-mode=append",  # every start's output in one file
        "--nodes=2",
        "--ntasks-per-node=8",
        "--cpus-per-task=5",
        "--gres=gpu:a100:8",
        "--export=NONE",
        "--chdir=/workspace/UniAD",
        f"--output={tmp_path}/slurm-%j.out",
        "--partition=gpu",
    ]
    # USR2 to the batch step (B:) 600 s ahead of the limit: the ranks checkpoint and stop (not USR1: NCCL's)
    assert argv[15:19] == ["--account=perception", "--time=2-00:00:00", "--signal=B:USR2@600", "--exclusive"]
    # The only shell words are the interpreter and the files, quoted; every parameter travels in the job file. The
    # batch step is the work dir's copy: UniAD's interpreter does not have this package.
    assert argv[19] == "--wrap" and shlex.split(argv[20]) == [
        "exec",
        "/opt/uniad-venv/bin/python",
        f"{trainside}/uniad_slurm_job.py",
        str(tmp_path / "job.json"),
    ]
    assert job["argv"][:5] == [
        "/opt/uniad-venv/bin/python",
        "tools/train.py",
        "projects/configs/stage1_track_map/base_track_map.py",
        "--launcher",
        "slurm",
    ]
    assert job["argv"][-1] == NASTY and "total_epochs=6" in job["argv"] and "runner.max_epochs=6" in job["argv"]
    # The ranks run the runner that checkpoints on the stop signal, from the work dir's trainside copy.
    assert "runner.type=IterCheckpointEpochBasedRunner" in job["argv"] and "runner.stop_signal=USR2" in job["argv"]
    # The batch step chooses the resume point at each start, above the one the job was submitted with.
    assert job["resume"] == {
        "work_dir": "/workspace/UniAD/projects/work_dirs/stage1_track_map/base_track_map",
        "from": None,
        "position": [2, 0],
        "max_epochs": 6,
        "validate": True,
    }
    # srun repeats the resources: since Slurm 22.05 a step does not inherit --cpus-per-task.
    assert job["srun"] == ["--ntasks-per-node=8", "--cpus-per-task=5", "--gres=gpu:a100:8"]
    assert job["env"] == {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"/workspace/UniAD:{trainside}",
        "PYTHONUNBUFFERED": "1",
    }
    assert json.loads(json.dumps(job)) == job


def test_a_uniad_job_cannot_be_submitted_without_a_gpu_request():
    with pytest.raises(LaunchError, match="profile uniad needs a GPU per rank and this job requests none"):
        build_slurm_job(
            spec(needs_gpus=True),
            SlurmSettings(nnodes=2, gpus_per_node=0),
            backend="nccl",
            job_name="j",
            comment="c",
            job_file=Path("/w/job.json"),
            output=Path("/w/out"),
            trainside=Path("/w/t"),
            cpus_per_task=5,
            env={},
        )


def test_a_mini_job_requests_no_gpus():
    argv, job = build_slurm_job(
        spec(nproc_per_node=1),
        SlurmSettings(nnodes=2),
        backend="gloo",
        job_name="j",
        comment="c",
        job_file=Path("/w/job.json"),
        output=Path("/w/out"),
        trainside=Path("/w/t"),
        cpus_per_task=1,
        env={},
    )
    assert not any(a.startswith(("--gres", "--gpus")) for a in argv + job["srun"])
    # No stop signal asked for (UNIAD_SLURM_STOP_SIGNAL_LEAD_S=0): none sent, and the plain runner.
    assert not any(a.startswith("--signal") for a in argv) and not any("runner.type" in a for a in job["argv"])


def test_no_airflow_secret_reaches_a_jobs_environment():
    worker = {
        "PATH": "/opt/airflow-venv/bin:/usr/bin",
        "HOME": "/home/airflow",
        "LANG": "C.UTF-8",
        "NCCL_DEBUG": "WARN",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:s3cret@postgres/airflow",
        "AIRFLOW__CORE__FERNET_KEY": "fernet",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "http_proxy": "http://proxy:3128",
    }
    assert slurm.job_environment(worker) == {
        "PATH": "/opt/airflow-venv/bin:/usr/bin",
        "HOME": "/home/airflow",
        "LANG": "C.UTF-8",
        "NCCL_DEBUG": "WARN",
    }
    assert slurm.job_environment(worker, ["http_proxy"])["http_proxy"] == "http://proxy:3128"
    with pytest.raises(ParamError, match="Airflow's own settings never go into a job"):
        slurm.job_environment(worker, ["AIRFLOW__CORE__FERNET_KEY"])


@pytest.mark.parametrize(
    ("gres", "gpu_type", "expected"),
    [
        ("gpu:8", None, 8),
        ("gpu:a100:8(S:0-1)", None, 8),
        ("gpu:a100:4,gpu:v100:2", "v100", 2),
        ("gpu:a100:4(S:0,1),gpu:v100:2", None, 6),
        ("(null)", None, 0),
        ("mps:100", None, 0),
    ],
)
def test_gpus_per_node_from_sinfo(gres, gpu_type, expected):
    assert slurm.gpus_per_node(gres, gpu_type) == expected


def test_a_uniad_job_asks_for_a_gpu_per_rank_by_default():
    uniad = PipelineParams.from_mapping({"profile": "uniad", "uniad_root": "/u", "executor": "slurm"})
    assert (uniad.nproc, uniad.gpus_per_node) == (8, 8)
    assert PipelineParams.from_mapping({"profile": "mini", "executor": "slurm"}).gpus_per_node == 0


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nnodes": 2}, "nnodes=2 needs executor=slurm"),
        ({"executor": "slurm", "slurm_extra_args": ["--nodes=4"]}, "--nodes is set by the pipeline from nnodes"),
        ({"executor": "slurm", "slurm_extra_args": ["--chdir=/tmp"]}, "set by the pipeline from uniad_root"),
        ({"executor": "slurm", "slurm_extra_args": ["--gres=gpu:8; rm -rf /"]}, "slurm_extra_args must be a list"),
        ({"executor": "slurm", "slurm_extra_args": ["--gres=gpu:8"]}, "set by the pipeline from slurm_gpus_per_node"),
        ({"executor": "slurm", "slurm_extra_args": ["--export=ALL"]}, "no Airflow setting may reach it"),
        ({"executor": "slurm", "slurm_extra_args": ["--cpus-per-task=5"]}, "from slurm_cpus_per_task"),
        (
            {"profile": "uniad", "uniad_root": "/u", "executor": "slurm", "slurm_gpus_per_node": 0},
            "profile uniad needs a GPU per rank",
        ),
        (
            {"profile": "uniad", "uniad_root": "/u", "executor": "slurm", "slurm_gpus_per_node": 4},
            "slurm_gpus_per_node=4 for nproc_per_node=8 ranks per node: ranks would share GPUs",
        ),
        ({"executor": "slurm", "slurm_time_limit": "two days"}, "slurm_time_limit must be a string matching"),
        ({"executor": "slurm", "slurm_partition": "gpu part"}, "slurm_partition must be a string matching"),
        ({"executor": "kubernetes"}, "executor must be one of local, slurm"),
    ],
)
def test_slurm_settings_are_validated_with_how_to_fix(values, message):
    with pytest.raises(ParamError, match=message):
        PipelineParams.from_mapping({"profile": "mini", **values})


def test_scontrol_output_is_parsed():
    line = (
        "JobId=12 JobName=uniad-stage1 UserId=root(0) JobState=RUNNING Reason=None Dependency=(null) "
        "ExitCode=0:0 StartTime=2026-11-27T10:00:00 EndTime=Unknown NodeList=n[1-2] NumNodes=2"
    )
    state = slurm._fields(line + " SubmitTime=2026-11-27T09:59:58")
    assert (state["JobState"], state["NodeList"], state["ExitCode"]) == ("RUNNING", "n[1-2]", "0:0")
    assert slurm.submit_time(state) == datetime(2026, 11, 27, 9, 59, 58).timestamp()
    assert slurm.submit_time({"SubmitTime": "Unknown"}) is None and slurm.submit_time({}) is None
    assert "RUNNING" in slurm.ACTIVE


def test_no_answer_from_the_controller_is_not_a_job_state():
    """What scontrol prints when the controller is away (Slurm 23.02) is UNREACHABLE, never an end; a job the
    controller no longer knows is UNKNOWN."""
    away = slurm._state_of(1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n")
    assert away == {
        "JobState": slurm.UNREACHABLE,
        "Reason": "slurm_load_jobs error: Unable to contact slurm controller (connect failure)",
    }
    assert slurm._state_of(1, "", "slurm_load_jobs error: Socket timed out on send/recv operation")["JobState"] == (
        slurm.UNREACHABLE
    )
    assert slurm._state_of(1, "", "slurm_load_jobs error: Invalid job id specified") == {"JobState": "UNKNOWN"}
    assert slurm._state_of(0, "JobId=3 JobState=TIMEOUT", "")["JobState"] == "TIMEOUT"
    assert slurm.UNREACHABLE not in slurm.ACTIVE


def test_the_audit_trail_has_one_line_per_job(tmp_path):
    work = WorkDir(tmp_path)
    slurm.record_job(work, "12", attempt=1, state="PENDING", nnodes=2)
    slurm.record_job(work, "13", attempt=2, state="PENDING", nnodes=2)
    slurm.record_job(work, "12", state="NODE_FAIL", nodes="n[1-2]", end="2026-11-27T11:00:00")
    lines = [json.loads(line) for line in (tmp_path / "slurm_jobs.jsonl").read_text().splitlines()]
    assert [(line["job_id"], line["attempt"], line["state"]) for line in lines] == [
        ("12", 1, "NODE_FAIL"),
        ("13", 2, "PENDING"),
    ]
    assert lines[0]["nodes"] == "n[1-2]" and lines[0]["submitted"] <= lines[1]["submitted"]
    assert slurm.read_jobs(WorkDir(tmp_path / "none")) == []
