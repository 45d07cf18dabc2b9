"""Model-quality metrics of a stage: what UniAD's evaluation logs and prints, as data (shared by the analysis, the
gate, the plan and champion/challenger).

Where each metric lands in real UniAD (``NuScenesE2EDataset.evaluate``): detection/tracking
(``pts_bbox_NuScenes/*``) and the map IoUs are returned, so mmcv logs them as the ``Epoch(val)`` record; motion
(MotionEval's tables), occupancy (``Occ-flow Val Results:`` with ``iou``/``pq``/``sq``/``rq`` lines) and planning
(a PrettyTable of ``obj_col`` / ``obj_box_col`` / L2 per horizon) are only printed to rank 0's stdout.
``parse_printed`` turns those prints into metrics and attaches them to the evaluation whose ``Epoch(val)`` line
follows them; ``Requirement`` is one ``METRIC>=VALUE`` or ``METRIC<=VALUE`` of the gate.

Printed names. MotionEval runs six times: on the motion category (vehicles merged into ``car``) in the
``standard``, ``motion_map`` and ``epa`` modes, then on the detection category in the same three modes, each
printing a ``class names | min_ade_err | min_fde_err | miss_rate_err`` table (and ``EPA <class> <value>`` lines in
the epa modes). The motion category's standard table is the paper's: ``motion/<class>_min_ade_err`` and the
headline ``motion/minADE``, ``motion/minFDE``, ``motion/MR`` (its ``car`` row); the others are
``motion/<mode>/<class>_<column>`` (``motion/motion_map/...``, ``motion/epa/...``) and, for the detection category,
``motion/det/...``, ``motion/det_motion_map/...``, ``motion/det_epa/...``; EPA values are
``motion/epa/EPA_<class>`` and ``motion/det_epa/EPA_<class>``. Occupancy: ``occ/iou_n`` and ``occ/iou_f`` (near and
far; ``pq``/``sq``/``rq`` alike). Planning: ``planning/L2_1.0s`` ... and ``planning/L2_avg`` (the mean over 1, 2
and 3 s, UniAD's table; likewise ``planning/obj_col_*`` and ``planning/obj_box_col_*``).

Units (``UNITS``): the collision rates are fractions, as UniAD's ``PlanningMetric`` computes and prints them
(the paper's "0.31 %" is 0.0031); occupancy IoU and PQ are percent, as UniAD prints them; everything else is a
fraction or metres. ``out_of_range`` checks values against their valid ranges.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from .errors import ParamError

# UniAD's published results (README and docs; results depend on the GPU count, issues #21 and #157).
REFERENCES = {
    "stage1": {"pts_bbox_NuScenes/amota": 0.390, "lanes_iou": 0.297},
    "stage2": {
        "pts_bbox_NuScenes/amota": 0.363,
        "lanes_iou": 0.313,
        "motion/minADE": 0.705,
        "occ/iou_n": 63.7,
        "planning/L2_avg": 1.03,
        "planning/obj_box_col_avg": 0.0031,  # a fraction: the paper's 0.31 %
    },
}
HEADLINE = {stage: list(values) for stage, values in REFERENCES.items()}
# Lower is better for these (errors, distances, collisions, switches); higher for the rest (AMOTA, IoU, recall).
_LOWER_IS_BETTER = re.compile(r"(amotp|motp|/ids|ade|fde|/mr\b|miss_rate|L2|_col|_err)", re.I)
# Each metric's unit and valid range (None: open), from the first pattern it matches. A value outside it means the
# evaluation itself is wrong (a unit mix-up, a broken metric), which no requirement or champion may be judged on.
UNITS: tuple[tuple[str, str, float | None, float | None], ...] = (
    (r"^planning/obj(_box)?_col_", "fraction (UniAD's PlanningMetric; the paper's 0.31 % is 0.0031)", 0.0, 1.0),
    (r"^planning/L2_", "metres", 0.0, None),
    (r"^occ/", "percent", 0.0, 100.0),
    (r"^motion/(.*_)?(min_ade_err|min_fde_err)$|^motion/(minADE|minFDE)$", "metres", 0.0, None),
    (r"^motion/(.*_)?miss_rate_err$|^motion/MR$", "fraction", 0.0, 1.0),
    (r"^motion/.*EPA_", "fraction (true positives minus half the false positives, over ground truth)", None, 1.0),
    (r"_iou$", "fraction", 0.0, 1.0),
    (r"/(amota|recall|motar|mAP|NDS)$|_AP_dist_", "fraction", 0.0, 1.0),
    (r"/(amotp|motp)$", "metres", 0.0, None),
)

_VAL_LINE = re.compile(r"Epoch\(val\)\s*\[(\d+)\]")
_ROW = re.compile(r"^\|(.*)\|\s*$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$|^nan$", re.I)
_DICT_ITEM = re.compile(r"'([^']+)':\s*(?:np\.float\d*\()?([-+]?[\d.]+(?:[eE][-+]?\d+)?|nan|inf|-inf)\)?")
_EPA_LINE = re.compile(r"^EPA\s+(\S+)\s+([-+]?[\d.]+(?:[eE][-+]?\d+)?|nan)$")
# MotionEval's tables, in the order UniAD prints them: per category, the standard, motion_map and epa modes.
_MOTION_PREFIXES = {
    "motion": ("motion", "motion/motion_map", "motion/epa"),
    "detection": ("motion/det", "motion/det_motion_map", "motion/det_epa"),
}
_MOTION_CATEGORY = {"Evaluate on motion category": "motion", "Evaluate on detection category": "detection"}


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER_IS_BETTER.search(metric))


def _unit_of(metric: str) -> tuple[str, float | None, float | None] | None:
    for pattern, unit, low, high in UNITS:
        if re.search(pattern, metric):
            return unit, low, high
    return None


def unit(metric: str) -> str | None:
    """The metric's unit, e.g. 'percent' for ``occ/iou_n``; None when it has no declared one."""
    found = _unit_of(metric)
    return found[0] if found else None


