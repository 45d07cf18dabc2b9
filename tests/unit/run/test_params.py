"""The trigger parameters: one typed definition, checked once, with messages that say how to fix the value."""

from __future__ import annotations

import subprocess
from dataclasses import replace

import pytest

from support import PYTHON
from uniad.errors import ParamError
from uniad.mini.scaffold import MARKER, init_mini_root
from uniad.run.configs import ConfigFacts, read_configs
from uniad.run.params import PipelineParams, check_field, parse_cfg_options
from uniad.run.plan import Plan, prepare
from uniad.run.root import UPSTREAM_CONFIGS, check_data, check_load_from, choose_configs, prepare_root


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"profile": "tiny"}, "profile must be one of uniad, mini"),
        ({"profile": "uniad"}, "needs uniad_root"),
        ({"profile": "mini", "uniad_root": "relative/dir"}, "absolute path"),
        ({"profile": "mini", "stage1_epochs": 0}, "stage1_epochs must be an integer >= 1"),
        ({"profile": "mini", "stage1_epochs": True}, "stage1_epochs must be an integer >= 1"),
        ({"profile": "mini", "stage2_epochs": "20"}, "stage2_epochs must be an integer >= 1"),
        ({"profile": "mini", "nproc_per_node": 0}, "nproc_per_node must be an integer from 1 to 64 or null"),
        ({"profile": "mini", "nproc_per_node": 65}, "nproc_per_node must be an integer from 1 to 64 or null"),
        ({"profile": "mini", "backend": "mpi"}, "backend must be one of"),
        ({"profile": "mini", "launcher": "srun"}, "launcher must be one of torchrun, launch"),
        ({"profile": "mini", "seed": -1}, "seed must be an integer >= 0 or null"),
        ({"profile": "mini", "deterministic": "yes"}, "deterministic must be true or false"),
        ({"profile": "mini", "ckpt_path": "../../etc/x.pth"}, "no '..'"),
        ({"profile": "mini", "stage1_config": "projects/configs/x.yaml"}, "not a python config"),
        ({"profile": "mini", "stage1_cfg_options": ["workers"]}, "stage1_cfg_options: cfg option 'workers'"),
        ({"profile": "mini", "stage2_cfg_options": ["load_from=/tmp/x.pth"]}, "set by the pipeline"),
        ({"profile": "mini", "gpus": 8}, "unknown parameter"),
        ({"profile": "mini", "checkpoint_interval_iters": 0}, "checkpoint_interval_iters must be an integer >= 1"),
        ({"profile": "mini", "stage1_cfg_options": ["runner.checkpoint_interval_iters=5"]}, "set by the pipeline"),
        (
            {
                "profile": "mini",
                "checkpoint_interval_iters": 500,
                "stage1_cfg_options": ["runner.type=IterBasedRunner"],
            },
            "clash with checkpoint_interval_iters",
        ),
        (
            {"profile": "mini", "checkpoint_interval_iters": 5, "stage2_cfg_options": ["custom_imports.imports=[x]"]},
            "clash with checkpoint_interval_iters",
        ),
        ({"profile": "mini", "stall_timeout_s": 10}, "stall_timeout_s must be an integer >= 30"),
        ({"profile": "mini", "s3_uri": "https://bucket/x"}, "s3_uri must be a string matching"),
        ({"profile": "mini", "pretrained_s3_uris": ["s3://bucket"]}, "pretrained_s3_uris must be a list"),
        ({"profile": "mini", "aws_conn_id": "a b"}, "aws_conn_id must be a string matching"),
    ],
)
def test_bad_params_are_refused_with_how_to_fix(values, message):
    with pytest.raises(ParamError, match=message) as info:
        PipelineParams.from_mapping(values)
    assert any(hint in str(info.value) for hint in ("e.g.", "instead", "known:", "drop them")), info.value


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ("data.workers_per_gpu=4", "not one string"),
        (["workers_per_gpu"], "not key=value"),
        (["=4"], "not a dotted config path"),
        (["data..x=1"], "not a dotted config path"),
        (["data.workers_per_gpu="], "empty value"),
        (["dist_params.backend=nccl"], "set by the pipeline from backend"),
        (["runner.max_epochs=3"], "stage1_epochs / stage2_epochs"),
        (["load_from=/x.pth"], "promoted checkpoint"),
    ],
)
def test_bad_cfg_options_are_refused_with_an_example(items, message):
    with pytest.raises(ParamError, match=message) as info:
        parse_cfg_options(items)
    assert "e.g." in str(info.value) or "instead" in str(info.value)


