from __future__ import annotations

import socket
from pathlib import Path

import pytest

from uniad.errors import LaunchError
from uniad.train.launch import (
    StageSpec,
    build_launch,
    final_epoch_evaluation_interval,
    find_free_port,
    resolve_backend,
    ship_trainside,
)

TRAINSIDE = Path("/workspace/UniAD/projects/work_dirs/stage2_e2e/full_e2e/.uniad_trainside")


def spec(**overrides) -> StageSpec:
    values = dict(
        uniad_root="/workspace/UniAD",
        config="projects/configs/stage2_e2e/full_e2e.py",
        work_dir="projects/work_dirs/stage2_e2e/full_e2e/",
        max_epochs=20,
        nproc_per_node=8,
        load_from="/workspace/UniAD/ckpts/full_track_map.pth",
        cfg_options=("data.workers_per_gpu=4", "log_config.interval=10"),
        python="/usr/bin/python3",
    )
    values.update(overrides)
    return StageSpec(**values)


def test_reference_run_stage2_command_with_torchrun():
    cmd = build_launch(
        spec(), backend="gloo", master_port=28599, trainside=TRAINSIDE, base_env={"PYTHONPATH": "/opt/extra"}
    )
    assert cmd.argv == [
        "/usr/bin/python3",
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=8",
        "--master_addr=127.0.0.1",
        "--master_port=28599",
        "tools/train.py",
        "projects/configs/stage2_e2e/full_e2e.py",
        "--launcher",
        "pytorch",
        "--deterministic",
        "--work-dir",
        "projects/work_dirs/stage2_e2e/full_e2e/",
        "--cfg-options",
        "dist_params.backend=gloo",
        "total_epochs=20",
        "runner.max_epochs=20",
        "load_from=/workspace/UniAD/ckpts/full_track_map.pth",
        "data.workers_per_gpu=4",
        "log_config.interval=10",
    ]
    assert cmd.env == {"PYTHONPATH": "/workspace/UniAD:/opt/extra", "PYTHONUNBUFFERED": "1"}
    assert cmd.cwd == "/workspace/UniAD"
    assert cmd.backend == "gloo"


def test_launch_launcher_uses_env_and_never_drops_launcher_pytorch():
    cmd = build_launch(
        spec(launcher="launch", deterministic=False, seed=7, resume_from="w/epoch_3.pth", load_from=None),
        backend="nccl",
        master_port=29500,
        trainside=TRAINSIDE,
    )
    assert cmd.argv[1:4] == ["-m", "torch.distributed.launch", "--use_env"]
    assert cmd.argv[cmd.argv.index("--launcher") + 1] == "pytorch"
    assert "--deterministic" not in cmd.argv
    assert cmd.argv[cmd.argv.index("--seed") + 1] == "7"
    assert cmd.argv[cmd.argv.index("--resume-from") + 1] == "w/epoch_3.pth"
    assert not any(item.startswith("load_from=") for item in cmd.argv)
    assert cmd.env["PYTHONPATH"] == "/workspace/UniAD"


def test_shell_metacharacters_stay_one_literal_argv_item():
    nasty = "data.samples_per_gpu=1; touch /tmp/pwned $(id) `id` | cat"
    cmd = build_launch(spec(cfg_options=(nasty,)), backend="gloo", master_port=29500, trainside=TRAINSIDE)
    assert cmd.argv[-1] == nasty
    assert isinstance(cmd.argv, list) and all(isinstance(item, str) for item in cmd.argv)


