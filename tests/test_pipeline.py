from __future__ import annotations

import pytest

from uniad.errors import PipelineError
from uniad.mini.scaffold import MARKER, init_mini_root
from uniad.pipeline import PipelineParams, build_plan, prepare_root, sanitize_run_id, stage_spec, stage_work_dir


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"profile": "tiny"}, "profile must be one of uniad, mini"),
        ({"profile": "uniad"}, "needs uniad_root"),
        ({"profile": "mini", "uniad_root": "relative/dir"}, "absolute path"),
        ({"profile": "mini", "stage1_epochs": 0}, "stage1_epochs must be an integer >= 1"),
        ({"profile": "mini", "stage2_epochs": "20"}, "stage2_epochs must be an integer >= 1"),
        ({"profile": "mini", "nproc_per_node": 0}, "nproc_per_node"),
        ({"profile": "mini", "backend": "mpi"}, "backend must be one of"),
        ({"profile": "mini", "deterministic": "yes"}, "deterministic must be true or false"),
        ({"profile": "mini", "ckpt_path": "../../etc/x.pth"}, "no '..'"),
        ({"profile": "mini", "stage1_cfg_options": ["workers"]}, "stage1_cfg_options: cfg option 'workers'"),
        ({"profile": "mini", "stage2_cfg_options": ["load_from=/tmp/x.pth"]}, "set by the pipeline"),
        ({"profile": "mini", "gpus": 8}, "unknown parameter"),
        ({"profile": "mini", "checkpoint_interval_iters": 0}, "checkpoint_interval_iters must be an integer >= 1"),
        ({"profile": "mini", "stage1_cfg_options": ["runner.checkpoint_interval_iters=5"]}, "set by the pipeline"),
    ],
)
def test_bad_params_are_refused_with_how_to_fix(values, message):
    with pytest.raises(PipelineError, match=message):
        PipelineParams.from_mapping(values)


def test_profile_default_process_counts():
    assert PipelineParams(profile="mini").nproc == 2
    assert PipelineParams(profile="uniad", uniad_root="/workspace/UniAD").nproc == 8
    assert PipelineParams(profile="mini", nproc_per_node=3).nproc == 3


def test_mini_plan_writes_root_and_passes_load_from_explicitly(tmp_path):
    params = PipelineParams.from_mapping({"profile": "mini", "stage1_cfg_options": ["log_config.interval=5"]})
    root = prepare_root(params, mini_run_dir=tmp_path / "run")
    assert (root / MARKER).is_file() and (root / "tools/train.py").is_file()
    plan = build_plan(params, root, python="/venv/bin/python")
    assert plan["ckpt_path"] == str(root / "ckpts/full_track_map.pth")
    s1, s2 = stage_spec(plan, "stage1"), stage_spec(plan, "stage2")
    assert (s1.max_epochs, s2.max_epochs) == (6, 20)
    assert s1.load_from is None and s2.load_from == plan["ckpt_path"]
    assert s1.cfg_options == ("log_config.interval=5",) and s2.cfg_options == ()
    assert s1.python == "/venv/bin/python" and s1.nproc_per_node == 2
    assert stage_work_dir(plan, "stage1") == root / "projects/work_dirs/stage1_track_map/full_track_map"
    assert stage_work_dir(plan, "stage2") == root / "projects/work_dirs/stage2_e2e/full_e2e"


def test_uniad_profile_checks_the_checkout(tmp_path):
    params = PipelineParams(profile="uniad", uniad_root=str(tmp_path))
    with pytest.raises(PipelineError, match="is not a UniAD checkout"):
        prepare_root(params)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools/train.py").write_text("")
    with pytest.raises(
        PipelineError, match="stage1_config 'projects/configs/stage1_track_map/full_track_map.py' not found"
    ):
        prepare_root(params)


def test_mini_root_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "something.txt").write_text("keep me")
    with pytest.raises(PipelineError, match="not a mini UniAD root"):
        init_mini_root(tmp_path)
    assert (tmp_path / "something.txt").read_text() == "keep me"


def test_mini_root_refresh_keeps_checkpoints(tmp_path):
    root = init_mini_root(tmp_path / "root")
    (root / "ckpts/full_track_map.pth").write_bytes(b"weights")
    init_mini_root(root)
    assert (root / "ckpts/full_track_map.pth").read_bytes() == b"weights"


def test_sanitize_run_id():
    assert sanitize_run_id("manual__2026-11-24T09:00:00+00:00") == "manual__2026-11-24T09_00_00_00_00"
    assert sanitize_run_id("../../x") == "x"
    assert sanitize_run_id("..") == "run"
