"""The mini UniAD's evaluation: real metrics from the model's predictions, under UniAD's names and print formats.

What ``MiniDriveDataset.evaluate`` returns reaches the log as the ``Epoch(val)`` record, as in UniAD's
``NuScenesE2EDataset.evaluate``: tracking (``pts_bbox_NuScenes/amota``, ``amotp``, ``recall``, ``mota``, ``motp``,
``ids``) and map IoUs (``drivable_iou``, ``lanes_iou``, ``divider_iou``, ``contour_iou``). Motion, occupancy and
planning are only printed to rank 0's stdout, in the shapes UniAD prints them: MotionEval's table
(``class names | min_ade_err | min_fde_err | miss_rate_err``), ``Occ-flow Val Results:`` with an ``iou`` line
(near & far, in percent), and the PrettyTable of planning ``obj_col`` / ``obj_box_col`` (fractions) / L2 per
horizon.

Tracking follows nuScenes' AMOTA: at recall levels r = 0.1 ... 1.0, MOTAR at the highest score threshold that reaches
r, with the true positives clipped to r P (``max(0, 1 - (IDS + FP) / (r P))``, at most 1), averaged; CLEAR-MOT
matching per threshold is py-motmetrics'. Distances are in the scene's units ([-1, 1]^2 BEV), so thresholds are scaled to it.
"""

from __future__ import annotations

import math

import numpy as np

MATCH_DIST = 0.25  # a track box this close to an agent can match it (nuScenes: 2 m on a ~100 m scene)
MISS_DIST = 0.2  # a predicted endpoint farther than this is a miss (UniAD's MotionEval: 2 m)
RECALLS = np.linspace(0.1, 1.0, 10)
HORIZON_S = 0.5  # seconds per future step, as UniAD's planning table (0.5 s ... 3.0 s)


def _objectness(pred: dict) -> np.ndarray:
    """A track box's score: 1 - p(no object). The mini's agent classes differ only in size and brightness on a
    32-pixel image; tracking is scored class-agnostic, as one class (nuScenes averages AMOTA over its classes)."""
    return 1.0 - pred["track_probs"][..., -1]


def _tracking(dataset, results: list[dict], ground_truth: list[dict]) -> dict[str, float]:
    import motmetrics as mm

    scores = np.concatenate([_objectness(r).ravel() for r in results])
    thresholds = np.unique(np.quantile(scores, np.linspace(0.0, 0.95, 20)))
    summary = []
    metrics = mm.metrics.create()
    for threshold in thresholds:
        acc = mm.MOTAccumulator(auto_id=True)
        for sample, (pred, gt) in enumerate(zip(results, ground_truth)):
            confident = _objectness(pred) >= threshold  # (frames, Q)
            valid = gt["agent_mask"]
            for f in range(pred["track_boxes"].shape[0]):
                gt_ids = [sample * 100 + i for i in np.flatnonzero(valid)]
                hyp = np.flatnonzero(confident[f])
                gt_xy = gt["gt_boxes"][f, valid, :2]
                hyp_xy = pred["track_boxes"][f, hyp, :2]
                dist = (
                    np.linalg.norm(gt_xy[:, None] - hyp_xy[None], axis=-1) if len(hyp) else np.zeros((len(gt_ids), 0))
                )
                dist = np.where(dist <= MATCH_DIST, dist, np.nan)
                acc.update(gt_ids, [sample * 100 + q for q in hyp], dist)
        s = metrics.compute(
            acc,
            metrics=["num_objects", "num_matches", "num_false_positives", "num_misses", "num_switches", "motp"],
            name="t",
        )
        row = s.loc["t"]
        summary.append({k: float(row[k]) for k in row.index})
    p = summary[0]["num_objects"]
    motars, motps = [], []
    for r in RECALLS:
        # nuScenes: at recall r, the highest score threshold that reaches it, with the true positives clipped to
        # r * P (matches beyond them count as neither TP nor FN): MOTAR = 1 - (IDS + FP) / (r * P), never above 1.
        reaching = [row for row in summary if p and row["num_matches"] / p >= r - 1e-9]
        if not reaching:
            motars.append(0.0)
            motps.append(MATCH_DIST)
            continue
        row = reaching[-1]  # summary rows go up in threshold
        motars.append(max(0.0, 1.0 - (row["num_switches"] + row["num_false_positives"]) / (r * p)))
        motps.append(row["motp"] if math.isfinite(row["motp"]) else MATCH_DIST)

    # CLEAR-MOT at the threshold with the best MOTA, as nuScenes reports mota/motp beside amota.
    def mota(row: dict) -> float:
        return 1.0 - (row["num_switches"] + row["num_false_positives"] + row["num_misses"]) / max(p, 1)

    top = max(summary, key=mota)
    prefix = "pts_bbox_NuScenes/"
    return {
        f"{prefix}amota": float(np.mean(motars)),
        f"{prefix}amotp": float(np.mean(motps)),
        f"{prefix}recall": float(max(row["num_matches"] for row in summary) / max(p, 1)),
        f"{prefix}mota": float(mota(top)),
        f"{prefix}motp": float(top["motp"]) if math.isfinite(top["motp"]) else float("nan"),
        f"{prefix}ids": float(top["num_switches"]),
    }


