from __future__ import annotations

import pytest

from uniad.logs import parse_mmcv_train_line
from uniad.runner import ProgressTracker

# Real mmcv 1.x TextLoggerHook lines (UniAD / mmdet runs); the second uses spaces instead of a tab.
LINE_TAB = (
    "2024-03-24 01:22:33,251 - mmdet - INFO - Epoch [19][1000/1969]\tlr: 2.500e-03, eta: 1 day, 9:44:51, "
    "time: 0.991, data_time: 0.026, memory: 10150, loss_cls: 0.2004, loss: 1.0313, grad_norm: 4.9155"
)
LINE_SPACES = (
    "2023-06-01 10:00:01,001 - mmdet - INFO - Epoch [1][10/3517]  lr: 6.933e-05, eta: 2 days, 1:02:03, "
    "time: 2.601, data_time: 0.034, memory: 9810, track.frame_0_loss_cls_0: 1.2400, map.loss_cls: 1.2100, "
    "loss: 105.6700, grad_norm: 52.1000"
)


def test_parses_tab_separated_line_with_comma_in_eta():
    record = parse_mmcv_train_line(LINE_TAB)
    assert record == {
        "mode": "train",
        "epoch": 19,
        "iter": 1000,
        "iters_per_epoch": 1969,
        "lr": 2.5e-3,
        "eta": "1 day, 9:44:51",
        "time": 0.991,
        "data_time": 0.026,
        "memory": 10150.0,
        "loss_cls": 0.2004,
        "loss": 1.0313,
        "grad_norm": 4.9155,
    }


def test_parses_space_separated_line_with_dotted_uniad_keys():
    record = parse_mmcv_train_line(LINE_SPACES)
    assert (record["epoch"], record["iter"], record["iters_per_epoch"]) == (1, 10, 3517)
    assert record["eta"] == "2 days, 1:02:03"
    assert record["track.frame_0_loss_cls_0"] == 1.24
    assert record["map.loss_cls"] == 1.21
    assert record["loss"] == 105.67


@pytest.mark.parametrize(
    "line",
    [
        "2024-03-24 01:22:33,251 - mmdet - INFO - Saving checkpoint at 6 epochs",
        "2024-03-24 01:22:33,251 - mmdet - INFO - Epoch(val) [6][753]\tpts_bbox_NuScenes/amota: 0.3900",
        "",
    ],
)
def test_other_lines_are_not_train_records(line):
    assert parse_mmcv_train_line(line) is None


def test_progress_tracker_fraction_and_eta_from_observed_rate():
    now = [100.0]
    tracker = ProgressTracker("stage1", total_epochs=6, clock=lambda: now[0])
    now[0] = 110.0
    first = tracker.update(LINE_SPACES.replace("[1][10/3517]", "[1][100/1000]"))
    assert first.fraction == pytest.approx(100 / 6000)
    assert first.eta_s is None  # one point gives no rate yet
    now[0] = 170.0  # 60 s for 900 iterations
    second = tracker.update(LINE_SPACES.replace("[1][10/3517]", "[1][1000/1000]"))
    assert second.fraction == pytest.approx(1000 / 6000)
    assert second.eta_s == pytest.approx(5000 * 60 / 900)
    assert second.elapsed_s == pytest.approx(70.0)
    line = second.line()
    assert "[stage1] epoch 1/6 iter 1000/1000" in line and "ETA 0:05:33" in line and "loss 105.6700" in line
    assert tracker.update("not a train line") is None
