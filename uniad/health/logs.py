"""Training logs as records: mmcv 1.x ``*.log.json`` and text logs, and mmengine text logs.

Line shapes handled (see the tests for real captured lines)::

    {"env_info": ..., "config": "...", "seed": 0, "exp_name": "..."}                       # json meta line, skipped
    {"mode": "train", "epoch": 1, "iter": 10, "lr": 0.0002, ..., "loss": NaN, "grad_norm": Infinity}
    2024-03-24 01:22:33,251 - mmdet - INFO - Epoch [19][1000/1969]\tlr: 2.500e-03, eta: 1 day, 9:44:51, time: 0.991, ...
    2024-03-24 01:22:33,251 - mmdet - INFO - Epoch(val) [6][753]\tpts_bbox_NuScenes/amota: 0.3900, ...
    07/04 08:12:50 - mmengine - INFO - Epoch(train)  [1][ 750/7393]  base_lr: 3.7531e-05 lr: 3.7531e-05  eta: ...

Every record is a dict with ``mode``, ``epoch``, ``iter``, ``iters_per_epoch`` (when the line says it), and every
logged key; numbers are floats (``nan``/``inf`` kept), ``eta`` stays text. ``LogReader`` follows a growing file from
its last offset, so a poll costs what was appended, and a half-written last line waits for its newline.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

_MMCV_TRAIN = re.compile(r"Epoch \[(?P<epoch>\d+)\]\[(?P<iter>\d+)/(?P<iters>\d+)\]\s+(?P<fields>.*)$")
_MMCV_VAL = re.compile(r"Epoch\(val\) \[(?P<epoch>\d+)\]\[(?P<iter>\d+)\]\s+(?P<fields>.*)$")
_MMENGINE = re.compile(
    r"Epoch\((?P<mode>train|val|test)\)\s+\[(?P<epoch>\d+)\]\[\s*(?P<iter>\d+)/(?P<iters>\d+)\]\s+(?P<fields>.*)$"
)
_MMENGINE_FIELD = re.compile(r"(?P<key>[^\s:]+): (?P<value>.*?)(?=\s{2,}[^\s:]+: |\s+[^\s:]+: [-+\d.]|$)")
_TEXT_KEYS = {"eta"}


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _split_mmcv_fields(text: str) -> dict[str, float | str]:
    """``k: v, k: v`` where a value may itself contain ", " (eta: 1 day, 9:44:51)."""
    fields: dict[str, float | str] = {}
    last = None
    for piece in text.split(", "):
        key, sep, value = piece.partition(": ")
        if sep and " " not in key:
            fields[key] = value
            last = key
        elif last is not None:
            fields[last] = f"{fields[last]}, {piece}"
    return {k: (v if k in _TEXT_KEYS else _number(v)) for k, v in fields.items()}


def _split_mmengine_fields(text: str) -> dict[str, float | str]:
    fields = {m["key"]: m["value"].strip() for m in _MMENGINE_FIELD.finditer(text.strip())}
    return {k: (v if k in _TEXT_KEYS else _number(v)) for k, v in fields.items()}


def parse_text_line(line: str) -> dict | None:
    """One mmcv 1.x or mmengine text line as a record, or None for any other line."""
    line = line.rstrip("\r\n")
    if "Epoch" not in line:
        return None
    if match := _MMCV_TRAIN.search(line):
        record = {
            "mode": "train",
            "epoch": int(match["epoch"]),
            "iter": int(match["iter"]),
            "iters_per_epoch": int(match["iters"]),
        }
        return {**record, **_split_mmcv_fields(match["fields"])}
    if match := _MMCV_VAL.search(line):
        record = {"mode": "val", "epoch": int(match["epoch"]), "iter": int(match["iter"])}
        return {**record, **_split_mmcv_fields(match["fields"])}
    if match := _MMENGINE.search(line):
        record = {
            "mode": match["mode"],
            "epoch": int(match["epoch"]),
            "iter": int(match["iter"]),
            "iters_per_epoch": int(match["iters"]),
        }
        return {**record, **_split_mmengine_fields(match["fields"])}
    return None


def parse_mmcv_train_line(line: str) -> dict | None:
    """A train record from one text line (mmcv or mmengine), or None."""
    record = parse_text_line(line)
    return record if record is not None and record["mode"] == "train" else None


def parse_json_line(line: str | bytes) -> dict | None:
    """One mmcv ``*.log.json`` line as a record; None for the meta line, blank or unparsable lines.

    Values stay as json gives them (ints stay ints); this is the hot path of a 7,000-record analysis.
    """
    try:
        obj = json.loads(line)  # accepts bytes, and mmcv's NaN / Infinity tokens
    except ValueError:
        return None
    if type(obj) is not dict or "mode" not in obj or "epoch" not in obj:
        return None
    return obj


def parse_json_meta(line: str | bytes) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) and "mode" not in obj else None


def is_json_log(path: str | Path) -> bool:
    return str(path).endswith(".json")


class LogReader:
    """Follows one log file. ``poll()`` returns the records appended since the last poll (O(new bytes))."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.offset = 0
        self.meta: dict | None = None
        self._partial = b""
        self._json = is_json_log(path)
        self._first_line = True

    def poll(self, final: bool = False) -> list[dict]:
        """New complete records; with ``final`` also a last line without newline, if it parses."""
        try:
            with open(self.path, "rb") as handle:
                if os.fstat(handle.fileno()).st_size < self.offset:  # rotated or rewritten: start over
                    self.offset, self._partial, self._first_line = 0, b"", True
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = b""
        return list(self._parse(lines))

    def _parse(self, lines: list[bytes]) -> Iterator[dict]:
        if not self._json:
            for raw in lines:
                record = parse_text_line(raw.decode("utf-8", errors="replace"))
                if record is not None:
                    yield record
            return
        for raw in lines:
            if self._first_line and raw.strip():
                self._first_line = False
                meta = parse_json_meta(raw)
                if meta is not None:
                    self.meta = meta
                    continue
            record = parse_json_line(raw)
            if record is not None:
                yield record


def read_log(path: str | Path) -> tuple[list[dict], dict | None]:
    """All records of a finished (or truncated) log, and its json meta line if any."""
    reader = LogReader(path)
    records = reader.poll(final=True)
    return records, reader.meta


def iters_per_epoch_of(text_log: str | Path) -> int | None:
    """Epoch length from the first train line of a text log (``Epoch [1][10/3517]``); json logs do not carry it,
    so callers pass a json log's sibling (``uniad.workdir.text_log_of``)."""
    try:
        with open(text_log, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                record = parse_mmcv_train_line(line) if "Epoch" in line else None
                if record is not None:
                    return record["iters_per_epoch"]
    except FileNotFoundError:
        return None
    return None
