"""Parsers over real captured lines (public issue threads) and the incremental reader."""

from __future__ import annotations

import json
import math

import pytest

from uniad.health.logs import LogReader, iters_per_epoch_of, parse_json_line, parse_text_line, read_log
from uniad.train.progress import ProgressTracker
from uniad.workdir import text_log_of

# mmcv 1.x, tab after the bracket, eta with a comma (mmdetection issue #4090).
MMCV_TAB = (
    "2020-11-11 18:27:52,420 - mmdet - INFO - Epoch [1][2150/29317]\tlr: 2.000e-02, eta: 1 day, 16:24:41, "
    "time: 0.391, data_time: 0.009, memory: 3946, loss_rpn_cls: 0.1059, loss_rpn_bbox: 0.0825, loss_cls: 0.4929, "
    "acc: 90.0684, loss_bbox: 0.3225, loss: 1.0037"
)
# mmcv 1.x, spaces after the bracket, grad_norm (WaterMask issue #3).
MMCV_SPACES = (
    "2024-03-24 01:22:33,251 - mmdet - INFO - Epoch [19][1000/1969]  lr: 2.500e-03, eta: 9:44:51, time: 0.991, "
    "data_time: 0.026, memory: 10150, loss_rpn_cls: 0.0271, loss_rpn_bbox: 0.0321, loss_cls: 0.2004, acc: 92.5938, "
    "loss_bbox: 0.2092, loss_lcf: 0.5625, loss: 1.0313, grad_norm: 4.9155"
)
# mmcv 1.x with dotted stage keys (mmdetection issue #2785); no logger name before the level.
MMCV_DOTTED = (
    "2020-05-21 04:01:24,249 - mmdet - INFO - Epoch [1][15/678]\tlr: 0.00020, eta: 1 day, 16:21:05, time: 1.269, "
    "data_time: 0.011, memory: 9581, loss_rpn_cls: 0.6986, loss_rpn_bbox: 0.2252, s0.loss_cls: 0.5666, "
    "s0.acc: 95.7031, s0.loss_bbox: 0.1050, loss: 3.4410"
)
MMCV_VAL = "2024-01-02 03:04:05,678 - mmdet - INFO - Epoch(val) [6][753]\tpts_bbox_NuScenes/amota: 0.3900, pts_bbox_NuScenes/amotp: 1.3000"
# mmengine: base_lr and lr separated by one space, other fields by two (mmdetection PR #10498).
MMENGINE = (
    "07/04 08:12:50 - mmengine - INFO - Epoch(train)  [1][ 750/7393]  base_lr: 3.7531e-05 lr: 3.7531e-05  "
    "eta: 3 days, 9:40:59  time: 0.5451  data_time: 0.0148  memory: 14765  grad_norm: 45.8713  loss: 37.4994  "
    "loss_cls: 0.5150  loss_bbox: 0.9276  d0.loss_cls: 0.5015"
)
# mmengine with three spaces and six decimals (mmpose PR #2501).
MMENGINE_POSE = (
    "2023/07/22 14:35:28 - mmengine - INFO - Epoch(train)   [1][ 350/4682]  lr: 4.373121e-05  eta: 2 days, 12:29:12  "
    "time: 0.215576  data_time: 0.070412  memory: 2769  loss: 0.002122  loss_kpt: 0.002122  acc_pose: 0.120076"
)


def test_mmcv_tab_line():
    r = parse_text_line(MMCV_TAB)
    assert (r["mode"], r["epoch"], r["iter"], r["iters_per_epoch"]) == ("train", 1, 2150, 29317)
    assert r["eta"] == "1 day, 16:24:41"
    assert (r["lr"], r["loss"], r["loss_cls"], r["acc"]) == (0.02, 1.0037, 0.4929, 90.0684)
    assert "grad_norm" not in r


def test_mmcv_spaces_line_with_grad_norm():
    r = parse_text_line(MMCV_SPACES)
    assert (r["epoch"], r["iter"], r["iters_per_epoch"]) == (19, 1000, 1969)
    assert (r["eta"], r["loss"], r["grad_norm"], r["loss_lcf"]) == ("9:44:51", 1.0313, 4.9155, 0.5625)


def test_mmcv_dotted_keys():
    r = parse_text_line(MMCV_DOTTED)
    assert (r["s0.loss_cls"], r["s0.acc"], r["loss"], r["eta"]) == (0.5666, 95.7031, 3.441, "1 day, 16:21:05")


