"""The training dashboard's view of a run, computed from real mini-UniAD logs."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest

from support import PYTHON
from uniad.run.params import PipelineParams
from uniad.run.plan import prepare
from uniad.views.dashboard import run_view, stage_view
from uniad.workdir import MARKER, WorkDir


def copy_logs(src: Path, dst: Path, keep_lines: int | None = None) -> WorkDir:
    """The stage's mmcv logs (text and json) in ``dst``; ``keep_lines``: the json log cut as if still training."""
    dst.mkdir(parents=True, exist_ok=True)
    for log in src.glob("*.log*"):
        shutil.copy2(log, dst / log.name)
        if keep_lines and log.name.endswith(".log.json"):
            lines = log.read_text().splitlines(keepends=True)[:keep_lines]
            (dst / log.name).write_text("".join(lines))
    return WorkDir(dst)


def mark(directory: WorkDir, run_id: str, stage: str) -> None:
    (directory.path / MARKER).write_text(json.dumps({"run_id": run_id, "stage": stage, "started": time.time() - 60}))


def test_a_finished_stage(trained_root, tmp_path):
    view = stage_view(copy_logs(trained_root["stage1_dir"], tmp_path / "s1"), "stage1", max_epochs=2, nproc=2)
    assert view["started"] and view["verdict"] == "healthy"
    assert (view["epoch"], view["iter"], view["iters_per_epoch"]) == (2, 40, 40)
    assert view["progress"] == 1.0 and view["done_iters"] == view["total_iters"] == 80
    assert view["eta_s"] is None  # not running
    assert view["elapsed_s"] > 0 and view["gpu_hours"] == pytest.approx(view["elapsed_s"] * 2 / 3600, abs=1e-4)
    series = view["series"]
    assert series["x"] == [10, 20, 30, 40, 50, 60, 70, 80]
    assert series["epoch_starts"] == [40]
    assert list(series["groups"]) == ["track", "map"]
    assert series["loss"][0] > series["loss"][-1]  # it learned
    assert all(len(series[k]) == 8 for k in ("loss", "grad_norm", "lr", "epoch", "iter"))
    codes = {f["code"]: f["severity"] for f in view["findings"]}
    assert codes == {"zero_by_design": "info"}


def test_a_stage_still_training(trained_root, tmp_path):
    directory = copy_logs(trained_root["stage1_dir"], tmp_path / "s1", keep_lines=4)  # meta + 3 records
    log = directory.json_logs()[0]
    now = log.stat().st_mtime + 5
    view = stage_view(directory, "stage1", max_epochs=2, nproc=2, active=True, now=now)
    assert (view["epoch"], view["iter"]) == (1, 30)
    assert view["progress"] == pytest.approx(30 / 80)
    # The ETA is the remaining iterations at the logged seconds per iteration.
    assert view["eta_s"] == pytest.approx(50 * view["seconds_per_iter"], abs=0.1)
    assert view["series"]["epoch_starts"] == []
    assert view["checkpoint"] is None  # a crash now restarts the stage
    # With checkpoint_interval_iters: the newest checkpoint a retry would resume from, and what a crash now costs.
    for name in ("epoch_1_iter_10.pth", "epoch_1_iter_20.pth"):
        (directory.path / name).write_bytes(b"")
    checkpoint = stage_view(directory, "stage1", max_epochs=2, nproc=2, active=True, now=now)["checkpoint"]
    assert checkpoint["file"] == "epoch_1_iter_20.pth" and (checkpoint["epoch"], checkpoint["inner_iter"]) == (1, 20)
    assert checkpoint["at_risk_iters"] == 10
    assert checkpoint["at_risk_s"] == pytest.approx(10 * view["seconds_per_iter"], abs=0.1)
    assert "stall" not in {f["code"] for f in view["findings"]}
    # Silent far longer than its log interval while its task runs: the page shows a stall warning.
    silent = stage_view(directory, "stage1", max_epochs=2, nproc=2, active=True, now=now + 3600)
    assert "stall" in {f["code"] for f in silent["findings"]} and silent["verdict"] == "warning"


def test_a_stage_not_started_or_just_launched(trained_root, tmp_path):
    assert stage_view(None, "stage2", max_epochs=20, nproc=8)["started"] is False
    (tmp_path / "empty").mkdir()
    view = stage_view(WorkDir(tmp_path / "empty"), "stage2", max_epochs=20, nproc=8)
    assert view["started"] is False and view["series"] is None
    # mmcv has written the meta line but no record yet.
    launched = stage_view(
        copy_logs(trained_root["stage1_dir"], tmp_path / "s1", keep_lines=1),
        "stage1",
        max_epochs=2,
        nproc=2,
        active=True,
    )
    assert launched["started"] and launched["records"] == 0 and launched["series"] is None


