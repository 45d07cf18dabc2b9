"""The mini UniAD trained for real (2 gloo processes, mmcv runner) and what it leaves behind."""

from __future__ import annotations

import json
import re
import statistics

import pytest

from support import PYTHON, run
from uniad.artifacts.checkpoints import inspect_checkpoint


def json_records(work_dir):
    logs = sorted(work_dir.glob("*.log.json"))
    assert len(logs) == 1, logs
    lines = logs[0].read_text().splitlines()
    meta = json.loads(lines[0])
    return meta, [json.loads(line) for line in lines[1:]]


def test_stage1_losses_fall_because_the_model_learns(trained_root):
    meta, records = json_records(trained_root["stage1_dir"])
    assert {"env_info", "config", "seed", "exp_name"} <= set(meta)
    assert "dist_params = dict(backend='gloo')" in meta["config"]
    train = [r for r in records if r["mode"] == "train"]
    assert [(r["epoch"], r["iter"]) for r in train] == [(e, i) for e in (1, 2) for i in (10, 20, 30, 40)]
    first, last_epoch = train[0]["loss"], [r["loss"] for r in train if r["epoch"] == 2]
    assert statistics.mean(last_epoch) < 0.8 * first, (first, last_epoch)
    bbox = [sum(v for k, v in r.items() if "loss_bbox" in k and k.startswith("track.")) for r in train]
    assert bbox[-1] < 0.7 * bbox[0]
    keys = set(train[0])
    for key in (
        "lr",
        "grad_norm",
        "time",
        "data_time",
        "track.frame_0_loss_cls_0",
        "track.frame_2_loss_bbox_5",
        "track.frame_1_loss_past_trajs_3",
        "map.loss_cls",
        "map.loss_bbox",
        "map.loss_iou",
        "map.loss_mask_things",
        "map.loss_mask_stuff",
        "map.d0.loss_cls",
    ):
        assert key in keys, key
    assert not any(k.startswith(("motion.", "occ.", "planning.")) for k in keys)
    # Past-trajectory loss is off in stage 1 by design; it logs as exactly 0.0.
    assert all(v == 0.0 for r in train for k, v in r.items() if "loss_past_trajs" in k)
    # The total sums the keys that contain "loss".
    record = train[-1]
    assert record["loss"] == pytest.approx(sum(v for k, v in record.items() if "loss" in k and k != "loss"), abs=1e-3)


def test_stage1_progress_lines_and_checkpoints(trained_root):
    out = trained_root["stage1_stdout"]
    lines = [line for line in out.splitlines() if line.startswith("[stage1] epoch")]
    assert len(lines) == 8
    assert re.search(
        r"\[stage1\] epoch 2/2 iter 40/40 \| 100\.0% \| loss \d+\.\d+ \| elapsed \S+ \| ETA 0:00:00", lines[-1]
    )
    assert "ETA --" in lines[0] and "ETA --" not in lines[1]
    work = trained_root["stage1_dir"]
    assert (work / "latest.pth").is_symlink() and (work / "latest.pth").resolve() == work / "epoch_2.pth"
    report = inspect_checkpoint(work / "latest.pth", stage="stage1", expect_epoch=2)
    assert report.valid, report.problems
    assert (report.epoch, report.iter) == (2, 80)


def test_stage2_starts_from_the_promoted_checkpoint(trained_root):
    stage2 = trained_root["stage2_dir"]
    text_log = next(stage2.glob("*.log")).read_text()
    assert f"load checkpoint from local path: {trained_root['ckpt']}" in text_log
    assert "missing keys in source state_dict: motion_head." in text_log
    _, records = json_records(stage2)
    keys = set(records[0])
    for key in (
        "motion.loss_traj",
        "motion.min_ade",
        "occ.loss_dice",
        "occ.loss_aux_mask",
        "planning.loss_ade",
        "planning.loss_collision_0",
    ):
        assert key in keys, key
    # Loaded perception weights: track losses start where stage 1 ended, not from scratch.
    _, stage1 = json_records(trained_root["stage1_dir"])
    track = lambda r: sum(v for k, v in r.items() if k.startswith("track.") and "past" not in k)  # noqa: E731
    assert track(records[0]) < 0.8 * track(stage1[0])
    ckpt = stage2 / "latest.pth"
    assert inspect_checkpoint(ckpt, stage="stage2", expect_epoch=1).valid
    assert not inspect_checkpoint(ckpt, stage="stage1").valid