def test_iteration_checkpoints_select_the_trainside_runner_without_config_edits(tmp_path):
    shipped = ship_trainside(tmp_path / ".uniad_trainside")
    cmd = build_launch(
        spec(checkpoint_interval_iters=500),
        backend="gloo",
        master_port=28599,
        trainside=shipped,
        base_env={"PYTHONPATH": "/opt/extra"},
    )
    options = cmd.argv[cmd.argv.index("--cfg-options") + 1 :]
    assert options[4:8] == [
        "custom_imports.imports=[uniad_iter_checkpoint]",
        "custom_imports.allow_failed_imports=False",
        "runner.type=IterCheckpointEpochBasedRunner",
        "runner.checkpoint_interval_iters=500",
    ]
    root, trainside, inherited = cmd.env["PYTHONPATH"].split(":")
    assert (root, trainside, inherited) == ("/workspace/UniAD", str(shipped), "/opt/extra")
    # The work dir's copy has what the runner imports (this package is not installed in UniAD's interpreter).
    assert {p.name for p in shipped.iterdir()} >= {"uniad_iter_checkpoint.py", "uniad_workdir.py"}
    # Without the option the launch is the reference one: no extra module on the path, no runner override.
    plain = build_launch(spec(), backend="gloo", master_port=28599, trainside=TRAINSIDE)
    assert plain.env["PYTHONPATH"] == "/workspace/UniAD" and not any("runner.type" in a for a in plain.argv)


@pytest.mark.parametrize(
    ("requested", "gpus", "nproc", "nccl_error", "expected", "why"),
    [
        ("auto", 8, 8, None, "nccl", "NCCL probe all-reduce passed"),
        ("auto", 0, 2, None, "gloo", "0 usable GPU(s) for 2 process(es)"),
        ("auto", 8, 8, "NCCL error: unhandled system error", "gloo", "falling back to gloo (NCCL error"),
        ("gloo", 8, 8, None, "gloo", "requested gloo"),
        ("nccl", 8, 8, None, "nccl", "probe all-reduce passed"),
    ],
)
def test_resolve_backend(requested, gpus, nproc, nccl_error, expected, why):
    backend, reason = resolve_backend(requested, gpus, nproc, nccl_error)
    assert backend == expected and why in reason


@pytest.mark.parametrize("requested", ["auto", "gloo", "nccl"])
def test_fewer_visible_gpus_than_ranks_is_refused_before_launch(requested):
    with pytest.raises(LaunchError, match=r"nproc_per_node=8 but .* sees 4 GPU\(s\).*Set nproc_per_node=4"):
        resolve_backend(requested, 4, 8)


def test_explicit_nccl_that_cannot_work_suggests_gloo():
    with pytest.raises(LaunchError, match="Use backend=gloo"):
        resolve_backend("nccl", 0, 2)
    with pytest.raises(LaunchError, match="failed to initialise on this worker .*Use backend=gloo"):
        resolve_backend("nccl", 8, 8, "NCCL error: unhandled system error")


def test_build_launch_needs_a_resolved_backend_and_sane_port():
    with pytest.raises(LaunchError, match="resolved backend"):
        build_launch(spec(), backend="auto", master_port=29500, trainside=TRAINSIDE)
    with pytest.raises(LaunchError, match="master_port"):
        build_launch(spec(), backend="gloo", master_port=80, trainside=TRAINSIDE)


def test_find_free_port_is_bindable():
    port = find_free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.parametrize(
    ("interval", "epochs", "expected"),
    [
        (4, 20, None),  # UniAD stage 2: 4 divides 20, the config's own interval evaluates epoch 20
        (4, 5, 5),  # epoch 4 would be the last evaluated: evaluate the final one instead
        (6, 3, 3),  # stage 1 (interval 6) for 3 epochs
        (None, 5, None),  # no evaluation in the config: nothing to move
    ],
)
def test_the_final_epoch_is_always_evaluated(interval, epochs, expected):
    assert final_epoch_evaluation_interval(interval, epochs) == expected


def test_a_launch_without_the_workers_interpreter_is_refused():
    with pytest.raises(LaunchError, match="resolved on the worker that launches the attempt"):
        build_launch(spec(python=None), backend="gloo", master_port=29500, trainside=TRAINSIDE)


def test_evaluation_settings_reach_train_py():
    with_interval = build_launch(spec(evaluation_interval=5), backend="gloo", master_port=29500, trainside=TRAINSIDE)
    assert "evaluation.interval=5" in with_interval.argv and "--no-validate" not in with_interval.argv
    off = build_launch(
        spec(validate=False, evaluation_interval=5), backend="gloo", master_port=29500, trainside=TRAINSIDE
    )
    assert "--no-validate" in off.argv and not any(a.startswith("evaluation.") for a in off.argv)
