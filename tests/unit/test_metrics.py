"""Metrics as UniAD logs and prints them: the val record, the printed tables, and the gate's requirements."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from uniad.errors import ParamError
from uniad.health.analysis import analyze
from uniad.health.reference import REFERENCE_CONFIG, reference_evaluation, reference_records
from uniad.metrics import (
    REFERENCES,
    Requirement,
    lower_is_better,
    out_of_range,
    parse_printed,
    parse_requirements,
    unit,
)

# What UniAD's stage-2 evaluation prints to rank 0's stdout, in its order (nuscenes_e2e_dataset.py evaluate and
# _evaluate_single, nuscenes_eval_motion.py): occupancy, the planning PrettyTable (collision rates as fractions),
# the detection and tracking evaluations, MotionEval's six tables (motion category: standard, motion_map, epa with
# its EPA lines; detection category: the same, the second announced as "EPA" by UniAD's own misprint), the metrics
# dict, then mmcv's val line.
PRINTED = (Path(__file__).parent / "uniad_stage2_printed.txt").read_text().splitlines()


def test_printed_tables_become_metrics_of_the_evaluation_that_follows():
    ((epoch, values),) = parse_printed(PRINTED)
    assert epoch == 20
    assert values["motion/car_min_fde_err"] == 1.02
    assert math.isnan(values["motion/truck_min_ade_err"])  # merged into car in the motion category: nan
    assert (values["occ/iou_n"], values["occ/iou_f"], values["occ/pq_n"], values["occ/rq_f"]) == (
        63.7,
        40.1,
        54.7,
        47.7,
    )
    assert values["planning/L2_1.0s"] == 0.48 and values["planning/L2_3.0s"] == 1.65
    assert values["planning/L2_avg"] == pytest.approx((0.48 + 0.96 + 1.65) / 3)  # UniAD's avg: 1, 2 and 3 s
    assert values["planning/obj_col_avg"] == pytest.approx((0.0005 + 0.0017 + 0.0071) / 3)
    assert values["pts_bbox_NuScenes/amota"] == 0.363 and values["lanes_iou"] == 0.313


def test_the_headline_motion_numbers_are_the_motion_categorys_standard_table_and_all_six_are_kept():
    ((_, values),) = parse_printed(PRINTED)
    # The paper's minADE / minFDE / MR: motion category, standard mode, car (vehicles merged). The last table UniAD
    # prints (detection category, epa mode) says 0.89 for car, which must not win.
    assert (values["motion/minADE"], values["motion/minFDE"], values["motion/MR"]) == (0.705, 1.02, 0.15)
    tables = {
        "motion": 0.705,
        "motion/motion_map": 0.67,
        "motion/epa": 0.74,
        "motion/det": 0.73,
        "motion/det_motion_map": 0.69,
        "motion/det_epa": 0.89,
    }
    assert {prefix: values[f"{prefix}/car_min_ade_err"] for prefix in tables} == tables
    assert values["motion/det/truck_min_ade_err"] == 0.91  # the detection category keeps the classes apart
    assert (values["motion/epa/EPA_car"], values["motion/det_epa/EPA_truck"]) == (0.3482, 0.0747)


def test_a_motion_table_printed_without_unIADs_category_lines_is_the_standard_one():
    start = next(i for i, line in enumerate(PRINTED) if "class names" in line) - 1
    table = PRINTED[start : start + 7]  # rule, header, rule, three rows, rule
    ((epoch, values),) = parse_printed([*table, "Epoch(val) [3][40]"])
    assert epoch == 3 and values["motion/minADE"] == 0.705 and values["motion/pedestrian_miss_rate_err"] == 0.12


def test_collision_rates_are_fractions_end_to_end():
    ((_, values),) = parse_printed(PRINTED)
    assert unit("planning/obj_box_col_avg").startswith("fraction") and unit("occ/iou_n") == "percent"
    # UniAD's published avg collision (0.31 %) is stated in the same unit as what its evaluation prints.
    assert REFERENCES["stage2"]["planning/obj_box_col_avg"] == pytest.approx(values["planning/obj_box_col_avg"])
    assert Requirement.parse("planning/obj_box_col_avg<=0.005").failure(values) is None


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"pts_bbox_NuScenes/amota": 1.776}, "pts_bbox_NuScenes/amota is 1.776, outside its valid range [0, 1]"),
        ({"planning/obj_box_col_avg": 31.0}, "planning/obj_box_col_avg is 31, outside its valid range [0, 1]"),
        ({"occ/iou_n": 163.7}, "occ/iou_n is 163.7, outside its valid range [0, 100] (percent)"),
        ({"lanes_iou": -0.1}, "lanes_iou is -0.1, outside its valid range [0, 1]"),
        ({"motion/minADE": -1.0}, "motion/minADE is -1, outside its valid range [0, inf]"),
    ],
)
def test_values_outside_their_valid_range_are_named(values, problem):
    (found,) = out_of_range(values)
    assert found.startswith(problem)


def test_a_real_printout_is_in_range_and_nan_is_no_value():
    ((_, values),) = parse_printed(PRINTED)
    assert out_of_range(values) == []
    assert out_of_range({"pts_bbox_NuScenes/amota": float("nan"), "motion/epa/EPA_car": -0.2}) == []


def test_the_gate_reports_an_out_of_range_final_metric_as_an_error():
    records = reference_records(epochs=1, iters_per_epoch=200)
    broken = analyze(
        records + [reference_evaluation(1, **{"pts_bbox_NuScenes/amota": 1.776})], total_epochs=1, iters_per_epoch=200
    )
    (finding,) = [f for f in broken.findings if f.code == "metric_out_of_range"]
    assert finding.severity == "error" and "amota is 1.776" in finding.message and broken.verdict == "unhealthy"
    fine = analyze(records + [reference_evaluation(1)], total_epochs=1, iters_per_epoch=200)
    assert "metric_out_of_range" not in {f.code for f in fine.findings}


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
    analysis = analyze(
        first + second,
        {"config": REFERENCE_CONFIG},
        total_epochs=2,
        iters_per_epoch=400,
        printed=parse_printed(PRINTED[:-1] + ["Epoch(val) [2][753]"]),
        requirements=[Requirement.parse("motion/minADE<=0.5")],
    )
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
    assert "not_evaluated" not in {
        f.code for f in analyze(running, total_epochs=2, iters_per_epoch=400, expect_evaluation=True).findings
    }
