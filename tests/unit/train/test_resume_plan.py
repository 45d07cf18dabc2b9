"""Where a retry resumes: the newest valid checkpoint of this run (an epoch's, or a mid-epoch one), never a stale
one of another run. The same with real training and real crashes: tests/e2e/test_resume_faults.py."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from uniad.train.launch import StageSpec
from uniad.train.resume import plan_attempt
from uniad.workdir import MARKER, PREVIOUS

CONFIG = "projects/configs/stage1_track_map/full_track_map.py"
WORK = "projects/work_dirs/stage1_track_map/full_track_map"


def test_iteration_checkpoints_rank_by_position_and_must_match_their_meta(tmp_path):
    import torch

    from support import save_mmcv_checkpoint

    work = tmp_path / WORK
    work.mkdir(parents=True)

    def mid_epoch(path, done_epochs, inner_iter):
        save_mmcv_checkpoint(path, "stage1", done_epochs)
        ckpt = torch.load(path, weights_only=True)
        ckpt["meta"]["mid_epoch"] = {"inner_iter": inner_iter, "world_size": 2}
        torch.save(ckpt, path)
        return path

    save_mmcv_checkpoint(work / "epoch_2.pth", "stage1", 2)
    good = mid_epoch(work / "epoch_3_iter_10.pth", 2, 10)
    mid_epoch(work / "epoch_3_iter_30.pth", 2, 20)  # renamed by hand: its name and its meta disagree
    (work / MARKER).write_text(json.dumps({"run_id": "run-a"}))
    spec = StageSpec(
        uniad_root=str(tmp_path),
        config=CONFIG,
        work_dir=WORK + "/",
        max_epochs=6,
        nproc_per_node=2,
        checkpoint_interval_iters=10,
    )
    attempt = plan_attempt(spec, "stage1", run_id="run-a")
    assert attempt.skipped == [
        "epoch_3_iter_30.pth: its meta says 2 epoch(s) complete and 20 iteration(s) of the next, which its name "
        "does not"
    ]
    assert attempt.spec.resume_from == str(good) and attempt.resume_point == (3, 10)
    assert attempt.describe() == f"resuming from {good} (epoch 3, after iteration 10)"
    # 4 processes would walk UniAD's group sampler in another order: back to the last epoch checkpoint, saying why.
    wider = plan_attempt(replace(spec, nproc_per_node=4), "stage1", run_id="run-a")
    assert wider.spec.resume_from == str(work / "epoch_2.pth") and wider.resume_point == (3, 0)
    assert wider.skipped[-1] == (
        "epoch_3_iter_10.pth: a mid-epoch checkpoint of 2 processes cannot be resumed by 4: the sampler's order "
        "depends on the world size, so the rest of its epoch would train the wrong samples; resuming from the last "
        "epoch checkpoint instead"
    )
    # A Slurm job of 2 nodes x 1 process has the world size of 2: it resumes mid-epoch; 2 nodes x 2 do not.
    assert plan_attempt(replace(spec, nproc_per_node=1), "stage1", run_id="run-a", nnodes=2).resume_point == (3, 10)
    assert plan_attempt(spec, "stage1", run_id="run-a", nnodes=2).resume_point == (3, 0)
    # Once epoch 3 is complete its file is newer than any iteration checkpoint inside it.
    save_mmcv_checkpoint(work / "epoch_3.pth", "stage1", 3)
    assert plan_attempt(spec, "stage1", run_id="run-a").resume_point == (4, 0)


def test_a_new_run_moves_older_artifacts_aside(tmp_path):
    work = tmp_path / WORK
    work.mkdir(parents=True)
    (work / MARKER).write_text(json.dumps({"run_id": "old-run"}))
    (work / "epoch_6.pth").write_bytes(b"stale")
    (work / "latest.pth").symlink_to("epoch_6.pth")
    spec = StageSpec(
        uniad_root=str(tmp_path),
        config=CONFIG,
        work_dir=WORK + "/",
        max_epochs=6,
        nproc_per_node=2,
        resume_from="/somewhere/else.pth",
    )
    attempt = plan_attempt(spec, "stage1", run_id="new-run")
    assert attempt.spec.resume_from is None and attempt.resumed_from is None
    assert sorted(p.name for p in work.iterdir()) == [MARKER, PREVIOUS]
    archived = next((work / PREVIOUS).iterdir())
    assert archived.name.startswith("old-run-")
    assert (archived / "epoch_6.pth").read_bytes() == b"stale" and (archived / "latest.pth").is_symlink()
    assert json.loads((work / MARKER).read_text())["run_id"] == "new-run"
    # A retry of the new run with no checkpoint yet starts from the beginning.
    assert plan_attempt(spec, "stage1", run_id="new-run").resumed_from is None


@pytest.mark.parametrize(
    ("meta", "warned"),
    [
        # UniAD's train.py writes gpu_ids = range(world_size) into the config it stores in the meta.
        ({"config": "optimizer = dict(lr=0.0002)\ngpu_ids = range(0, 8)\n"}, True),
        ({"env_info": "sys.platform: linux\nworld_size: 8"}, True),  # the mini's env_info
        # The GPU line lists what the machine showed: 8 visible GPUs, 4 of them trained. Not a changed world size.
        ({"env_info": "GPU 0,1,2,3,4,5,6,7: NVIDIA A40", "config": "gpu_ids = range(0, 4)\n"}, False),
        ({"env_info": "GPU 0,1,2,3,4,5,6,7: NVIDIA A40"}, False),
    ],
)
def test_a_changed_world_size_is_warned_not_the_visible_gpus(tmp_path, meta, warned):
    import torch

    from support import save_mmcv_checkpoint

    work = tmp_path / WORK
    work.mkdir(parents=True)
    path = save_mmcv_checkpoint(work / "epoch_2.pth", "stage1", 2)
    ckpt = torch.load(path, weights_only=True)
    ckpt["meta"].update(meta)
    torch.save(ckpt, path)
    (work / MARKER).write_text(json.dumps({"run_id": "run-a"}))
    spec = StageSpec(uniad_root=str(tmp_path), config=CONFIG, work_dir=WORK + "/", max_epochs=6, nproc_per_node=4)
    attempt = plan_attempt(spec, "stage1", run_id="run-a")
    assert attempt.resumed_epoch == 2 and attempt.spec.resume_from == str(path)
    assert attempt.warnings == (
        [
            "epoch_2.pth was trained by 8 processes, this attempt runs 4: mmcv rescales the iteration counter on "
            "resume, so per-iteration schedules (warmup) shift"
        ]
        if warned
        else []
    )


def test_a_final_checkpoint_without_its_evaluation_trains_the_last_epoch_again(tmp_path):
    """An attempt that ended after the final epoch's checkpoint but before its evaluation (a Slurm time limit in
    the middle of it): resuming from that checkpoint would train nothing and leave the stage unevaluated, so the
    retry resumes from the epoch before; once the evaluation is logged, the final checkpoint is the resume point."""
    from support import save_mmcv_checkpoint

    work = tmp_path / WORK
    work.mkdir(parents=True)
    for epoch in (2, 3):
        save_mmcv_checkpoint(work / f"epoch_{epoch}.pth", "stage1", epoch)
    (work / MARKER).write_text(json.dumps({"run_id": "run-a"}))
    log = work / "20261130_101010.log.json"
    train = {"mode": "train", "epoch": 3, "iter": 40, "lr": 0.001, "loss": 1.0}
    log.write_text(json.dumps({"env_info": "world_size: 2"}) + "\n" + json.dumps(train) + "\n")
    spec = StageSpec(uniad_root=str(tmp_path), config=CONFIG, work_dir=WORK + "/", max_epochs=3, nproc_per_node=2)
    attempt = plan_attempt(spec, "stage1", run_id="run-a")
    assert attempt.resumed_from == str(work / "epoch_2.pth") and attempt.resume_point == (3, 0)
    assert attempt.skipped == [
        "epoch_3.pth: the final epoch's evaluation is not in the logs; the last epoch trains again from the "
        "checkpoint before it, and is evaluated"
    ]
    with log.open("a") as handle:
        handle.write(json.dumps({"mode": "val", "epoch": 3, "iter": 16, "pts_bbox_NuScenes/amota": 0.4}) + "\n")
    assert plan_attempt(spec, "stage1", run_id="run-a").resumed_from == str(work / "epoch_3.pth")
    # --no-validate: nothing is evaluated during training, so nothing is waited for.
    unvalidated = replace(spec, validate=False)
    log.write_text(json.dumps(train) + "\n")
    assert plan_attempt(unvalidated, "stage1", run_id="run-a").resumed_from == str(work / "epoch_3.pth")