def test_cfg_option_values_may_contain_equals_and_brackets():
    assert parse_cfg_options(["model.x=[1,2]", "a.b=c=d"]) == ("model.x=[1,2]", "a.b=c=d")


def test_profile_default_process_counts():
    assert PipelineParams(profile="mini").nproc == 2
    assert PipelineParams(profile="uniad", uniad_root="/workspace/UniAD").nproc == 8
    assert PipelineParams(profile="mini", nproc_per_node=3).nproc == 3


def test_the_cli_checks_its_settings_with_the_same_rules():
    with pytest.raises(ParamError, match="--nproc-per-node must be an integer from 1 to 64"):
        check_field("nproc_per_node", 0, "--nproc-per-node")
    done = subprocess.run(
        [PYTHON, "-m", "uniad", "train", "--uniad-root", "/nonexistent", "--config", "x.py", "--epochs", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and "--epochs must be an integer >= 1" in done.stderr


def test_uniad_profile_checks_the_checkout(tmp_path):
    params = PipelineParams(profile="uniad", uniad_root=str(tmp_path))
    with pytest.raises(ParamError, match="is not a UniAD checkout"):
        prepare(params, python=PYTHON)
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools/train.py").write_text("")
    with pytest.raises(
        ParamError, match="stage1_config 'projects/configs/stage1_track_map/full_track_map.py' not found"
    ):
        prepare(params, python=PYTHON)


def test_mini_root_is_written_for_the_run(tmp_path):
    root = prepare_root(PipelineParams(profile="mini"), mini_run_dir=tmp_path / "run")
    assert (root / MARKER).is_file() and (root / "tools/train.py").is_file()


def test_mini_root_refuses_to_overwrite_a_foreign_folder(tmp_path):
    (tmp_path / "something.txt").write_text("keep me")
    with pytest.raises(ParamError, match="not a mini UniAD root"):
        init_mini_root(tmp_path)
    assert (tmp_path / "something.txt").read_text() == "keep me"


def test_mini_root_refresh_keeps_checkpoints(tmp_path):
    root = init_mini_root(tmp_path / "root")
    (root / "ckpts/full_track_map.pth").write_bytes(b"weights")
    init_mini_root(root)
    assert (root / "ckpts/full_track_map.pth").read_bytes() == b"weights"


def _uniad_checkout(root, stage1_text="total_epochs = 6\n"):
    (root / "tools").mkdir(parents=True)
    (root / "tools/train.py").write_text("")
    for config, text in (("stage1_track_map/base_track_map.py", stage1_text), ("stage2_e2e/base_e2e.py", "")):
        (root / "projects/configs" / config).parent.mkdir(parents=True, exist_ok=True)
        (root / "projects/configs" / config).write_text(text)
    return root


def test_an_upstream_checkout_trains_its_base_configs_and_says_so(tmp_path):
    """The form's defaults are the DL4AGX fork's full_*.py; upstream UniAD has base_*.py only."""
    params = PipelineParams(profile="uniad", uniad_root=str(_uniad_checkout(tmp_path)))
    chosen, notes = choose_configs(params, tmp_path)
    assert (chosen.stage1_config, chosen.stage2_config) == (
        UPSTREAM_CONFIGS["stage1_config"],
        UPSTREAM_CONFIGS["stage2_config"],
    )
    assert len(notes) == 2 and "full_track_map.py is not in" in notes[0] and "base_track_map.py" in notes[0]
    named = replace(params, stage1_config="projects/configs/stage1_track_map/tiny_track_map.py")
    with pytest.raises(ParamError, match="configs there: projects/configs/stage1_track_map/base_track_map.py"):
        choose_configs(named, tmp_path)


def test_stage1_load_from_must_exist_and_load_with_weights_only(tmp_path):
    from support import save_mmcv_checkpoint

    root = _uniad_checkout(tmp_path)
    facts = ConfigFacts(UPSTREAM_CONFIGS["stage1_config"], load_from="ckpts/bevformer_r101_dcn_24ep.pth")
    with pytest.raises(
        ParamError, match=r"load_from='ckpts/bevformer_r101_dcn_24ep.pth', which is not at .*pretrained_s3_uris"
    ):
        check_load_from(root, facts, set())
    # Fetched by this run before stage 1: not checked at preflight.
    assert check_load_from(root, facts, {root / "ckpts/bevformer_r101_dcn_24ep.pth"}) is not None
    (root / "ckpts").mkdir()
    (root / "ckpts/bevformer_r101_dcn_24ep.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ParamError, match="is not usable: .*refused to unpickle"):
        check_load_from(root, facts, set())
    save_mmcv_checkpoint(root / "ckpts/bevformer_r101_dcn_24ep.pth", "stage1", 24)
    assert check_load_from(root, facts, set()) == root / "ckpts/bevformer_r101_dcn_24ep.pth"


# A UniAD-shaped stage-1 config: the data files and load_from come from its _base_ file, which a text search of the
# config itself would not see.
_BASE = """info_root = "data/infos/"
data = dict(train=dict(data_root="data/nuscenes/", ann_file=info_root + "nuscenes_infos_temporal_train.pkl"),
            val=dict(data_root="data/nuscenes/", ann_file=info_root + "nuscenes_infos_temporal_val.pkl"))
load_from = "ckpts/bevformer_r101_dcn_24ep.pth"
evaluation = dict(interval=6, pipeline=[dict(type="X", interval=9)])
"""


def test_the_configs_are_read_with_mmcv_and_missing_data_refused(tmp_path):
    """What a config says comes from mmcv's Config (its _base_ file, then the cfg options), not from its text; the
    data it names must be there. The whole preflight, in UniAD's Python 3.8: tests/e2e/test_uniad_contract.py."""
    root = _uniad_checkout(tmp_path, '_base_ = ["../_base_/nus.py"]\ntotal_epochs = 6\n')
    (root / "projects/configs/_base_").mkdir()
    (root / "projects/configs/_base_/nus.py").write_text(_BASE)
    stage1_config = UPSTREAM_CONFIGS["stage1_config"]
    (facts,) = read_configs(PYTHON, root, [(stage1_config, ["data.val.ann_file=data/infos/mine.pkl"])])
    assert (facts.load_from, facts.evaluation_interval, facts.total_epochs) == (
        "ckpts/bevformer_r101_dcn_24ep.pth",
        6,
        6,
    )
    with pytest.raises(ParamError) as refused:
        check_data(root, facts)
    message = str(refused.value)
    assert "data/infos/nuscenes_infos_temporal_train.pkl (data.train.ann_file)" in message
    assert "data/infos/mine.pkl (data.val.ann_file)" in message  # the cfg option, not the base file's value
    assert "data/nuscenes/ (data.train.data_root)" in message and "tools/uniad_create_data.sh" in message
    (root / "data/infos").mkdir(parents=True)
    (root / "data/nuscenes").mkdir()
    for name in ("nuscenes_infos_temporal_train.pkl", "mine.pkl"):
        (root / "data/infos" / name).write_bytes(b"infos")
    check_data(root, facts)
    params = PipelineParams.from_mapping({"profile": "uniad", "uniad_root": str(root), "stage1_epochs": 5})
    stage1 = Plan.build(params, root, {"stage1": facts, "stage2": ConfigFacts(UPSTREAM_CONFIGS["stage2_config"])})
    stage1 = stage1.stage("stage1")
    assert stage1.evaluation_interval == 5  # the base file's interval 6 would skip the final epoch 5
    assert stage1.data_files == (f"{root}/data/infos/nuscenes_infos_temporal_train.pkl", f"{root}/data/infos/mine.pkl")
    assert stage1.needs_gpus and stage1.python is None