def _iou(intersection: float, union: float) -> float:
    return float(intersection / union) if union else float("nan")


def _map(dataset, results: list[dict], ground_truth: list[dict]) -> dict[str, float]:
    counts = {name: [0.0, 0.0] for name in ("drivable", "lanes", *dataset.MAP_CLASSES)}
    num_classes = len(dataset.MAP_CLASSES)
    for pred, gt in zip(results, ground_truth):
        pairs = [("drivable", pred["drivable"] > 0.5, gt["stuff_mask"] > 0.5)]
        kept = pred["lane_probs"][:, :num_classes].max(-1) > pred["lane_probs"][:, num_classes]
        label = pred["lane_probs"][:, :num_classes].argmax(-1)
        masks = pred["lane_masks"] > 0.5
        gt_masks = gt["lane_masks"] > 0.5
        gt_labels = gt["lane_labels"]
        pairs.append(("lanes", (masks & kept[:, None, None]).any(0), gt_masks.any(0)))
        for c, name in enumerate(dataset.MAP_CLASSES):
            mine = (masks & (kept & (label == c))[:, None, None]).any(0)
            pairs.append((name, mine, (gt_masks & (gt_labels == c)[:, None, None]).any(0)))
        for name, a, b in pairs:
            counts[name][0] += float((a & b).sum())
            counts[name][1] += float((a | b).sum())
    names = {"drivable": "drivable_iou", "lanes": "lanes_iou", "divider": "divider_iou", "boundary": "contour_iou"}
    return {names[k]: _iou(*v) for k, v in counts.items()}


