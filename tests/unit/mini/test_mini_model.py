"""The mini UniAD trained for real (2 gloo processes, mmcv runner) and what it leaves behind."""

from __future__ import annotations

import json

import torch

from uniad.mini.data import MiniDriveDataset
from uniad.mini.model import MiniUniAD, match_queries


def json_records(work_dir):
    logs = sorted(work_dir.glob("*.log.json"))
    assert len(logs) == 1, logs
    lines = logs[0].read_text().splitlines()
    meta = json.loads(lines[0])
    return meta, [json.loads(line) for line in lines[1:]]


def test_generated_scenes_are_deterministic_and_consistent():
    ds = MiniDriveDataset(num_samples=4, seed=3)
    a, b = ds[1], ds[1]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(ds[0]["img"], ds[1]["img"])
    valid = a["agent_mask"]
    # Constant velocity: the last frame's position plus one step of motion is the first future position.
    step = a["gt_boxes"][2, :, :2] - a["gt_boxes"][1, :, :2]
    assert torch.allclose((a["gt_boxes"][2, :, :2] + step)[valid], a["gt_future_trajs"][valid, 0], atol=1e-5)
    assert a["occ_future"].sum() > 0
    for sample in (ds[i] for i in range(4)):
        lanes = sample["lane_labels"] < 2
        assert all(mask.sum() > 0 for mask in sample["lane_masks"][lanes]), "a lane must be visible on the map grid"


def test_matching_finds_the_optimal_permutation():
    cost = torch.tensor([[[5.0, 1.0, 9.0], [1.0, 5.0, 9.0], [9.0, 9.0, 0.0]]])
    assert match_queries(cost).tolist() == [[1, 0, 2]]


def test_nan_losses_are_logged_as_zero_like_uniad():
    model = MiniUniAD()
    batch = torch.utils.data.default_collate([MiniDriveDataset(num_samples=2)[i] for i in range(2)])
    batch["img"][0, 0, 0, 0, 0] = float("nan")
    losses = model(**batch)
    assert all(torch.isfinite(v).all() for v in losses.values())
