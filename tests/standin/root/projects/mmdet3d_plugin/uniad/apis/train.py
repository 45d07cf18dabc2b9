"""The contract stand-in's custom_train_model: what UniAD's mmdet_train.py and mmcv 1.x's EpochBasedRunner do as the
pipeline sees them, without a model.

- UniAD's training API contract: ``total_epochs == runner.max_epochs``; ``load_from`` must load (a stage-1
  checkpoint in stage 2 reports the three stage-2 heads as missing, as mmcv does); ``resume_from`` continues after
  the checkpoint's epoch; UniAD's group sampler pads the samples to a multiple of the world size.
- mmcv's hooks: TextLoggerHook's text and json logs on rank 0 (meta line, a record every ``log_config.interval``
  iterations with UniAD's loss keys, lr by CosineAnnealing with linear warmup, grad_norm), CheckpointHook's
  ``epoch_N.pth`` and the ``latest.pth`` symlink in torch's format, the eval hook at ``evaluation.interval`` and after
  the final epoch, printing UniAD's evaluation output on rank 0 before its ``Epoch(val)`` line.
- Every rank records what it was given (``<work_dir>/standin_ranks/rank<R>.json``): rank, world size, its GPU,
  CUDA_VISIBLE_DEVICES, its environment and interpreter.

The losses follow a fixed healthy curve: nothing is learned here (the mini profile is what learns).
"""

import collections
import datetime
import json
import logging
import math
import os
import os.path as osp
import sys
import time

import torch
import torch.distributed as dist
from mmcv.runner import get_dist_info

STAGE1_KEYS = [
    f"track.frame_{f}_loss_{k}_{layer}" for f in range(3) for layer in range(6) for k in ("cls", "bbox", "past_trajs")
] + ["map.loss_cls", "map.loss_bbox", "map.loss_iou", "map.loss_mask_things", "map.loss_mask_stuff"]
STAGE2_KEYS = STAGE1_KEYS + [
    "motion.loss_traj",
    "motion.l_class",
    "motion.l_reg",
    "motion.min_ade",
    "motion.min_fde",
    "motion.mr",
    "occ.loss_dice",
    "occ.loss_mask",
    "planning.loss_ade",
    "planning.loss_collision_0",
    "planning.loss_collision_1",
]
PREFIXES = (
    "img_backbone.",
    "img_neck.",
    "pts_bbox_head.",
    "query_embedding.",
    "reference_points.",
    "query_interact.",
    "memory_bank.",
    "seg_head.",
)
E2E_PREFIXES = ("motion_head.", "occ_head.", "planning_head.")


def load_checkpoint(path):
    if not osp.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    return torch.load(path, map_location="cpu")


def _stage2(cfg):
    return "motion_head" in cfg.model


def _state_dict(cfg, epoch):
    state = collections.OrderedDict()
    for prefix in PREFIXES + (E2E_PREFIXES if _stage2(cfg) else ()):
        state[prefix + "weight"] = torch.full((4, 4), 0.01 * epoch)
        state[prefix + "bias"] = torch.full((4,), 0.0)
    return state


def _lr(cfg, epoch, inner, iters):
    """mmcv's CosineAnnealing by epoch with linear warmup by iteration."""
    base, lr_config = cfg.optimizer.lr, cfg.lr_config
    target = base * lr_config.min_lr_ratio
    regular = target + 0.5 * (base - target) * (1 + math.cos(math.pi * (epoch - 1) / cfg.runner.max_epochs))
    step = (epoch - 1) * iters + inner - 1
    if step < lr_config.warmup_iters:
        regular *= 1 - (1 - step / lr_config.warmup_iters) * (1 - lr_config.warmup_ratio)
    return regular


def _losses(cfg, progress):
    keys = STAGE2_KEYS if _stage2(cfg) else STAGE1_KEYS
    losses = collections.OrderedDict()
    for i, key in enumerate(keys):
        if "past_trajs" in key and cfg.model.get("loss_past_traj_weight", 1.0) == 0.0:
            losses[key] = 0.0  # off in stage 1, as in UniAD
            continue
        start = 0.4 + 0.05 * (i % 7)
        losses[key] = round(start * (0.55 + 0.45 * math.exp(-3.0 * progress)), 5)
    losses["loss"] = round(sum(v for k, v in losses.items() if "loss" in k), 5)
    return losses


