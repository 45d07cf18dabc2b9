"""UniAD-shaped training logs with the reference run's curve, for tests, benchmarks and trying the analysis.

The curve interpolates the reference run's milestones (../shared/UNIAD.md: total loss 105.67 at epoch 1 iter 10,
81.68 at iter 100, 66.16 at iter 610, 55.46 at the end of epoch 1, ~48 in epoch 4), components decay from their
first to their latest reference values, grad_norm settles at 50-60, and lr follows mmcv's cosine schedule with
linear warmup exactly as the config in the meta line says. Everything is seeded and deterministic.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from .schedule import ScheduleConfig

REFERENCE_CONFIG = """optimizer = dict(
    type='AdamW',
    lr=0.0002,
    paramwise_cfg=dict(custom_keys=dict(img_backbone=dict(lr_mult=0.1))),
    weight_decay=0.01)
optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))
lr_config = dict(
    policy='CosineAnnealing',
    warmup='linear',
    warmup_iters=500,
    warmup_ratio=0.3333333333333333,
    min_lr_ratio=0.001)
runner = dict(type='EpochBasedRunner', max_epochs=6)
loss_cfg = dict(type='ClipMatcher', loss_past_traj_weight=0.0)
log_config = dict(interval=10, hooks=[dict(type='TextLoggerHook')])
"""


def reference_config(epochs: int = 6) -> str:
    """The reference run's config text (as mmcv dumps it into the log's meta line) for a stage of ``epochs``."""
    return REFERENCE_CONFIG.replace("max_epochs=6", f"max_epochs={epochs}")


# (global iteration, total loss) of the reference run, 3517 iterations per epoch.
_ANCHORS = [
    (10, 105.67),
    (100, 81.68),
    (610, 66.16),
    (3510, 55.46),
    (3527, 56.70),
    (7044, 53.25),
    (10561, 50.0),
    (11091, 48.0),
    (21102, 45.0),
    (70340, 38.0),
]
# first -> latest of each component family, from the reference run's notes.
_COMPONENTS = {
    "loss_cls": (1.24, 0.68),
    "loss_bbox": (2.35, 0.9),
    "map.loss_cls": (1.21, 0.68),
    "map.loss_bbox": (1.69, 0.65),
    "map.loss_iou": (2.03, 1.45),
    "map.loss_mask_things": (1.86, 1.58),
    "map.loss_mask_stuff": (0.06, 0.03),
}


def reference_loss(global_iter: float) -> float:
    for (x0, y0), (x1, y1) in zip(_ANCHORS, _ANCHORS[1:]):
        if global_iter <= x1:
            return y0 + (y1 - y0) * (max(global_iter, x0) - x0) / (x1 - x0)
    return _ANCHORS[-1][1]


def component_keys(frames: int = 3, layers: int = 6, map_layers: int = 5) -> list[str]:
    keys = []
    for f in range(frames):
        for layer in range(layers):
            keys += [
                f"track.frame_{f}_loss_cls_{layer}",
                f"track.frame_{f}_loss_bbox_{layer}",
                f"track.frame_{f}_loss_past_trajs_{layer}",
            ]
    keys += ["map.loss_cls", "map.loss_bbox", "map.loss_iou", "map.loss_mask_things", "map.loss_mask_stuff"]
    for d in range(map_layers):
        keys += [
            f"map.d{d}.loss_cls",
            f"map.d{d}.loss_bbox",
            f"map.d{d}.loss_iou",
            f"map.d{d}.loss_mask_things",
            f"map.d{d}.loss_mask_stuff",
        ]
    return keys


def _family(key: str) -> str:
    if key.startswith("track."):
        return "loss_cls" if "loss_cls" in key else "loss_bbox"
    return "map." + key.rsplit(".", 1)[-1]


def reference_records(
    epochs: int = 6,
    iters_per_epoch: int = 3517,
    interval: int = 10,
    stop: tuple[int, int] | None = None,
    seed: int = 0,
    map_layers: int = 5,
) -> list[dict]:
    """Train records of the reference run (until ``stop`` = (epoch, iter) when given), 100+ keys each."""
    rng = random.Random(seed)
    schedule = ScheduleConfig.from_text(reference_config(epochs))
    keys = component_keys(map_layers=map_layers)
    end_loss = reference_loss(_ANCHORS[-1][0])
    records = []
    for epoch in range(1, epochs + 1):
        for it in range(interval, iters_per_epoch + 1, interval):
            if stop is not None and (epoch, it) > stop:
                return records
            g = (epoch - 1) * iters_per_epoch + it
            total = reference_loss(g) * (1 + rng.gauss(0, 0.01))
            shape = (reference_loss(g) - end_loss) / (_ANCHORS[0][1] - end_loss)
            record = {
                "mode": "train",
                "epoch": epoch,
                "iter": it,
                "lr": round(schedule.expected_lr(epoch, it, iters_per_epoch), 5),
                "memory": 49817,
                "data_time": round(0.03 + rng.random() * 0.01, 5),
            }
            for key in keys:
                if "past_trajs" in key:
                    record[key] = 0.0
                    continue
                first, last = _COMPONENTS[_family(key)]
                record[key] = round((last + (first - last) * shape) * (1 + rng.gauss(0, 0.02)), 5)
            record["loss"] = round(total, 5)
            record["grad_norm"] = round(55 + 25 * math.exp(-g / 400) + rng.gauss(0, 3), 5)
            record["time"] = round(2.6 + rng.gauss(0, 0.05), 5)
            records.append(record)
    return records


def reference_evaluation(epoch: int, iters: int = 753, **values: float) -> dict:
    """A val record as mmcv logs UniAD's stage-1 evaluation: the published AMOTA and lanes IoU (issue #67), and a
    class-level ``nan`` as nuScenes evaluation has; ``values`` adds or overrides metrics."""
    record = {
        "mode": "val",
        "epoch": epoch,
        "iter": iters,
        "lr": 1e-4,
        "pts_bbox_NuScenes/amota": 0.3896,
        "lanes_iou": 0.297,
        "pts_bbox_NuScenes/traffic_cone_orient_err": float("nan"),
    }
    record.update(values)
    return record


def write_json_log(path: str | Path, records: list[dict], config: str = REFERENCE_CONFIG) -> Path:
    """An mmcv-style ``*.log.json``: a meta line, then one record per line."""
    path = Path(path)
    meta = {"env_info": "synthetic", "config": config, "seed": 0, "exp_name": "full_track_map.py"}
    with open(path, "w") as handle:
        handle.write(json.dumps(meta) + "\n")
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return path