def out_of_range(values: dict[str, float]) -> list[str]:
    """Why each value outside its metric's valid range is wrong (nan is no value and never out of range)."""
    problems = []
    for metric, value in values.items():
        found = _unit_of(metric)
        if found is None or not isinstance(value, (int, float)) or math.isnan(value):
            continue
        name, low, high = found
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
            problems.append(f"{metric} is {value:.4g}, outside its valid range {bounds} ({name})")
    return problems


def finite(values: dict[str, float]) -> dict[str, float]:
    """The values that are numbers: what may travel as JSON (XCom, provenance). UniAD reports class-level nan
    (``pts_bbox_NuScenes/traffic_cone_orient_err``, a class no motion table row has), normal and never a value."""
    return {k: v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}


def _float(text: str) -> float:
    return float(text) if text.lower() != "nan" else math.nan


def _cells(line: str) -> list[str] | None:
    match = _ROW.match(line.strip())
    return [c.strip() for c in match.group(1).split("|")] if match else None


def _planning_metrics(header: list[str], rows: list[list[str]]) -> dict[str, float]:
    """UniAD's planning table: one row per metric, one column per horizon; ``_avg`` over 1, 2 and 3 s."""
    out: dict[str, float] = {}
    for row in rows:
        values = {col: _float(v) for col, v in zip(header[1:], row[1:]) if _NUMBER.match(v)}
        for col, value in values.items():
            out[f"planning/{row[0]}_{col}"] = value
        seconds = [values[c] for c in ("1.0s", "2.0s", "3.0s") if c in values]
        if seconds:
            out[f"planning/{row[0]}_avg"] = sum(seconds) / len(seconds)
    return out


def _motion_metrics(prefix: str, header: list[str], rows: list[list[str]]) -> dict[str, float]:
    """One MotionEval table: one row per class; the paper's table also gives the headline car numbers."""
    out = {
        f"{prefix}/{row[0]}_{col}": _float(value)
        for row in rows
        for col, value in zip(header[1:], row[1:])
        if _NUMBER.match(value)
    }
    if prefix == "motion":
        for short, col in (("minADE", "min_ade_err"), ("minFDE", "min_fde_err"), ("MR", "miss_rate_err")):
            if f"motion/car_{col}" in out:
                out[f"motion/{short}"] = out[f"motion/car_{col}"]
    return out


