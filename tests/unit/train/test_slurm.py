"""A stage as a Slurm job, without a cluster: the sbatch argv, the job file, the audit trail, the settings."""

from __future__ import annotations

import json
import shlex
from datetime import datetime

import pytest

from uniad.errors import ParamError
from uniad.run.params import PipelineParams
from uniad.train import slurm
from uniad.train.launch import SlurmSettings, StageSpec, build_slurm_job
from uniad.workdir import WorkDir

NASTY = "data.samples_per_gpu=1; touch /tmp/pwned $(id) `id` | cat"


def spec(**overrides) -> StageSpec:
    values = dict(uniad_root="/workspace/UniAD", config="projects/configs/stage1_track_map/base_track_map.py",
                  work_dir="projects/work_dirs/stage1_track_map/base_track_map/", max_epochs=6, nproc_per_node=8,
                  cfg_options=("data.workers_per_gpu=4", NASTY), python="/opt/uniad-venv/bin/python")  # fmt: skip
    values.update(overrides)
    return StageSpec(**values)


def test_the_job_runs_uniads_slurm_launcher_over_srun_with_argv_lists(tmp_path):
    settings = SlurmSettings(nnodes=2, partition="gpu", account="perception", time_limit="2-00:00:00",
                             extra_args=("--gres=gpu:8", "--exclusive"))  # fmt: skip
    name = slurm.job_name("stage1", "manual__2026-11-24T09:00:00+00:00")
    comment = slurm.job_comment(2, WorkDir(tmp_path / "work dir"))
    argv, job = build_slurm_job(spec(), settings, backend="nccl", job_name=name, comment=comment,
                                job_file=tmp_path / "job.json", output=tmp_path / "slurm-%j.out")  # fmt: skip
    assert argv[:8] == ["sbatch", "--parsable", "--job-name=uniad-stage1-manual__2026-11-24T09_00_00_00_00",
                        f"--comment=attempt=2:{tmp_path}/work dir", "--nodes=2", "--ntasks-per-node=8",
                        "--chdir=/workspace/UniAD", f"--output={tmp_path}/slurm-%j.out"]  # fmt: skip
    assert argv[8:13] == ["--partition=gpu", "--account=perception", "--time=2-00:00:00", "--gres=gpu:8", "--exclusive"]
    # The only shell words are the interpreter and the job file, quoted; every parameter travels in the job file.
    assert argv[13] == "--wrap" and shlex.split(argv[14]) == [
        "exec", "/opt/uniad-venv/bin/python", "-m", "uniad.train.slurm_job", str(tmp_path / "job.json")
    ]  # fmt: skip
    assert job["argv"][:5] == ["/opt/uniad-venv/bin/python", "tools/train.py",
                               "projects/configs/stage1_track_map/base_track_map.py", "--launcher", "slurm"]  # fmt: skip
    assert job["argv"][-1] == NASTY and "total_epochs=6" in job["argv"] and "runner.max_epochs=6" in job["argv"]
    assert job["ntasks_per_node"] == 8 and job["env"]["PYTHONPATH"].startswith("/workspace/UniAD")
    assert json.loads(json.dumps(job)) == job


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"nnodes": 2}, "nnodes=2 needs executor=slurm"),
        ({"executor": "slurm", "slurm_extra_args": ["--nodes=4"]}, "--nodes is set by the pipeline from nnodes"),
        ({"executor": "slurm", "slurm_extra_args": ["--chdir=/tmp"]}, "set by the pipeline from uniad_root"),
        ({"executor": "slurm", "slurm_extra_args": ["--gres=gpu:8; rm -rf /"]}, "slurm_extra_args must be a list"),
        ({"executor": "slurm", "slurm_time_limit": "two days"}, "slurm_time_limit must be a string matching"),
        ({"executor": "slurm", "slurm_partition": "gpu part"}, "slurm_partition must be a string matching"),
        ({"executor": "kubernetes"}, "executor must be one of local, slurm"),
    ],
)
def test_slurm_settings_are_validated_with_how_to_fix(values, message):
    with pytest.raises(ParamError, match=message):
        PipelineParams.from_mapping({"profile": "mini", **values})


def test_scontrol_output_is_parsed():
    line = ("JobId=12 JobName=uniad-stage1 UserId=root(0) JobState=RUNNING Reason=None Dependency=(null) "
            "ExitCode=0:0 StartTime=2026-11-27T10:00:00 EndTime=Unknown NodeList=n[1-2] NumNodes=2")  # fmt: skip
    state = slurm._fields(line + " SubmitTime=2026-11-27T09:59:58")
    assert (state["JobState"], state["NodeList"], state["ExitCode"]) == ("RUNNING", "n[1-2]", "0:0")
    assert slurm.submit_time(state) == datetime(2026, 11, 27, 9, 59, 58).timestamp()
    assert slurm.submit_time({"SubmitTime": "Unknown"}) is None and slurm.submit_time({}) is None
    assert "RUNNING" in slurm.ACTIVE and "NODE_FAIL" in slurm.TERMINAL_FAILURES


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
