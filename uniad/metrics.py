"""Model-quality metrics of a stage: what UniAD's evaluation logs and prints, as data (shared by the analysis, the
gate, the plan and champion/challenger).

Where each metric lands in real UniAD (``NuScenesE2EDataset.evaluate``): detection/tracking
(``pts_bbox_NuScenes/*``) and the map IoUs are returned, so mmcv logs them as the ``Epoch(val)`` record; motion
(MotionEval's table), occupancy (``Occ-flow Val Results:`` with ``iou``/``pq``/``sq``/``rq`` lines) and planning
(a PrettyTable of L2 / ``obj_col`` / ``obj_box_col`` per horizon) are only printed to rank 0's stdout.
``parse_printed`` turns those prints into metrics and attaches them to the evaluation whose ``Epoch(val)`` line
follows them; ``Requirement`` is one ``METRIC>=VALUE`` or ``METRIC<=VALUE`` of the gate.

Printed names: ``motion/<class>_min_ade_err`` (and ``motion/minADE``, ``motion/minFDE``, ``motion/MR`` for cars,
UniAD's headline), ``occ/iou_n`` and ``occ/iou_f`` (near and far; ``pq``/``sq``/``rq`` alike),
``planning/L2_1.0s`` ... and ``planning/L2_avg`` (the mean over 1, 2 and 3 s, UniAD's table; likewise
``planning/obj_col_*`` and ``planning/obj_box_col_*``).
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
        "planning/obj_box_col_avg": 0.31,
    },
}
HEADLINE = {stage: list(values) for stage, values in REFERENCES.items()}
# Lower is better for these (errors, distances, collisions, switches); higher for the rest (AMOTA, IoU, recall).
_LOWER_IS_BETTER = re.compile(r"(amotp|motp|/ids|ade|fde|/mr\b|miss_rate|L2|_col|_err)", re.I)

_VAL_LINE = re.compile(r"Epoch\(val\)\s*\[(\d+)\]")
_ROW = re.compile(r"^\|(.*)\|\s*$")
_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$|^nan$", re.I)
_DICT_ITEM = re.compile(r"'([^']+)':\s*(?:np\.float\d*\()?([-+]?[\d.]+(?:[eE][-+]?\d+)?|nan|inf|-inf)\)?")


def lower_is_better(metric: str) -> bool:
    return bool(_LOWER_IS_BETTER.search(metric))


def _float(text: str) -> float:
    return float(text) if text.lower() != "nan" else math.nan


def _cells(line: str) -> list[str] | None:
    match = _ROW.match(line.strip())
    return [c.strip() for c in match.group(1).split("|")] if match else None


def _table_metrics(header: list[str], rows: list[list[str]]) -> dict[str, float]:
    out: dict[str, float] = {}
    if header[0] == "metrics":  # planning: one row per metric, one column per horizon
        for row in rows:
            values = {col: _float(v) for col, v in zip(header[1:], row[1:]) if _NUMBER.match(v)}
            for col, value in values.items():
                out[f"planning/{row[0]}_{col}"] = value
            seconds = [values[c] for c in ("1.0s", "2.0s", "3.0s") if c in values]
            if seconds:
                out[f"planning/{row[0]}_avg"] = sum(seconds) / len(seconds)
    elif header[0] == "class names":  # MotionEval: one row per class
        for row in rows:
            for col, value in zip(header[1:], row[1:]):
                if _NUMBER.match(value):
                    out[f"motion/{row[0]}_{col}"] = _float(value)
        for short, col in (("minADE", "min_ade_err"), ("minFDE", "min_fde_err"), ("MR", "miss_rate_err")):
            if f"motion/car_{col}" in out:
                out[f"motion/{short}"] = out[f"motion/car_{col}"]
    return out


def parse_printed(lines) -> list[tuple[int | None, dict[str, float]]]:
    """(epoch, metrics) per evaluation printed in a stage's output: tables, occupancy lines and printed metric
    dicts, attached to the ``Epoch(val) [E]`` line that follows them (None: no such line, e.g. tools/test.py)."""
    found: list[tuple[int | None, dict[str, float]]] = []
    pending: dict[str, float] = {}
    lines = [line.rstrip("\n") for line in lines]
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if match := _VAL_LINE.search(line):
            if pending:
                found.append((int(match.group(1)), pending))
                pending = {}
        elif line == "Occ-flow Val Results:":
            j = i + 1
            while j + 1 < len(lines) and lines[j].strip() in ("iou", "pq", "sq", "rq"):
                values = [v.strip() for v in lines[j + 1].split("&")]
                if all(_NUMBER.match(v) for v in values):
                    for suffix, value in zip(("n", "f"), values):
                        pending[f"occ/{lines[j].strip()}_{suffix}"] = _float(value)
                j += 2
            i = j - 1
        elif (header := _cells(line)) and header[0] in ("metrics", "class names"):
            rows = []
            j = i + 1
            while j < len(lines) and (lines[j].strip().startswith("+") or _cells(lines[j])):
                if (cells := _cells(lines[j])) and len(cells) == len(header):
                    rows.append(cells)
                j += 1
            pending.update(_table_metrics(header, rows))
            i = j - 1
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
