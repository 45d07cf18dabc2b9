"""Metrics as UniAD logs and prints them: the val record, the printed tables, and the gate's requirements."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from uniad.errors import ParamError
from uniad.health.analysis import analyze
from uniad.health.reference import REFERENCE_CONFIG, reference_evaluation, reference_records
from uniad.metrics import Requirement, lower_is_better, parse_printed, parse_requirements

# What UniAD's stage-2 evaluation prints to rank 0's stdout (MotionEval's table, the occupancy lines, the planning
# PrettyTable), then mmcv's val line; the layouts are those of nuscenes_e2e_dataset.py and nuscenes_eval_motion.py.
PRINTED = (Path(__file__).parent / "uniad_stage2_printed.txt").read_text().splitlines()


def test_printed_tables_become_metrics_of_the_evaluation_that_follows():
    ((epoch, values),) = parse_printed(PRINTED)
    assert epoch == 20
    assert values["motion/minADE"] == 0.705 and values["motion/car_min_fde_err"] == 1.02
    assert math.isnan(values["motion/pedestrian_min_ade_err"])  # an empty class: nan, as nuScenes prints it
    assert (values["occ/iou_n"], values["occ/iou_f"], values["occ/pq_n"]) == (63.7, 40.1, 54.7)
    assert values["planning/L2_1.0s"] == 0.48 and values["planning/L2_3.0s"] == 1.65
    assert values["planning/L2_avg"] == pytest.approx((0.48 + 0.96 + 1.65) / 3)  # UniAD's avg: 1, 2 and 3 s
    assert values["planning/obj_col_avg"] == pytest.approx((0.05 + 0.17 + 0.71) / 3)


def test_a_printed_metrics_dict_without_a_val_line_is_kept_for_tools_test():
    lines = ["Evaluating bboxes of pts_bbox", "{'pts_bbox_NuScenes/amota': 0.3896, 'lanes_iou': 0.297, 'x_err': nan}"]
    ((epoch, values),) = parse_printed(lines)
    assert epoch is None and values["pts_bbox_NuScenes/amota"] == 0.3896 and math.isnan(values["x_err"])


@pytest.mark.parametrize(
    ("text", "values", "failure"),
    [
        ("pts_bbox_NuScenes/amota>=0.35", {"pts_bbox_NuScenes/amota": 0.39}, None),
        ("pts_bbox_NuScenes/amota >= 0.35", {"pts_bbox_NuScenes/amota": 0.3}, "is 0.3, required >= 0.35"),
        ("planning/L2_avg<=1.1", {"planning/L2_avg": 1.03}, None),
        ("planning/L2_avg<=1.0", {"planning/L2_avg": 1.03}, "is 1.03, required <= 1"),
        ("lanes_iou>=0.2", {"lanes_iou": float("nan")}, "is nan, required >= 0.2"),
        ("lanes_iou>=0.2", {"drivable_iou": 0.5}, "the evaluation has no lanes_iou (it has drivable_iou)"),
    ],
)
def test_requirements(text, values, failure):
    got = Requirement.parse(text).failure(values)
    assert got is None if failure is None else failure in got


@pytest.mark.parametrize("text", ["amota>0.3", "amota>=high", "", ">=0.3", "a b>=1"])
def test_malformed_requirements_say_how_to_write_one(text):
    with pytest.raises(ParamError, match="e.g. pts_bbox_NuScenes/amota>=0.35"):
        parse_requirements([text])


def test_direction_of_each_headline_metric():
    assert not lower_is_better("pts_bbox_NuScenes/amota") and not lower_is_better("lanes_iou")
    assert lower_is_better("planning/L2_avg") and lower_is_better("motion/minADE")
    assert lower_is_better("planning/obj_box_col_avg") and lower_is_better("pts_bbox_NuScenes/amotp")


def test_analysis_reports_the_last_evaluation_and_its_history():
    records = reference_records(epochs=2, iters_per_epoch=400)
    first = [r for r in records if r["epoch"] == 1] + [reference_evaluation(1, **{"pts_bbox_NuScenes/amota": 0.2})]
    second = [r for r in records if r["epoch"] == 2] + [reference_evaluation(2)]
    analysis = analyze(first + second, {"config": REFERENCE_CONFIG}, total_epochs=2, iters_per_epoch=400,
                       printed=parse_printed(PRINTED[:-1] + ["Epoch(val) [2][753]"]),
                       requirements=[Requirement.parse("motion/minADE<=0.5")])  # fmt: skip
    assert [e["epoch"] for e in analysis.evaluations] == [1, 2]
    assert analysis.metrics["epoch"] == 2 and analysis.metrics["values"]["pts_bbox_NuScenes/amota"] == 0.3896
    assert analysis.metrics["values"]["planning/L2_1.0s"] == 0.48  # printed, joined to the same evaluation
    (failed,) = [f for f in analysis.findings if f.code == "metric_requirement"]
    assert failed.severity == "error" and "motion/minADE is 0.705, required <= 0.5" in failed.message
    assert analysis.verdict == "unhealthy"


def test_a_finished_stage_must_have_its_final_epoch_evaluated():
    records = reference_records(epochs=2, iters_per_epoch=400) + [reference_evaluation(1)]
    codes = {f.code for f in analyze(records, total_epochs=2, iters_per_epoch=400, expect_evaluation=True).findings}
    assert "not_evaluated" in codes
    off = analyze(records, total_epochs=2, iters_per_epoch=400, expect_evaluation=False)
    assert "not_evaluated" not in {f.code for f in off.findings}
    # A stage still training is not expected to have been evaluated at its end yet.
    running = reference_records(epochs=2, iters_per_epoch=400, stop=(2, 100))
    assert "not_evaluated" not in {f.code for f in analyze(running, total_epochs=2, iters_per_epoch=400,
                                                           expect_evaluation=True).findings}  # fmt: skip
