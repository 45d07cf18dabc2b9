"""The stage gate on a work dir: health verdict (strict or not) and the checkpoint, with the report written."""

from __future__ import annotations

import json
import math

import pytest

from support import save_mmcv_checkpoint
from uniad.errors import GateFailed
from uniad.health.gate import validate_stage
from uniad.health.reference import reference_config, reference_evaluation, reference_records, write_json_log
from uniad.workdir import WorkDir


def work_dir(tmp_path, records, stage="stage1", epoch=2, evaluated=True):
    """A stage's work dir; ``evaluated``: its log ends with the final epoch's val record, as UniAD's does."""
    work = tmp_path / "work"
    work.mkdir()
    records = records + [reference_evaluation(epoch)] if evaluated else records
    write_json_log(work / "20240101_000000.log.json", records, config=reference_config(2))
    save_mmcv_checkpoint(work / f"epoch_{epoch}.pth", stage, epoch)
    (work / "latest.pth").symlink_to(f"epoch_{epoch}.pth")
    return work


@pytest.fixture(scope="module")
def healthy():
    return reference_records(epochs=2, iters_per_epoch=400)


def test_healthy_stage_passes_and_reports(tmp_path, healthy):
    work = work_dir(tmp_path, healthy)
    result = validate_stage(WorkDir(work), "stage1", expect_epoch=2)
    assert result["verdict"] == "healthy" and result["checkpoint"]["valid"]
    assert result["report"] == str(work / "health/report.md")
    assert (work / "health/lr.png").is_file()
    assert result["progress"] == 1.0


def test_unhealthy_log_fails_the_gate_with_its_findings(tmp_path, healthy):
    records = [dict(r) for r in healthy]
    records[40]["loss"] = math.nan
    work = work_dir(tmp_path, records)
    with pytest.raises(GateFailed, match="stage1 training is unhealthy: loss is nan at epoch 2 iter 10") as info:
        validate_stage(WorkDir(work), "stage1", expect_epoch=2)
    assert str(work / "health/report.md") in str(info.value)
    assert (work / "health/report.md").read_text().startswith("# stage1")


def test_warnings_fail_only_when_strict(tmp_path, healthy):
    records = [dict(r) for r in healthy]
    records[60]["loss"] = 500.0  # one spike: a warning
    work = work_dir(tmp_path, records)
    assert validate_stage(WorkDir(work), "stage1", expect_epoch=2)["verdict"] == "warning"
    with pytest.raises(GateFailed, match=r"warning \(strict: warnings fail too\)"):
        validate_stage(WorkDir(work), "stage1", expect_epoch=2, strict=True)


def test_healthy_log_but_wrong_checkpoint_fails(tmp_path, healthy):
    work = work_dir(tmp_path, healthy, stage="stage2")
    with pytest.raises(GateFailed, match="stage1 checkpoint rejected: not a stage1 checkpoint"):
        validate_stage(WorkDir(work), "stage1", expect_epoch=2)


def test_missing_log_says_what_is_missing(tmp_path):
    with pytest.raises(GateFailed, match="no \\*.log.json in"):
        validate_stage(WorkDir(tmp_path), "stage2", expect_epoch=20)


def test_a_resumed_stage_is_judged_on_all_its_attempts(tmp_path, healthy):
    """Attempt 1 crashed in epoch 2 (after iter 200); attempt 2 resumed from epoch_1.pth and logged epoch 2 again."""
    work = tmp_path / "work"
    work.mkdir()
    first = [r for r in healthy if (r["epoch"], r["iter"]) <= (2, 200)]
    second = [dict(r, loss=r["loss"] * 0.99) for r in healthy if r["epoch"] == 2] + [reference_evaluation(2)]
    write_json_log(work / "20240101_000000.log.json", first, config=reference_config(2))
    write_json_log(work / "20240101_010000.log.json", second, config=reference_config(2))
    save_mmcv_checkpoint(work / "epoch_2.pth", "stage1", 2)
    (work / "latest.pth").symlink_to("epoch_2.pth")
    result = validate_stage(WorkDir(work), "stage1", expect_epoch=2)
    assert result["verdict"] == "healthy" and result["progress"] == 1.0
    assert len(result["logs"]) == 2
    report = (work / "health/report.md").read_text()
    assert "2 attempts" in report.splitlines()[0]
    assert "- records: 80" in report  # epoch 1 from attempt 1, epoch 2 from attempt 2; the lost part is dropped
    assert "| end of epoch 1 | 1 | 400 |" in report


def test_metric_requirements_fail_the_gate_with_both_numbers(tmp_path, healthy):
    from uniad.metrics import Requirement

    work = work_dir(tmp_path, healthy)
    ok = validate_stage(WorkDir(work), "stage1", expect_epoch=2, requirements=[Requirement.parse("lanes_iou>=0.25")])
    assert ok["metrics"]["epoch"] == 2 and ok["metrics"]["values"]["pts_bbox_NuScenes/amota"] == 0.3896
    # A class-level nan (normal in nuScenes evaluation) is no finding, and no value in what the gate hands on: XCom
    # and the published model's provenance take strict JSON.
    assert [f["code"] for f in ok["findings"]] == ["zero_by_design"]
    assert "pts_bbox_NuScenes/traffic_cone_orient_err" not in ok["metrics"]["values"]
    json.dumps(ok, allow_nan=False)
    impossible = Requirement.parse("pts_bbox_NuScenes/amota>=0.5")
    with pytest.raises(GateFailed, match=r"pts_bbox_NuScenes/amota is 0.3896, required >= 0.5"):
        validate_stage(WorkDir(work), "stage1", expect_epoch=2, requirements=[impossible])
    report = (work / "health/report.md").read_text()
    assert "## Metrics" in report and "| pts_bbox_NuScenes/amota | 0.3896 |" in report


def test_a_final_epoch_without_evaluation_fails_unless_validation_was_off(tmp_path, healthy):
    work = work_dir(tmp_path, healthy, evaluated=False)
    with pytest.raises(GateFailed, match="not_evaluated|the final epoch 2 was not evaluated"):
        validate_stage(WorkDir(work), "stage1", expect_epoch=2)
    assert validate_stage(WorkDir(work), "stage1", expect_epoch=2, evaluated=False)["verdict"] == "healthy"


def test_the_report_shows_the_references_for_uniad(tmp_path, healthy):
    from uniad.metrics import REFERENCES

    work = work_dir(tmp_path, healthy)
    validate_stage(WorkDir(work), "stage1", expect_epoch=2, references=REFERENCES["stage1"])
    report = (work / "health/report.md").read_text()
    assert "| pts_bbox_NuScenes/amota | 0.3896 | 0.39 |" in report and "| lanes_iou | 0.297 | 0.297 |" in report
    assert (work / "health/metrics.png").stat().st_size > 5000