def _log(logger, json_log, record, text):
    logger.info(text)
    with open(json_log, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _table(header, rows, title=None):
    widths = [max(len(str(c)) for c in column) + 2 for column in zip(header, *rows)]
    rule = "+" + "+".join("-" * w for w in widths) + "+"
    lines = [rule]
    if title:
        lines += ["|" + title.center(sum(widths) + len(widths) - 1) + "|", rule]
    lines += ["|" + "|".join(str(c).center(w) for c, w in zip(header, widths)) + "|", rule]
    lines += ["|" + "|".join(str(c).center(w) for c, w in zip(row, widths)) + "|" for row in rows]
    return "\n".join(lines + [rule])


def _motion_table(ade):
    rows = [
        ["car", f"{ade:.4f}", "%.4f" % (ade * 1.45), "%.4f" % (ade * 0.21)],
        ["truck", "nan", "nan", "nan"],
        ["pedestrian", "%.4f" % (ade * 1.1), "%.4f" % (ade * 1.5), "%.4f" % (ade * 0.17)],
    ]
    return _table(["class names", "min_ade_err", "min_fde_err", "miss_rate_err"], rows)


def evaluate(cfg, epoch):
    """Print what UniAD's NuScenesE2EDataset.evaluate prints on rank 0, in its order, and return its metrics."""
    out = []
    if _stage2(cfg):
        out += [
            "Occ-flow Val Results:",
            "iou",
            f"{60 + 0.2 * epoch:.1f} & {38 + 0.1 * epoch:.1f}",
            "pq",
            f"{52 + 0.2 * epoch:.1f} & {32.0:.1f}",
            "num occ evaluated:5119",
            "ratio occ evaluated: 84.2%",
        ]
        horizons = ["0.5s", "1.0s", "1.5s", "2.0s", "2.5s", "3.0s"]
        # PlanningMetric: collision rates as fractions of the planned trajectories.
        rows = [
            ["obj_col"] + ["%.4f" % (0.0006 * t) for t in range(6)],
            ["obj_box_col"] + ["%.4f" % (0.0008 * t) for t in range(6)],
            ["L2"] + ["%.4f" % ((0.2 + 0.28 * t) * (1.2 - 0.005 * epoch)) for t in range(6)],
        ]
        out.append(_table(["metrics"] + horizons, rows, title="uniad's definition planning metrics"))
    out += [
        "Evaluating bboxes of pts_bbox",
        "mAP: 0.3800",
        "NDS: 0.4940",
        "### Final results ###",
        "AMOTA\t%.3f" % (0.30 + 0.01 * epoch),
    ]
    if _stage2(cfg):
        ade = 0.85 - 0.005 * epoch
        for category, modes in (
            ("motion", ("standard", "mAP-minFDE", "EPA")),
            ("detection", ("standard", "EPA", "EPA")),
        ):
            out.append("-" * 50)
            out.append(
                "Evaluate on motion category, merge class for vehicles and pedestrians..."
                if category == "motion"
                else "Evaluate on detection category..."
            )
            for i, mode in enumerate(modes):
                out.append(f"evaluate {mode} motion metrics...")
                if i == 2:
                    out += ["23870 7125 58317", "EPA  car %.4f" % (0.30 + 0.002 * epoch), "EPA  pedestrian 0.3321"]
                out.append(_motion_table(ade * (1 + 0.05 * i + (0.1 if category == "detection" else 0.0))))
    metrics = collections.OrderedDict(
        [
            ("pts_bbox_NuScenes/NDS", 0.494),
            ("pts_bbox_NuScenes/mAP", 0.38),
            ("pts_bbox_NuScenes/amota", round(0.30 + 0.01 * epoch, 4)),
            ("pts_bbox_NuScenes/amotp", 1.33),
            ("pts_bbox_NuScenes/recall", 0.47),
            ("drivable_iou", 0.69),
            ("lanes_iou", round(0.28 + 0.002 * epoch, 4)),
            ("divider_iou", 0.27),
            ("crossing_iou", 0.15),
            ("contour_iou", 0.28),
            ("pts_bbox_NuScenes/traffic_cone_orient_err", float("nan")),  # nuScenes has no orientation for cones
        ]
    )
    out.append(repr(dict(metrics)))
    print("\n".join(out), flush=True)
    return metrics


def _record_rank(cfg, rank, world):
    folder = osp.join(cfg.work_dir, "standin_ranks")
    os.makedirs(folder, exist_ok=True)
    seen = {
        "rank": rank,
        "world_size": world,
        "device": torch.cuda.current_device(),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "environ": dict(os.environ),
    }
    with open(osp.join(folder, f"rank{rank}.json"), "w") as handle:
        json.dump(seen, handle, indent=1)


def custom_train_model(model, datasets, cfg, distributed=False, validate=False, timestamp=None, meta=None):
    assert cfg.total_epochs == cfg.runner.max_epochs  # UniAD's mmdet_train.py
    rank, world = get_dist_info()
    _record_rank(cfg, rank, world)
    samples = len(datasets[0])
    per_rank = int(math.ceil(samples / float(cfg.data.samples_per_gpu * world)))  # padded to the world size
    iters = per_rank
    logger = logging.getLogger("mmdet")
    json_log = osp.join(cfg.work_dir, f"{timestamp}.log.json")
    if rank == 0:
        handler = logging.FileHandler(osp.join(cfg.work_dir, f"{timestamp}.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s - %(name)s - %(levelname)s - %(message)s"))
        logger.addHandler(handler)
        logger.addHandler(logging.StreamHandler(sys.stdout))
        logger.setLevel(logging.INFO)
        with open(json_log, "w") as handle:
            handle.write(json.dumps(meta) + "\n")
    start_epoch = 1
    if cfg.get("resume_from"):
        checkpoint = load_checkpoint(cfg.resume_from)
        start_epoch = checkpoint["meta"]["epoch"] + 1
        logger.info("resumed epoch %d, iter %d", checkpoint["meta"]["epoch"], checkpoint["meta"]["iter"])
    elif cfg.get("load_from"):
        loaded = load_checkpoint(cfg.load_from)["state_dict"]
        logger.info("load checkpoint from local path: %s", cfg.load_from)
        missing = [p for p in E2E_PREFIXES if _stage2(cfg) and not any(k.startswith(p) for k in loaded)]
        if missing:
            logger.warning(
                "The model and loaded state dict do not match exactly\n\nmissing keys in source state_dict: "
                + ", ".join(p + "weight" for p in missing)
            )
    interval, total = cfg.log_config.interval, cfg.runner.max_epochs
    every = cfg.evaluation.interval if validate else None
    iter_time = float(os.environ.get("UNIAD_STANDIN_ITER_TIME", "0.02"))
    for epoch in range(start_epoch, total + 1):
        for inner in range(1, iters + 1):
            time.sleep(iter_time)
            if rank == 0 and inner % interval == 0:
                progress = ((epoch - 1) * iters + inner) / float(total * iters)
                losses = _losses(cfg, progress)
                lr = _lr(cfg, epoch, inner, iters)
                grad_norm = round(50 + 4 * math.sin(inner + epoch), 5)
                record = collections.OrderedDict(
                    [
                        ("mode", "train"),
                        ("epoch", epoch),
                        ("iter", inner),
                        ("lr", round(lr, 10)),
                        ("memory", 17408),
                        ("data_time", 0.01),
                    ]
                )
                record.update(losses)
                record.update(grad_norm=grad_norm, time=iter_time)
                eta = datetime.timedelta(seconds=int(((total - epoch) * iters + iters - inner) * iter_time))
                text = (
                    f"Epoch [{epoch}][{inner}/{iters}]\tlr: {lr:.3e}, eta: {eta}, time: {iter_time:.3f}, "
                    "data_time: 0.010, memory: 17408, "
                )
                text += ", ".join(f"{k}: {v:.4f}" for k, v in losses.items()) + f", grad_norm: {grad_norm:.4f}"
                _log(logger, json_log, record, text)
        if rank == 0:
            name = osp.join(cfg.work_dir, f"epoch_{epoch}.pth")
            checkpoint_meta = dict(
                meta,
                epoch=epoch,
                iter=epoch * iters,
                mmcv_version="1.6.1",
                time=time.asctime(),
                CLASSES=["car", "pedestrian"],
            )
            torch.save({"meta": checkpoint_meta, "state_dict": _state_dict(cfg, epoch), "optimizer": {}}, name)
            latest = osp.join(cfg.work_dir, "latest.pth")
            if osp.lexists(latest):
                os.remove(latest)
            os.symlink(f"epoch_{epoch}.pth", latest)
        if every and (epoch % every == 0 or epoch == total):
            if rank == 0:
                metrics = evaluate(cfg, epoch)
                record = collections.OrderedDict(
                    [
                        ("mode", "val"),
                        ("epoch", epoch),
                        ("iter", samples),
                        ("lr", round(_lr(cfg, epoch, iters, iters), 10)),
                    ]
                )
                record.update(metrics)
                text = f"Epoch(val) [{epoch}][{samples}]\t" + ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items())
                _log(logger, json_log, record, text)
        dist.barrier()