def _table(lines: list[str], start: int) -> tuple[list[str], list[list[str]], int]:
    """The header and rows of the PrettyTable whose header row is ``lines[start]``, and the index after it."""
    header = _cells(lines[start]) or []
    rows = []
    j = start + 1
    while j < len(lines) and (lines[j].strip().startswith("+") or _cells(lines[j])):
        if (cells := _cells(lines[j])) and len(cells) == len(header):
            rows.append(cells)
        j += 1
    return header, rows, j


def parse_printed(lines) -> list[tuple[int | None, dict[str, float]]]:
    """(epoch, metrics) per evaluation printed in a stage's output: tables, occupancy lines, EPA lines and printed
    metric dicts, attached to the ``Epoch(val) [E]`` line that follows them (None: no such line, e.g. tools/test.py).
    MotionEval tables are named by their category and mode (module docstring); a table printed without UniAD's
    category line is taken as the motion category's standard one."""
    found: list[tuple[int | None, dict[str, float]]] = []
    pending: dict[str, float] = {}
    category, motion_tables = "motion", 0  # the category being evaluated, and its tables printed so far
    lines = [line.rstrip("\n") for line in lines]
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if match := _VAL_LINE.search(line):
            if pending:
                found.append((int(match.group(1)), pending))
                pending = {}
            category, motion_tables = "motion", 0
        elif heading := next((c for text, c in _MOTION_CATEGORY.items() if line.startswith(text)), None):
            category, motion_tables = heading, 0
        elif line == "Occ-flow Val Results:":
            j = i + 1
            while j + 1 < len(lines) and lines[j].strip() in ("iou", "pq", "sq", "rq"):
                values = [v.strip() for v in lines[j + 1].split("&")]
                if all(_NUMBER.match(v) for v in values):
                    for suffix, value in zip(("n", "f"), values):
                        pending[f"occ/{lines[j].strip()}_{suffix}"] = _float(value)
                j += 2
            i = j - 1
        elif match := _EPA_LINE.match(line):
            prefix = _MOTION_PREFIXES[category][min(motion_tables, 2)]
            pending[f"{prefix}/EPA_{match.group(1)}"] = _float(match.group(2))
        elif (header := _cells(line)) and header[0] in ("metrics", "class names"):
            header, rows, after = _table(lines, i)
            if header[0] == "metrics":
                pending.update(_planning_metrics(header, rows))
            else:
                pending.update(_motion_metrics(_MOTION_PREFIXES[category][min(motion_tables, 2)], header, rows))
                motion_tables += 1
            i = after - 1
        elif line.startswith("{") and ("pts_bbox_NuScenes/" in line or "_iou'" in line):
            pending.update({k: _float(v) for k, v in _DICT_ITEM.findall(line)})
        i += 1
    if pending:
        found.append((None, pending))
    return found


@dataclass(frozen=True)
class Requirement:
    """One gate requirement on a metric of the stage's final evaluation: ``METRIC>=VALUE`` or ``METRIC<=VALUE``."""

    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> Requirement:
        match = re.fullmatch(r"\s*([A-Za-z0-9_./@-]+)\s*(>=|<=)\s*([-+]?[\d.]+(?:[eE][-+]?\d+)?)\s*", text or "")
        if match is None:
            raise ParamError(
                f"metric requirement {text!r} is not METRIC>=VALUE or METRIC<=VALUE; e.g. "
                "pts_bbox_NuScenes/amota>=0.35 or planning/L2_avg<=1.1"
            )
        return cls(match.group(1), match.group(2), float(match.group(3)))

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.value:g}"

    def failure(self, values: dict[str, float]) -> str | None:
        """Why the values fail this requirement, or None when they meet it."""
        if self.metric not in values:
            known = ", ".join(sorted(values)[:8]) + (", ..." if len(values) > 8 else "")
            return f"{self} not met: the evaluation has no {self.metric} (it has {known or 'no metrics'})"
        actual = values[self.metric]
        met = actual >= self.value if self.op == ">=" else actual <= self.value
        if math.isfinite(actual) and met:
            return None
        return f"{self} not met: {self.metric} is {actual:.4g}, required {self.op} {self.value:g}"


def parse_requirements(items) -> tuple[Requirement, ...]:
    if items is None:
        return ()
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise ParamError(f'metric requirements must be a list, got {items!r}; e.g. ["pts_bbox_NuScenes/amota>=0.35"]')
    return tuple(Requirement.parse(item) for item in items)
