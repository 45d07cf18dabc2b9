"""The run's plan: built once by preflight, passed between tasks as JSON, read back typed."""

from __future__ import annotations

import json

import pytest

from uniad.errors import ParamError
from uniad.run.configs import ConfigFacts
from uniad.run.params import PipelineParams
from uniad.run.plan import Plan, PretrainedFile
from uniad.run.root import prepare_root
from uniad.vocabulary import STAGE1_CONFIG, STAGE2_CONFIG

# What mmcv's Config says of the mini's configs (read for real by the preflight test in test_params.py), plus a data
# file stage 1 names.
FACTS = {
    "stage1": ConfigFacts(STAGE1_CONFIG, evaluation_interval=6, data_files=(("data.train.ann_file", "data/a.pkl"),)),
    "stage2": ConfigFacts(STAGE2_CONFIG, evaluation_interval=4, load_from="ckpts/full_track_map.pth"),
}


@pytest.fixture
def plan(tmp_path) -> Plan:
    params = PipelineParams.from_mapping(
        {
            "profile": "mini",
            "stage1_epochs": 5,
            "stage1_cfg_options": ["log_config.interval=5"],
            "strict": True,
            "s3_uri": "s3://bucket/runs",
            "pretrained_s3_uris": ["s3://bucket/pretrained/bevformer_r101_dcn_24ep.pth"],
        }
    )
    return Plan.build(params, prepare_root(params, mini_run_dir=tmp_path / "run"), FACTS)


def test_the_plan_passes_load_from_explicitly_and_makes_paths_absolute(plan):
    root = plan.uniad_root
    assert plan.ckpt_path == f"{root}/ckpts/full_track_map.pth"
    s1, s2 = plan.stage("stage1"), plan.stage("stage2")
    assert (s1.max_epochs, s2.max_epochs) == (5, 20)
    assert s1.load_from is None and s2.load_from == plan.ckpt_path
    assert s1.cfg_options == ("log_config.interval=5",) and s2.cfg_options == ()
    # The config evaluates every 6 epochs: with 5 the final one is evaluated anyway; 20 is a multiple of 4.
    assert (s1.evaluation_interval, s2.evaluation_interval) == (5, None)
    assert s1.data_files == (f"{root}/data/a.pkl",) and s2.data_files == ()
    # Where the interpreter is and whether GPUs are needed: decided by the worker that trains, not in the plan.
    assert s1.python is None and s1.nproc_per_node == 2 and not s1.needs_gpus
    assert str(plan.work_dir("stage1").path) == f"{root}/projects/work_dirs/stage1_track_map/full_track_map"
    assert str(plan.work_dir("stage2").path) == f"{root}/projects/work_dirs/stage2_e2e/full_e2e"
    assert plan.later_epochs("stage1") == 20 and plan.later_epochs("stage2") == 0
    assert plan.gate.strict is True and plan.gate.stall_timeout_s == 600
    assert plan.storage.pretrained == (
        PretrainedFile(
            "s3://bucket/pretrained/bevformer_r101_dcn_24ep.pth", f"{root}/ckpts/bevformer_r101_dcn_24ep.pth"
        ),
    )
    with pytest.raises(ParamError, match="stage must be one of stage1, stage2"):
        plan.stage("stage3")


def test_json_round_trip_through_xcom(plan):
    data = json.loads(json.dumps(plan.to_json()))  # what XCom stores and gives back
    assert Plan.from_json(data) == plan
    assert data["stages"]["stage1"]["cfg_options"] == ["log_config.interval=5"]


def test_a_plan_of_another_version_is_refused_with_what_to_do(plan):
    data = plan.to_json()
    data["version"] = 0
    with pytest.raises(ParamError, match="trigger a new run"):
        Plan.from_json(data)


def test_stage_artifacts_upload_the_promoted_checkpoint_once(plan):
    work = plan.work_dir("stage1")
    work.path.mkdir(parents=True)
    for name in ("20260101_000000.log", "20260101_000000.log.json", "epoch_6.pth"):
        (work.path / name).write_text("x")
    with open(plan.ckpt_path, "w") as handle:
        handle.write("weights")
    keys = [key for _, key in plan.artifacts("stage1")]
    # The promoted file stands for stage 1's last epoch; its provenance is not written yet, so it is not listed.
    assert keys == ["ckpts/full_track_map.pth", "stage1/20260101_000000.log", "stage1/20260101_000000.log.json"]