def _match_last_frame(dataset, pred: dict, gt: dict) -> list[tuple[int, int]]:
    """(query, agent) pairs of the last frame: confident, within MATCH_DIST, one to one (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    agents = np.flatnonzero(gt["agent_mask"])
    cost = np.linalg.norm(pred["track_boxes"][-1, :, None, :2] - gt["gt_boxes"][-1, agents][None, :, :2], axis=-1)
    unsure = _objectness(pred)[-1][:, None] < 0.5
    cost = np.where(unsure | (cost > MATCH_DIST), 1e6, cost)
    rows, cols = linear_sum_assignment(cost)
    return [(int(q), int(agents[a])) for q, a in zip(rows, cols) if cost[q, a] < 1e6]


def _motion(dataset, results, ground_truth) -> dict[str, dict[str, float]]:
    per_class: dict[str, list[tuple[float, float]]] = {name: [] for name in dataset.CLASSES}
    for pred, gt in zip(results, ground_truth):
        for q, agent in _match_last_frame(dataset, pred, gt):
            err = np.linalg.norm(pred["motion_trajs"][q] - gt["gt_future_trajs"][agent][None], axis=-1)  # (M, T)
            per_class[dataset.CLASSES[gt["gt_labels"][agent]]].append((err.mean(-1).min(), err[:, -1].min()))
    table = {}
    for name, errors in per_class.items():
        if errors:
            ade, fde = np.array(errors).T
            table[name] = {
                "min_ade_err": ade.mean(),
                "min_fde_err": fde.mean(),
                "miss_rate_err": (fde > MISS_DIST).mean(),
            }
        else:  # no agent of this class was tracked: nan, as nuScenes reports an empty class
            table[name] = {"min_ade_err": math.nan, "min_fde_err": math.nan, "miss_rate_err": math.nan}
    return table


def _occupancy(results, ground_truth) -> tuple[float, float]:
    """IoU (%) of the future occupancy near the ego (the central half of the grid) and over the whole grid."""
    near = far = np.zeros(2)
    for pred, gt in zip(results, ground_truth):
        a, b = pred["occupancy"] > 0.5, gt["occ_future"] > 0.5
        size = a.shape[-1]
        window = (slice(None), slice(size // 4, size - size // 4), slice(size // 4, size - size // 4))
        near = near + [(a[window] & b[window]).sum(), (a[window] | b[window]).sum()]
        far = far + [(a & b).sum(), (a | b).sum()]
    return 100 * _iou(*near), 100 * _iou(*far)


def _planning(results, ground_truth) -> dict[str, np.ndarray]:
    l2, col, box_col = [], [], []
    for pred, gt in zip(results, ground_truth):
        plan, agents, valid = pred["plan"], gt["gt_future_trajs"], gt["agent_mask"]
        l2.append(np.linalg.norm(plan - gt["ego_future"], axis=-1))
        gap = np.linalg.norm(plan[None] - agents[valid], axis=-1)  # (A, T)
        col.append((gap < 0.1).any(0) if len(gap) else np.zeros(len(plan), bool))
        half = gt["gt_boxes"][-1, valid, 2:][:, None] / 2  # (A, 1, 2): each agent's box around its future position
        inside = (np.abs(plan[None] - agents[valid]) <= half).all(-1)
        box_col.append(inside.any(0) if len(inside) else np.zeros(len(plan), bool))
    # Collision rates as fractions of the planned trajectories, as UniAD's PlanningMetric computes and prints them.
    return {"obj_col": np.mean(col, 0), "obj_box_col": np.mean(box_col, 0), "L2": np.mean(l2, 0)}


def pretty_table(field_names: list[str], rows: list[list[str]], title: str | None = None) -> str:
    """PrettyTable's default text layout (what UniAD prints), without the dependency."""
    widths = [max(len(str(c)) for c in column) + 2 for column in zip(field_names, *rows)]
    rule = "+" + "+".join("-" * w for w in widths) + "+"
    lines = [rule]
    if title:
        inner = sum(widths) + len(widths) - 1
        lines += ["|" + title.center(inner) + "|", rule]
    lines += ["|" + "|".join(str(c).center(w) for c, w in zip(field_names, widths)) + "|", rule]
    lines += ["|" + "|".join(str(c).center(w) for c, w in zip(row, widths)) + "|" for row in rows]
    return "\n".join([*lines, rule])


def evaluate(dataset, results: list[dict]) -> dict[str, float]:
    """Metrics of ``results`` (one prediction dict per sample, in dataset order) against the dataset's scenes."""
    if len(results) != len(dataset):
        raise ValueError(f"evaluate needs one result per sample: {len(results)} results for {len(dataset)} samples")
    ground_truth = [{k: v.numpy() for k, v in dataset[i].items()} for i in range(len(dataset))]
    metrics = {**_tracking(dataset, results, ground_truth), **_map(dataset, results, ground_truth)}
    printer = lambda text: print(text, flush=True)  # noqa: E731  rank 0's stdout, where UniAD prints them
    if "motion_trajs" in results[0]:
        table = _motion(dataset, results, ground_truth)
        fields = ["min_ade_err", "min_fde_err", "miss_rate_err"]
        # UniAD's lines before its paper table (MotionEval's standard mode on the motion category); the mini has
        # only that one of UniAD's six tables.
        printer("Evaluate on motion category, merge class for vehicles and pedestrians...")
        printer("evaluate standard motion metrics...")
        printer(
            pretty_table(
                ["class names", *fields], [[n, *(f"{row[f]:.4f}" for f in fields)] for n, row in table.items()]
            )
        )
    if "occupancy" in results[0]:
        near, far = _occupancy(results, ground_truth)
        printer("Occ-flow Val Results:")
        printer("iou")
        printer(f"{near:.1f} & {far:.1f}")
    if "plan" in results[0]:
        planning = _planning(results, ground_truth)
        steps = len(next(iter(planning.values())))
        fields = ["metrics", *(f"{(t + 1) * HORIZON_S:.1f}s" for t in range(steps))]
        rows = [[name, *(f"{v:.4f}" for v in values)] for name, values in planning.items()]
        printer(pretty_table(fields, rows, title="uniad's definition planning metrics"))
    return metrics