def test_run_view_puts_stage2_after_the_hand_off(trained_root, tmp_path):
    root = tmp_path / "root"
    params = PipelineParams(profile="mini", uniad_root=str(root), stage1_epochs=2, stage2_epochs=1)
    plan, _ = prepare(params, python=PYTHON)
    for stage, src in (("stage1", trained_root["stage1_dir"]), ("stage2", trained_root["stage2_dir"])):
        mark(copy_logs(src, plan.work_dir(stage).path), "r1", stage)
    promoted = {"path": plan.ckpt_path, "sha256": "ab" * 32, "epoch": 2}
    view = run_view(plan, "r1", stage_states={"stage1": "success", "stage2": "success"}, promoted=promoted)
    first, second = view["stages"]
    assert first["started"] and second["started"]
    assert (first["x_offset"], second["x_offset"], view["handoff_x"]) == (0, 80, 80)
    assert set(second["series"]["groups"]) >= {"track", "map", "motion", "occ", "planning"}
    assert view["promoted"] == promoted and view["eta_s"] is None
    assert view["gpu_hours"] == pytest.approx(first["gpu_hours"] + second["gpu_hours"], abs=1e-3)

    # The same run while stage 1 trains: stage 2 not started, the ETA covers both stages.
    shutil.rmtree(plan.work_dir("stage2").path)
    stage1 = copy_logs(trained_root["stage1_dir"], plan.work_dir("stage1").path, keep_lines=4)
    now = stage1.json_logs()[0].stat().st_mtime + 1
    live = run_view(plan, "r1", stage_states={"stage1": "running"}, now=now)
    first, second = live["stages"]
    assert first["task_state"] == "running" and first["progress"] < 1 and not second["started"]
    per_iter = first["seconds_per_iter"]
    assert live["eta_s"] == pytest.approx(first["eta_s"] + 1 * 40 * per_iter, abs=0.2)
    assert live["promoted"] is None

    # The same stage as a job of 2 Slurm nodes, deferred while its trigger follows it: training, with an ETA, and
    # holding the GPUs of both nodes.
    slurm_plan, _ = prepare(replace(params, executor="slurm", nnodes=2), python=PYTHON)
    assert slurm_plan.work_dir("stage1").path == plan.work_dir("stage1").path
    (deferred, _) = run_view(slurm_plan, "r1", stage_states={"stage1": "deferred"}, now=now)["stages"]
    assert deferred["eta_s"] == first["eta_s"] and deferred["nproc"] == 2 * first["nproc"]
    # Each is rounded to 4 decimals: twice a rounded value may differ from the rounded double by 1e-4.
    assert deferred["gpu_hours"] == pytest.approx(2 * first["gpu_hours"], abs=1.5e-4)

    # Whatever the task's state says (`airflow dags test` shows a deferred task queued), a live holder of the work
    # dir's lease trains in it; without one a queued task's stage is not training.
    (queued, _) = run_view(plan, "r1", stage_states={"stage1": "queued"}, now=now)["stages"]
    assert queued["eta_s"] is None
    from uniad.trainside.uniad_workdir import Lease

    lease = Lease(str(plan.work_dir("stage1").path), "local:j1").acquire()
    try:
        (queued, _) = run_view(plan, "r1", stage_states={"stage1": "queued"}, now=now)["stages"]
    finally:
        lease.release()
    assert queued["eta_s"] == first["eta_s"]


def test_the_api_is_json_serialisable_without_nan(trained_root, tmp_path):
    """JSON has no NaN: a non-finite loss is sent as null (a gap in the curve) and the finding says what it was."""
    directory = copy_logs(trained_root["stage1_dir"], tmp_path / "s1")
    log = directory.json_logs()[0]
    lines = log.read_text().splitlines()
    record = json.loads(lines[3])
    record["loss"] = float("nan")
    lines[3] = json.dumps(record)
    log.write_text("\n".join(lines) + "\n")
    view = stage_view(directory, "stage1", max_epochs=2, nproc=2)
    text = json.dumps(view, allow_nan=False)
    assert view["series"]["loss"][2] is None
    assert view["verdict"] == "unhealthy" and "non_finite_loss" in text
    assert os.fspath(directory.path) in text