def test_mmcv_val_line():
    r = parse_text_line(MMCV_VAL)
    assert r == {
        "mode": "val",
        "epoch": 6,
        "iter": 753,
        "pts_bbox_NuScenes/amota": 0.39,
        "pts_bbox_NuScenes/amotp": 1.3,
    }


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            MMENGINE,
            {
                "epoch": 1,
                "iter": 750,
                "iters_per_epoch": 7393,
                "base_lr": 3.7531e-05,
                "lr": 3.7531e-05,
                "eta": "3 days, 9:40:59",
                "grad_norm": 45.8713,
                "loss": 37.4994,
                "d0.loss_cls": 0.5015,
            },
        ),
        (
            MMENGINE_POSE,
            {
                "epoch": 1,
                "iter": 350,
                "iters_per_epoch": 4682,
                "lr": 4.373121e-05,
                "eta": "2 days, 12:29:12",
                "loss": 0.002122,
                "acc_pose": 0.120076,
            },
        ),
    ],
)
def test_mmengine_lines(line, expected):
    r = parse_text_line(line)
    assert r["mode"] == "train"
    for key, value in expected.items():
        assert r[key] == value, key


@pytest.mark.parametrize(
    "line",
    ["2024-03-24 01:22:33,251 - mmdet - INFO - Saving checkpoint at 6 epochs", "Epoch is a word", ""],
)
def test_other_lines_are_not_records(line):
    assert parse_text_line(line) is None


def test_json_lines_keep_nan_and_infinity():
    r = parse_json_line('{"mode": "train", "epoch": 2, "iter": 10, "lr": 0.0002, "loss": NaN, "grad_norm": Infinity}')
    assert math.isnan(r["loss"]) and r["grad_norm"] == math.inf and r["epoch"] == 2
    assert parse_json_line('{"env_info": "x", "config": "y"}') is None
    assert parse_json_line('{"mode": "train", "epo') is None


def write_json_log(path, records, meta=None):
    lines = [json.dumps(meta or {"env_info": "cpu", "config": "lr_config = dict()", "seed": 0})]
    lines += [json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n")


def test_reader_is_incremental_and_waits_for_a_complete_last_line(tmp_path):
    path = tmp_path / "20240101_000000.log.json"
    write_json_log(path, [{"mode": "train", "epoch": 1, "iter": i, "loss": 1.0} for i in (10, 20)])
    reader = LogReader(path)
    assert [r["iter"] for r in reader.poll()] == [10, 20]
    assert reader.meta["seed"] == 0
    offset = reader.offset
    with open(path, "a") as handle:
        handle.write('{"mode": "train", "epoch": 1, "iter": 30, "lo')
    assert reader.poll() == []  # half a line: wait for the rest
    with open(path, "a") as handle:
        handle.write('ss": 0.5}\n')
    assert [r["iter"] for r in reader.poll()] == [30]
    assert reader.offset > offset
    assert reader.poll() == []


def test_truncated_last_line_is_skipped_on_a_final_read(tmp_path):
    path = tmp_path / "x.log.json"
    write_json_log(path, [{"mode": "train", "epoch": 1, "iter": 10, "loss": 1.0}])
    with open(path, "a") as handle:
        handle.write('{"mode": "train", "epoch": 1, "iter": 20, "lo')
    records, meta = read_log(path)
    assert [r["iter"] for r in records] == [10] and meta is not None


def test_text_log_and_epoch_length_from_sibling(tmp_path):
    text = tmp_path / "20240101_000000.log"
    text.write_text("config dump\n" + MMCV_TAB + "\n" + MMCV_VAL + "\n")
    records, meta = read_log(text)
    assert [r["mode"] for r in records] == ["train", "val"] and meta is None
    assert iters_per_epoch_of(text_log_of(tmp_path / "20240101_000000.log.json")) == 29317
    assert iters_per_epoch_of(text_log_of(tmp_path / "missing.log.json")) is None


def test_progress_tracker_stage_and_pipeline_eta():
    now = [100.0]
    tracker = ProgressTracker("stage1", total_epochs=6, clock=lambda: now[0], later_epochs=20)
    now[0] = 110.0
    first = tracker.update(MMCV_SPACES.replace("[19][1000/1969]", "[1][100/1000]"))
    assert first.fraction == pytest.approx(100 / 6000) and first.eta_s is None
    now[0] = 170.0  # 60 s for 900 iterations
    second = tracker.update(MMCV_SPACES.replace("[19][1000/1969]", "[1][1000/1000]"))
    assert second.eta_s == pytest.approx(5000 * 60 / 900)
    assert second.pipeline_eta_s == pytest.approx((5000 + 20 * 1000) * 60 / 900)
    line = second.line()
    assert "[stage1] epoch 1/6 iter 1000/1000" in line and "ETA 0:05:33" in line and "pipeline ETA 0:27:46" in line
    assert tracker.update("not a train line") is None
