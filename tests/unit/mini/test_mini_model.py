"""The mini UniAD's parts: generated scenes, matching, UniAD's sampler, and UniAD's training contract."""

from __future__ import annotations

import subprocess

import numpy as np
import torch

from support import PYTHON
from uniad.mini.data import MiniDriveDataset
from uniad.mini.model import MiniUniAD, match_queries
from uniad.mini.sampler import DistributedGroupSampler
from uniad.mini.scaffold import init_mini_root
from uniad.vocabulary import STAGE1_CONFIG


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


def test_group_sampler_gives_each_rank_a_contiguous_block_that_depends_on_the_world_size():
    dataset = MiniDriveDataset(num_samples=10)

    def ranks(world: int, epoch: int = 0) -> list[list[int]]:
        samplers = [
            DistributedGroupSampler(dataset, samples_per_gpu=2, num_replicas=world, rank=r) for r in range(world)
        ]
        for sampler in samplers:
            sampler.set_epoch(epoch)
        return [list(sampler) for sampler in samplers]

    two = ranks(2)
    assert [len(r) for r in two] == [6, 6]  # 10 samples padded to a multiple of 2 x 2: 12
    assert set(two[0]) | set(two[1]) == set(range(10))
    assert ranks(2) == two and ranks(2, epoch=1) != two  # deterministic per epoch, reshuffled across epochs
    # The first 2 batches of rank 0 at world size 2 are not what ranks 0 and 1 saw first at world size 4: a
    # mid-epoch position cannot be carried across a world-size change by rescaling the iteration count.
    four = ranks(4)
    assert two[0][:4] != four[0][:2] + four[1][:2]


def test_the_training_api_asserts_total_epochs_like_uniads(tmp_path):
    """UniAD's mmdet_train.py: assert cfg.total_epochs == cfg.runner.max_epochs. Setting only one of them dies."""
    root = init_mini_root(tmp_path / "root")
    argv = [PYTHON, "tools/train.py", STAGE1_CONFIG, "--work-dir", str(tmp_path / "w"), "--cfg-options"]
    done = subprocess.run([*argv, "runner.max_epochs=2"], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "assert cfg.total_epochs == cfg.runner.max_epochs" in done.stderr


def _tracks(gt: dict, noise: float, extra: int, rng) -> dict:
    """Predictions of a tracker that reports every agent present (with ``noise`` on its position) and ``extra``
    false tracks per frame, scored above the true ones."""
    frames, agents = gt["gt_boxes"].shape[:2]
    boxes = np.concatenate(
        [gt["gt_boxes"] + rng.normal(0, noise, gt["gt_boxes"].shape), rng.uniform(2, 3, (frames, extra, 4))], axis=1
    )
    probs = np.zeros((frames, agents + extra, 2))
    probs[:, :agents, 0], probs[:, agents:, 0] = np.where(gt["agent_mask"], 0.9, 0.0), 0.95
    probs[..., 1] = 1 - probs[..., 0]
    return {"track_boxes": boxes, "track_probs": probs}


def test_amota_is_at_most_one_and_one_only_for_a_perfect_tracker():
    """nuScenes' MOTAR at recall r clips the true positives to r * P: a tracker that already matched every agent at
    a low recall level scores 1 there, never more (the mini once reported AMOTA 1.776)."""
    from uniad.mini.evaluation import _tracking

    rng = np.random.default_rng(0)
    ground_truth = []
    for _ in range(6):
        boxes = rng.uniform(-1, 1, (3, 4, 4))
        boxes[..., 2:] = 0.1
        ground_truth.append({"gt_boxes": boxes, "agent_mask": np.array([True, True, True, False])})
    perfect = _tracking(None, [_tracks(gt, 0.0, 0, rng) for gt in ground_truth], ground_truth)
    assert perfect["pts_bbox_NuScenes/amota"] == 1.0 and perfect["pts_bbox_NuScenes/recall"] == 1.0
    noisy = _tracking(None, [_tracks(gt, 0.05, 2, rng) for gt in ground_truth], ground_truth)
    assert 0.0 <= noisy["pts_bbox_NuScenes/amota"] < 1.0
