"""The work-dir contract: who owns a stage's folder, where an older run's files go, and how a run finds its own."""

from __future__ import annotations

import json
import shutil
import time

from uniad.workdir import (
    EPOCH_FILE,
    MARKER,
    PREVIOUS,
    WorkDir,
    default_work_dir,
    provenance_path,
    sanitize_run_id,
    text_log_of,
)


def mark(directory, run_id: str, stage: str) -> None:
    (directory / MARKER).write_text(json.dumps({"run_id": run_id, "stage": stage, "started": time.time() - 60}))


def test_a_run_finds_its_folder_in_the_work_dir_or_in_previous_runs(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    assert WorkDir(work).for_run("run-a") is None
    mark(work, "run-a", "stage1")
    assert WorkDir(work).for_run("run-a") == WorkDir(work)
    # A newer run took the work dir over and archived run-a's files.
    archived = work / PREVIOUS / "run-a-20261124_100000"
    archived.mkdir(parents=True)
    shutil.move(str(work / MARKER), archived / MARKER)
    mark(work, "run-b", "stage1")
    assert WorkDir(work).for_run("run-a") == WorkDir(archived)
    assert WorkDir(work).for_run("run-b") == WorkDir(work)
    assert WorkDir(work).for_run("run-c") is None


def test_claim_archives_another_runs_files_and_keeps_its_own(tmp_path):
    work = WorkDir(tmp_path / "work")
    assert work.claim("run-a", "stage1") is False  # a fresh folder
    (work.path / EPOCH_FILE.format(1)).write_bytes(b"weights")
    work.latest.symlink_to((work.path / EPOCH_FILE.format(1)).name)
    assert work.claim("run-a", "stage1") is True  # a retry keeps everything
    assert work.latest_checkpoint() == (work.path / EPOCH_FILE.format(1))
    assert work.claim("run-b", "stage1") is False
    assert sorted(p.name for p in work.path.iterdir()) == [MARKER, PREVIOUS]
    (archived,) = (work.path / PREVIOUS).iterdir()
    assert archived.name.startswith("run-a-") and (archived / "epoch_1.pth").read_bytes() == b"weights"
    assert work.read_marker()["run_id"] == "run-b" and work.latest_checkpoint() is None


def test_logs_and_outputs_of_a_stage(tmp_path):
    work = WorkDir(tmp_path)
    for name in ("20260101_000000.log", "20260101_000000.log.json", "20260102_000000.log.json", "epoch_1.pth"):
        (tmp_path / name).write_text("{}\n")
    work.health_dir.mkdir()
    (work.health_dir / "report.md").write_text("# report\n")
    assert [p.name for p in work.json_logs()] == ["20260101_000000.log.json", "20260102_000000.log.json"]
    assert work.latest_json_log().name == "20260102_000000.log.json"
    assert work.latest_json_log(newer_than=time.time() + 60) is None
    assert [name for _, name in work.stage_outputs()] == [
        "20260101_000000.log",
        "20260101_000000.log.json",
        "20260102_000000.log.json",
        "health/report.md",
    ]
    assert text_log_of(work.json_logs()[0]).name == "20260101_000000.log"


def test_names_follow_uniad_and_mmcv():
    assert default_work_dir("projects/configs/stage2_e2e/full_e2e.py") == "projects/work_dirs/stage2_e2e/full_e2e/"
    assert provenance_path("/r/ckpts/full_track_map.pth").name == "full_track_map.pth.provenance.json"
    assert sanitize_run_id("manual__2026-11-24T09:00:00+00:00") == "manual__2026-11-24T09_00_00_00_00"
    assert sanitize_run_id("../..") == "run"