def test_inspect_cli_rejects_each_stage_as_the_other(trained_root):
    stage1 = run([PYTHON, "-m", "uniad", "inspect", str(trained_root["ckpt"]), "--stage", "stage2"], check=False)
    assert stage1.returncode == 1 and "looks like a stage-1 (track + map) checkpoint" in stage1.stdout
    stage2 = run(
        [PYTHON, "-m", "uniad", "inspect", str(trained_root["stage2_dir"] / "latest.pth"), "--stage", "stage1"],
        check=False,
    )
    assert stage2.returncode == 1 and "looks like a stage-2 (end-to-end) checkpoint" in stage2.stdout


def test_real_stage1_log_is_healthy_and_parses(trained_root, tmp_path):
    log = next(trained_root["stage1_dir"].glob("*.log.json"))
    done = run([PYTHON, "-m", "uniad", "analyze", str(log), "--json", "--report", str(tmp_path)], check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    analysis = json.loads(done.stdout)
    assert analysis["verdict"] == "healthy", analysis["findings"]
    assert [f["code"] for f in analysis["findings"]] == ["zero_by_design"]  # loss_past_traj_weight=0.0 in stage 1
    assert analysis["latest"] == {"epoch": 2, "iter": 40, "iters_per_epoch": 40}
    assert analysis["progress"] == 1.0 and analysis["total_epochs"] == 2
    assert analysis["lr"]["peak"] == pytest.approx(2e-3)
    assert (tmp_path / "report.md").read_text().startswith(f"# {log.name}: HEALTHY")
    records = [json.loads(line) for line in run([PYTHON, "-m", "uniad", "parse", str(log)]).stdout.splitlines()]
    assert len(records) == 9 and records[0]["iters_per_epoch"] == 40 and records[0]["mode"] == "train"
    # The final epoch (2, not the config's interval 6) was evaluated: UniAD's metric names in the val record.
    assert records[-1]["mode"] == "val" and records[-1]["epoch"] == 2
    assert {"pts_bbox_NuScenes/amota", "pts_bbox_NuScenes/amotp", "lanes_iou", "drivable_iou"} <= set(records[-1])
    assert {"epoch", "iter", "lr", "loss", "grad_norm", "map.loss_mask_things"} <= set(records[0])


def test_a_trained_model_scores_clearly_better_than_an_untrained_one(trained_root, tmp_path):
    """python -m uniad evaluate: the root's tools/test.py through torchrun, on the val scenes it never trained on."""
    from support import save_mmcv_checkpoint

    untrained = save_mmcv_checkpoint(tmp_path / "untrained.pth", "stage1", 0)

    def evaluate(checkpoint) -> dict:
        out = tmp_path / f"{checkpoint.stem}.json"
        run(
            [
                PYTHON,
                "-m",
                "uniad",
                "evaluate",
                "--uniad-root",
                str(trained_root["root"]),
                "--config",
                "projects/configs/stage1_track_map/full_track_map.py",
                "--checkpoint",
                str(checkpoint),
                "--nproc-per-node",
                "2",
                "--out",
                str(out),
            ],
            timeout=300,
        )
        return json.loads(out.read_text())["metrics"]

    trained, baseline = evaluate(trained_root["stage1_dir"] / "epoch_2.pth"), evaluate(untrained)
    # AMOTA as nuScenes computes it (MOTAR at recall r with the true positives clipped to r * P) is strict: ~0.19
    # after 2 epochs, against ~0 untrained.
    for metric, margin in (("pts_bbox_NuScenes/amota", 0.1), ("pts_bbox_NuScenes/recall", 0.3), ("lanes_iou", 0.2)):
        assert trained[metric] > baseline[metric] + margin, (metric, trained[metric], baseline[metric])
    assert trained["pts_bbox_NuScenes/amotp"] < baseline["pts_bbox_NuScenes/amotp"]  # closer boxes
    # The metrics of tools/test.py are those training logged for the same weights.
    logged = [
        r
        for r in (
            json.loads(line)
            for line in next(trained_root["stage1_dir"].glob("*.log.json")).read_text().splitlines()[1:]
        )
        if r.get("mode") == "val"
    ][-1]
    assert trained["pts_bbox_NuScenes/amota"] == pytest.approx(logged["pts_bbox_NuScenes/amota"], abs=1e-4)
