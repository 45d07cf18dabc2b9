"""Procedurally generated driving scenes for the mini UniAD.

Every sample is a short queue of bird's-eye "camera" frames of one scene, rendered in the current ego frame on
[-1, 1]^2, with everything a UniAD-style model is supervised on: agent classes and boxes per frame (tracking),
their past and future positions (motion), lane instances and the drivable area (map), future occupancy (occ) and
the ego's own future path (planning). Scenes are deterministic functions of (seed, index), so every rank and every
retry sees the same data without storing any.

Image channels: 0 agents (intensity by class), 1 map (lanes by class over a faint drivable area), 2 ego marker.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("car", "truck", "pedestrian")
MAP_CLASSES = ("divider", "boundary")
_AGENT_SIZE = {0: (0.14, 0.22), 1: (0.2, 0.34), 2: (0.08, 0.08)}
_AGENT_INTENSITY = (0.45, 0.75, 1.0)
_LANE_INTENSITY = (0.6, 1.0)


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    centers = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    return np.meshgrid(centers, centers, indexing="xy")


def _box_mask(xs: np.ndarray, ys: np.ndarray, box: np.ndarray) -> np.ndarray:
    cx, cy, w, h = box
    return (np.abs(xs - cx) <= w / 2) & (np.abs(ys - cy) <= h / 2)


class MiniDriveDataset(Dataset):
    """Generated scenes; ``__getitem__`` returns a dict of tensors that the default collate can stack."""

    CLASSES = CLASSES
    MAP_CLASSES = MAP_CLASSES

    def __init__(
        self,
        num_samples: int = 160,
        img_size: int = 32,
        queue_length: int = 3,
        max_agents: int = 4,
        max_lanes: int = 2,
        past_steps: int = 2,
        future_steps: int = 4,
        occ_steps: int = 2,
        seg_size: int = 16,
        occ_size: int = 8,
        noise: float = 0.05,
        seed: int = 0,
    ) -> None:
        if num_samples < 1 or queue_length < 1 or max_agents < 2 or max_lanes < 1:
            raise ValueError(
                "MiniDriveDataset needs num_samples >= 1, queue_length >= 1, max_agents >= 2, max_lanes >= 1; "
                "e.g. data=dict(train=dict(num_samples=160, queue_length=3, max_agents=4, max_lanes=2))"
            )
        self.num_samples = num_samples
        self.img_size = img_size
        self.queue_length = queue_length
        self.max_agents = max_agents
        self.max_lanes = max_lanes
        self.past_steps = past_steps
        self.future_steps = future_steps
        self.occ_steps = occ_steps
        self.seg_size = seg_size
        self.occ_size = occ_size
        self.noise = noise
        self.seed = seed
        # mmdet's aspect-ratio groups, which UniAD's group sampler shuffles within: one group here.
        self.flag = np.zeros(num_samples, dtype=np.uint8)
        self._img_grid = _grid(img_size)
        self._seg_grid = _grid(seg_size)
        self._occ_grid = _grid(occ_size)

    def __len__(self) -> int:
        return self.num_samples

    def evaluate(self, results: list[dict], logger=None, **_eval_kwargs) -> dict[str, float]:
        """Metrics of the model's predictions on these scenes, as UniAD's dataset ``evaluate``: tracking and map
        are returned (and so logged as the val record); motion, occupancy and planning tables are printed."""
        from .evaluation import evaluate

        return evaluate(self, results)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, index))
        a, q = self.max_agents, self.queue_length

        # Agents: constant velocity, so the past is visible in the frame queue and the future is predictable.
        n_agents = int(rng.integers(2, a + 1))
        labels = np.full(a, len(CLASSES), dtype=np.int64)
        labels[:n_agents] = rng.integers(0, len(CLASSES), n_agents)
        agent_mask = np.arange(a) < n_agents
        # One agent per BEV sector (quadrants for 4 agents), jittered inside it: agents never overlap and a track
        # query can settle on a sector early, as anchor-based trackers do.
        sector = rng.permutation(a)
        angle = (sector + rng.uniform(0.2, 0.8, a)) * (2 * np.pi / a)
        radius = rng.uniform(0.3, 0.65, a)
        pos = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=-1).astype(np.float32)
        vel = rng.uniform(-0.09, 0.09, (a, 2)).astype(np.float32)
        sizes = np.array([_AGENT_SIZE.get(int(c), (0.0, 0.0)) for c in labels], dtype=np.float32)
        steps_back = np.arange(q - 1, -1, -1, dtype=np.float32)  # frame f is (q-1-f) steps before now
        frame_pos = pos[None] - steps_back[:, None, None] * vel[None]  # (q, a, 2)
        boxes = np.concatenate([frame_pos, np.broadcast_to(sizes, (q, a, 2))], axis=-1)
        past = np.stack([frame_pos - (k + 1) * vel[None] for k in range(self.past_steps)], axis=2)  # (q, a, past, 2)
        future = np.stack([pos + (k + 1) * vel for k in range(self.future_steps)], axis=1)  # (a, T, 2)

        # Map: straight lanes, vertical or horizontal, sorted by offset; drivable area is a band around the ego.
        n_lanes = int(rng.integers(1, self.max_lanes + 1))
        vertical = bool(rng.integers(0, 2))
        offsets = np.sort(rng.uniform(-0.8, 0.8, self.max_lanes)).astype(np.float32)
        lane_labels = np.full(self.max_lanes, len(MAP_CLASSES), dtype=np.int64)
        lane_labels[:n_lanes] = rng.integers(0, len(MAP_CLASSES), n_lanes)
        thickness = 0.16  # at least one pixel wide on the 16-pixel map grid (spacing 0.125)
        lane_boxes = np.zeros((self.max_lanes, 4), dtype=np.float32)
        for i in range(n_lanes):
            lane_boxes[i] = (offsets[i], 0.0, thickness, 2.0) if vertical else (0.0, offsets[i], 2.0, thickness)
        road_half = float(rng.uniform(0.3, 0.7))

        # Ego: starts at the origin heading along the lanes at a random speed.
        ego_speed = float(rng.uniform(0.03, 0.1))
        ego_dir = np.array([0.0, 1.0] if vertical else [1.0, 0.0], dtype=np.float32)
        ego_frames = -steps_back[:, None] * ego_speed * ego_dir[None]  # (q, 2)
        ego_future = np.stack([(k + 1) * ego_speed * ego_dir for k in range(self.future_steps)]).astype(np.float32)

        xs, ys = self._img_grid
        imgs = np.zeros((q, 3, self.img_size, self.img_size), dtype=np.float32)
        across = xs if vertical else ys
        for f in range(q):
            for i in range(n_agents):
                imgs[f, 0][_box_mask(xs, ys, boxes[f, i])] = _AGENT_INTENSITY[labels[i]]
            imgs[f, 1][np.abs(across) <= road_half] = 0.2
            for i in range(n_lanes):
                imgs[f, 1][_box_mask(xs, ys, lane_boxes[i])] = _LANE_INTENSITY[lane_labels[i]]
            ego_box = np.array([*ego_frames[f], 0.12, 0.12], dtype=np.float32)
            imgs[f, 2][_box_mask(xs, ys, ego_box)] = 1.0
        imgs += rng.normal(0.0, self.noise, imgs.shape).astype(np.float32)

        sx, sy = self._seg_grid
        lane_masks = np.stack([_box_mask(sx, sy, lane_boxes[i]) for i in range(self.max_lanes)]).astype(np.float32)
        lane_masks[n_lanes:] = 0.0
        stuff_mask = (np.abs(sx if vertical else sy) <= road_half).astype(np.float32)

        ox, oy = self._occ_grid
        occ = np.zeros((self.occ_steps, self.occ_size, self.occ_size), dtype=np.float32)
        for t in range(self.occ_steps):
            for i in range(n_agents):
                occ[t][_box_mask(ox, oy, np.array([*future[i, t], *sizes[i]]))] = 1.0

        return {
            "img": torch.from_numpy(imgs),
            "gt_labels": torch.from_numpy(labels),
            "gt_boxes": torch.from_numpy(boxes.astype(np.float32)),
            "gt_past_trajs": torch.from_numpy(past.astype(np.float32)),
            "gt_future_trajs": torch.from_numpy(future.astype(np.float32)),
            "agent_mask": torch.from_numpy(agent_mask),
            "lane_labels": torch.from_numpy(lane_labels),
            "lane_boxes": torch.from_numpy(lane_boxes),
            "lane_masks": torch.from_numpy(lane_masks),
            "stuff_mask": torch.from_numpy(stuff_mask),
            "occ_future": torch.from_numpy(occ),
            "ego_future": torch.from_numpy(ego_future),
        }
