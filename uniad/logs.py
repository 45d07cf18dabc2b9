"""Reading what mmcv's TextLoggerHook prints.

A train line looks like (tab or spaces after the bracket; ``eta`` may contain a comma)::

    2024-03-24 01:22:33,251 - mmdet - INFO - Epoch [19][1000/1969]\tlr: 2.500e-03, eta: 1 day, 9:44:51, time: 0.991, ...
"""

from __future__ import annotations

import re

_TRAIN_LINE = re.compile(r"Epoch \[(?P<epoch>\d+)\]\[(?P<iter>\d+)/(?P<iters>\d+)\]\s+(?P<fields>.*)$")


def _split_fields(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    last = None
    for piece in text.split(", "):
        key, sep, value = piece.partition(": ")
        if sep and " " not in key:
            fields[key] = value
            last = key
        elif last is not None:  # a value that itself contains ", " (eta: 1 day, 9:44:51)
            fields[last] += ", " + piece
    return fields


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def parse_mmcv_train_line(line: str) -> dict | None:
    """One mmcv 1.x ``Epoch [e][i/N]`` line as a record, or None for any other line."""
    match = _TRAIN_LINE.search(line.rstrip("\n"))
    if match is None:
        return None
    record: dict = {
        "mode": "train",
        "epoch": int(match["epoch"]),
        "iter": int(match["iter"]),
        "iters_per_epoch": int(match["iters"]),
    }
    for key, value in _split_fields(match["fields"]).items():
        record[key] = value if key == "eta" else _number(value)
    return record
