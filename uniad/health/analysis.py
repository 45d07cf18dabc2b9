"""Training health: the analysis an engineer does by eye on a stage's loss log, as data.

``analyze`` reads records (``uniad.health.logs``) and returns a verdict, progress, loss/lr/grad-norm summaries,
per-key components and findings. The per-record checks are the live watch's (``uniad.health.monitor``), replayed.

Why zeros matter: UniAD passes every loss through ``torch.nan_to_num``, so a NaN term is logged as 0.0. A component
that was non-zero and becomes exactly 0.0 is the NaN signature; one that is 0.0 from the start is either disabled by
design (``loss_past_traj_weight=0.0`` in stage 1) or never receives targets (UniAD issues #194, #196).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..metrics import Requirement, out_of_range, parse_printed
from ..workdir import text_log_of
from .logs import is_json_log, iters_per_epoch_of, parse_json_meta, read_log
from .monitor import ERROR, INFO, WARNING, Finding, HealthMonitor, Thresholds, as_number, stall_finding
from .schedule import ScheduleConfig

__all__ = ["INFO", "Analysis", "Rows", "analyze", "analyze_log", "analyze_rows", "load_rows"]


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


@dataclass
class Analysis:
    verdict: str
    latest: dict
    progress: float | None
    loss: dict
    lr: dict
    grad_norm: dict
    components: dict
    findings: list[Finding] = field(default_factory=list)
    records: int = 0
    total_epochs: int | None = None
    milestones: list[dict] = field(default_factory=list)
    # The last evaluation {"epoch", "iter", "values"} (logged val record joined with the metrics rank 0 printed for
    # it), and all of them in order.
    metrics: dict | None = None
    evaluations: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["findings"] = [asdict(f) for f in self.findings]
        return data

    def failed(self, strict: bool = False) -> bool:
        return self.verdict == "unhealthy" or (strict and self.verdict == "warning")


def _median_of(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else None


class Rows:
    """The columns the analysis needs, one entry per train record, and ``record(i)`` for the few full records it
    looks at (first, last, a backward scan for zero components). Built from parsed records or straight from the
    lines of a json log, in which case each line's dict is dropped after its row is taken: a 7,000-record log is
    then analysed at about the cost of parsing it."""

    def __init__(self, record: Callable[[int], dict]) -> None:
        self.epoch: list[int] = []
        self.iter: list[int] = []
        self.loss: list[float | None] = []
        self.lr: list[float | None] = []
        self.grad: list[float | None] = []
        self.time: list[float | None] = []
        self.iters_per_epoch: int | None = None
        self.record = record
        self.evaluations: list[dict] = []  # the val records, in log order

    def add(self, r: dict) -> None:
        self.epoch.append(r["epoch"])
        self.iter.append(r["iter"])
        self.loss.append(as_number(r.get("loss")))
        self.lr.append(as_number(r.get("lr")))
        self.grad.append(as_number(r.get("grad_norm")))
        self.time.append(as_number(r.get("time")))
        if self.iters_per_epoch is None and r.get("iters_per_epoch"):
            self.iters_per_epoch = int(r["iters_per_epoch"])

    def __len__(self) -> int:
        return len(self.epoch)

    def known(self, column: str) -> list[float]:
        """A column's values where the records have one."""
        return [v for v in getattr(self, column) if v is not None]

    def drop(self, start: int, stop: int) -> None:
        """Remove rows ``start:stop`` (an earlier attempt's rows that a resumed attempt did again)."""
        for column in (self.epoch, self.iter, self.loss, self.lr, self.grad, self.time):
            del column[start:stop]

    @classmethod
    def from_records(cls, records: list[dict]) -> Rows:
        train = [r for r in records if r.get("mode") == "train"]
        rows = cls(train.__getitem__)
        for r in train:
            rows.add(r)
        rows.evaluations = [r for r in records if r.get("mode") == "val"]
        return rows


def analyze(records: list[dict], meta: dict | None = None, **options) -> Analysis:
    """Analyse one stage's parsed records; ``options`` as for ``analyze_rows``."""
    return analyze_rows(Rows.from_records(records), meta, **options)


def analyze_rows(
    rows: Rows,
    meta: dict | None = None,
    *,
    total_epochs: int | None = None,
    iters_per_epoch: int | None = None,
    thresholds: Thresholds | None = None,
    silence_s: float | None = None,
    printed: Sequence[tuple[int | None, dict]] = (),
    requirements: Sequence[Requirement] = (),
    expect_evaluation: bool = False,
) -> Analysis:
    """The analysis. ``total_epochs`` when the log's config does not say; ``iters_per_epoch`` when the log does
    not (json logs); ``silence_s``: seconds since the log last changed, for the stall check. ``printed``: the
    metrics rank 0 printed per evaluation (``metrics.parse_printed``); ``requirements``: the gate's metric
    requirements on the final evaluation; ``expect_evaluation``: a finished stage without an evaluation of its
    final epoch is an error (validation was not turned off on purpose)."""
    t = thresholds or Thresholds()
    schedule = ScheduleConfig.from_text((meta or {}).get("config"))
    n = len(rows)
    monitor = HealthMonitor(t)
    for i in range(n):
        monitor.observe(rows.epoch[i], rows.iter[i], rows.loss[i], rows.grad[i])
    findings = monitor.findings
    iters_per_epoch = iters_per_epoch or rows.iters_per_epoch
    if iters_per_epoch is None and n and rows.epoch[-1] > rows.epoch[0]:
        # json logs do not say it: the last logged iteration of a finished epoch is within one interval of it.
        iters_per_epoch = max(it for e, it in zip(rows.epoch, rows.iter) if e != rows.epoch[-1])
    epochs_total = schedule.max_epochs or total_epochs
    evaluations = _evaluations(rows.evaluations, printed)
    if not n:
        findings.append(Finding(WARNING, "no_records", "the log has no training records yet"))
        findings += [Finding(ERROR, "metric_requirement", r.failure({}) or "") for r in requirements]
        return Analysis(
            _verdict(findings), {}, None, {}, {}, {}, {}, findings, 0, epochs_total, evaluations=evaluations
        )

    last_epoch, last_iter = rows.epoch[-1], rows.iter[-1]
    progress = _progress(last_epoch, last_iter, iters_per_epoch, epochs_total)
    finite_losses = [v for v in rows.loss if _finite(v)]
    components = _components(rows)
    final = evaluations[-1] if evaluations else None
    findings += _loss_trend(finite_losses, t, last_epoch, last_iter)
    findings += _zero_components(rows, list(components), schedule, t)
    findings += _lr_findings(rows, schedule, iters_per_epoch, t)
    if silence_s is not None and (progress is None or progress < 1.0):
        findings += _stall(rows, silence_s, t)
    finished = progress is not None and progress >= 1.0
    findings += _evaluation_findings(final, expect_evaluation and finished, last_epoch, last_iter, requirements)
    return Analysis(
        _verdict(findings),
        {"epoch": last_epoch, "iter": last_iter, "iters_per_epoch": iters_per_epoch},
        progress,
        _first_and_latest(finite_losses),
        {"peak": max(rows.known("lr"), default=None), "latest": (rows.known("lr") or [None])[-1]},
        {"latest": (rows.known("grad") or [None])[-1], "median": _median_of(rows.known("grad"))},
        components,
        findings,
        n,
        epochs_total,
        milestones(rows, schedule.warmup_iters, iters_per_epoch),
        final,
        evaluations,
    )


def _verdict(findings: list[Finding]) -> str:
    if any(f.severity == ERROR for f in findings):
        return "unhealthy"
    return "warning" if any(f.severity == WARNING for f in findings) else "healthy"


def _progress(epoch: int, it: int, iters_per_epoch: int | None, epochs_total: int | None) -> float | None:
    """How much of the stage is trained, from its latest record (None without the epoch count)."""
    if not epochs_total:
        return None
    if iters_per_epoch:
        return min(((epoch - 1) * iters_per_epoch + it) / (epochs_total * iters_per_epoch), 1.0)
    return min((epoch - 1) / epochs_total, 1.0)


def _first_and_latest(losses: list[float]) -> dict:
    first, latest = (losses[0], losses[-1]) if losses else (None, None)
    return {
        "first": first,
        "latest": latest,
        "reduction": (1 - latest / first) if first and latest is not None else None,
    }


_NOT_COMPONENTS = {
    "mode",
    "epoch",
    "iter",
    "iters_per_epoch",
    "lr",
    "time",
    "data_time",
    "memory",
    "eta",
    "loss",
    "grad_norm",
}


def _components(rows: Rows) -> dict[str, dict]:
    """First and latest value of every loss key (the last record's numeric keys that are not bookkeeping)."""
    first, last = rows.record(0), rows.record(len(rows) - 1)
    keys = [k for k in last if k not in _NOT_COMPONENTS and as_number(last.get(k)) is not None]
    return {k: {"first": as_number(first.get(k)), "latest": as_number(last.get(k))} for k in keys}


def _loss_trend(losses: list[float], t: Thresholds, epoch: int, it: int) -> list[Finding]:
    """Divergence and plateau, on a running median so that single spikes decide neither."""
    found = []
    w = max(1, min(t.window, len(losses) // 4 or 1))
    smoothed = [statistics.median(losses[i : i + w]) for i in range(0, len(losses) - w + 1, w)]
    if len(smoothed) >= 3:
        low, now = min(smoothed), smoothed[-1]
        if low > 0 and now > t.divergence_factor * low:
            message = f"loss has risen to {now:.4g} (running median) from a low of {low:.4g}: training is diverging"
            found.append(Finding(ERROR, "divergence", message, epoch, it))
    tail = losses[int(len(losses) * (1 - t.plateau_fraction)) :]
    if len(tail) >= 2 * w and len(losses) >= 8 * w:
        start, end = statistics.median(tail[:w]), statistics.median(tail[-w:])
        if start > 0 and (start - end) / start < t.plateau_min_reduction:
            message = (
                f"loss went from {start:.4g} to {end:.4g} over the last {t.plateau_fraction:.0%} of the records "
                f"(< {t.plateau_min_reduction:.1%} reduction): a plateau"
            )
            found.append(Finding(WARNING, "plateau", message, epoch, it))
    return found


def _stall(rows: Rows, silence_s: float, t: Thresholds) -> list[Finding]:
    """A stage not finished whose log has been silent for longer than the stall rule allows."""
    times = [v for v in rows.time if _finite(v)]
    iter_step = _log_interval(rows)
    if not times or not iter_step:
        return []
    interval = statistics.median(times) * iter_step
    stall = stall_finding(silence_s, interval, t, rows.epoch[-1], rows.iter[-1], live=False)
    return [stall] if stall is not None else []


def _evaluation_findings(
    final: dict | None, must_be_evaluated: bool, epoch: int, it: int, requirements: Sequence[Requirement]
) -> list[Finding]:
    """The final evaluation: there when it must be, every metric in its valid range, each requirement met."""
    found = []
    if must_be_evaluated and (final is None or final["epoch"] != epoch):
        where = f"the last one is epoch {final['epoch']}" if final else "the log has no val record"
        message = (
            f"the final epoch {epoch} was not evaluated ({where}): the stage's quality is unknown; evaluate its "
            "checkpoint (python -m uniad evaluate) or rerun with the final epoch evaluated"
        )
        found.append(Finding(ERROR, "not_evaluated", message, epoch, it))
    values = final["values"] if final else {}
    where = (final["epoch"], final["iter"]) if final else (None, None)
    # A value no metric can take (AMOTA above 1, a collision rate in percent) means the evaluation is wrong:
    # neither a requirement nor champion/challenger may be decided on it.
    for problem in out_of_range(values):
        found.append(Finding(ERROR, "metric_out_of_range", f"{problem}: fix the evaluation first", *where))
    for requirement in requirements:
        if (failure := requirement.failure(values)) is not None:
            found.append(Finding(ERROR, "metric_requirement", failure, *where))
    return found


_NOT_METRICS = {"mode", "epoch", "iter", "lr", "time", "data_time", "memory", "eta", "iters_per_epoch"}


def _evaluations(val_records: list[dict], printed: Sequence[tuple[int | None, dict]]) -> list[dict]:
    """One entry per evaluated epoch, in order: the val record's metrics and what rank 0 printed for that
    evaluation. A later record of the same epoch (a resumed attempt) replaces an earlier one. Class-level ``nan``
    values are kept as they are: normal in nuScenes evaluation, never a finding of their own."""
    by_epoch: dict[int, dict] = {}
    for record in val_records:
        values = {k: float(v) for k, v in record.items() if k not in _NOT_METRICS and isinstance(v, (int, float))}
        by_epoch[int(record["epoch"])] = {"epoch": int(record["epoch"]), "iter": record.get("iter"), "values": values}
    for epoch, values in printed:
        if epoch is not None:
            entry = by_epoch.setdefault(epoch, {"epoch": epoch, "iter": None, "values": {}})
            entry["values"] = {**values, **entry["values"]}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _log_interval(rows: Rows) -> int | None:
    steps = [b - a for ea, a, eb, b in zip(rows.epoch, rows.iter, rows.epoch[1:], rows.iter[1:]) if ea == eb and b > a]
    return int(statistics.median(steps)) if steps else None


def _listed(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... {len(keys) - limit} more" if len(keys) > limit else "")


def _zero_components(rows: Rows, keys: list[str], schedule: ScheduleConfig, t: Thresholds) -> list[Finding]:
    findings: list[Finding] = []
    n = len(rows)
    if n < t.zero_run:
        return findings
    recent = [rows.record(i) for i in range(n - t.zero_run, n)]
    zero_keys = [k for k in keys if "loss" in k and all(r.get(k) == 0 for r in recent)]
    by_design = [k for k in zero_keys if "past_traj" in k and schedule.past_traj_disabled]
    if by_design:
        findings.append(
            Finding(
                INFO,
                "zero_by_design",
                f"{len(by_design)} past-trajectory loss(es) are 0.0, as configured (loss_past_traj_weight=0.0)",
            )
        )
    # One backward scan for all suspicious keys: where was each last non-zero?
    pending = {k for k in zero_keys if k not in by_design}
    became = []
    i = n - t.zero_run - 1
    while pending and i >= 0:
        record = rows.record(i)
        for key in [k for k in pending if record.get(k) not in (0, None)]:
            pending.discard(key)
            became.append((key, record[key], i + 1))
        i -= 1
    if became:
        became.sort(key=lambda item: item[2])
        key, value, index = became[0]
        others = f" (and {len(became) - 1} more: {_listed([k for k, _, _ in became[1:]])})" if len(became) > 1 else ""
        findings.append(
            Finding(
                ERROR,
                "component_became_zero",
                f"{key} was {value:.4g} and is exactly 0.0 since epoch {rows.epoch[index]} iter {rows.iter[index]}"
                f"{others}: UniAD's nan_to_num turns a NaN loss into 0.0",
                rows.epoch[index],
                rows.iter[index],
            )
        )
    always = sorted(pending)
    if always:
        findings.append(
            Finding(
                WARNING,
                "component_always_zero",
                f"{len(always)} loss component(s) have been exactly 0.0 throughout ({_listed(always)}): the head gets "
                "no targets or the loss is disabled (UniAD issues #194, #196); if disabled on purpose, say so in the "
                "config (e.g. loss_past_traj_weight=0.0)",
            )
        )
    return findings


def _lr_findings(rows: Rows, schedule: ScheduleConfig, iters_per_epoch: int | None, t: Thresholds) -> list[Finding]:
    if schedule.lr is None or schedule.policy is None:
        return []
    findings = []
    peak = max((v for v in rows.lr if v is not None), default=None)
    tolerance = lambda expected: max(t.lr_rel_tolerance * expected, t.lr_abs_tolerance)  # noqa: E731
    # The peak the schedule itself reaches over the logged iterations (a warmup that runs into a later epoch
    # never reaches the optimizer lr); the optimizer lr when the schedule is not modelled.
    expected = [schedule.expected_lr(e, i, iters_per_epoch) for e, i in zip(rows.epoch, rows.iter)]
    expected_peak = max((v for v in expected if v is not None), default=schedule.lr)
    if peak is not None and abs(peak - expected_peak) > tolerance(expected_peak):
        findings.append(
            Finding(
                WARNING,
                "lr_peak",
                f"lr peaked at {peak:.4g} but the config's schedule peaks at {expected_peak:.4g} (optimizer lr "
                f"{schedule.lr:.4g}; autoscale-lr, a resumed schedule or a changed GPU count?)",
            )
        )
    for epoch, it, observed, want in zip(rows.epoch, rows.iter, rows.lr, expected):
        if want is None or observed is None:
            continue
        if abs(observed - want) > tolerance(want):
            in_warmup = schedule.warmup and (epoch - 1) * (iters_per_epoch or 0) + it <= schedule.warmup_iters
            findings.append(
                Finding(
                    WARNING,
                    "lr_schedule",
                    f"lr is {observed:.4g} at epoch {epoch} iter {it}, the config's {schedule.policy} schedule "
                    f"({'warmup' if in_warmup else 'cosine'} phase) gives {want:.4g}",
                    epoch,
                    it,
                )
            )
            break  # the first mismatch says it; the rest follow from it
    return findings


def milestones(rows: Rows, warmup_iters: int, iters_per_epoch: int | None) -> list[dict]:
    """The hand-written table: start, warmup done, end of each epoch, latest."""
    n = len(rows)
    if not n:
        return []

    def row(label: str, i: int) -> dict:
        return {
            "point": label,
            "epoch": rows.epoch[i],
            "iter": rows.iter[i],
            "loss": rows.loss[i],
            "grad_norm": rows.grad[i],
            "lr": rows.lr[i],
        }

    table = [row("start", 0)]
    if warmup_iters and iters_per_epoch:
        done = next((i for i in range(n) if (rows.epoch[i] - 1) * iters_per_epoch + rows.iter[i] >= warmup_iters), None)
        if done is not None:
            table.append(row("warmup done", done))
    for i in range(n - 1):
        if rows.epoch[i + 1] != rows.epoch[i]:
            table.append(row(f"end of epoch {rows.epoch[i]}", i))
    table.append(row("latest", n - 1))
    return table


def load_rows(paths: str | Path | Sequence[str | Path]) -> tuple[Rows, dict | None]:
    """Rows of one log, or of a stage's logs in order (one per attempt), and the newest json meta line.

    For json logs each record's dict is dropped once its row is taken (the few full records the analysis needs are
    parsed again from their line). Where an attempt resumed at or before a point an earlier attempt had already
    logged (work lost to a crash and done again), the earlier attempt's rows from that point on are dropped: what
    remains is the history the final weights went through."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    sources: list[list[bytes] | list[dict]] = []
    index: list[tuple[int, int]] = []

    def record(i: int) -> dict:
        source, n = index[i]
        item = sources[source][n]
        return item if isinstance(item, dict) else json.loads(item)

    rows = Rows(record)
    meta = None
    for path in paths:
        source = len(sources)
        start = len(rows)
        if is_json_log(path):
            with open(path, "rb") as handle:
                lines = handle.read().split(b"\n")
            sources.append(lines)
            file_meta = parse_json_meta(lines[0]) if lines and lines[0].strip() else None
            meta = file_meta or meta
            loads, add = json.loads, rows.add
            for n in range(1 if file_meta is not None else 0, len(lines)):
                try:
                    obj = loads(lines[n])
                except ValueError:  # blank, or a truncated last line
                    continue
                if type(obj) is dict and obj.get("mode") == "train" and "epoch" in obj:
                    add(obj)
                    index.append((source, n))
                elif type(obj) is dict and obj.get("mode") == "val" and "epoch" in obj:
                    rows.evaluations.append(obj)
        else:
            records, _ = read_log(path)
            train = [r for r in records if r.get("mode") == "train"]
            rows.evaluations += [r for r in records if r.get("mode") == "val"]
            sources.append(train)
            for n, r in enumerate(train):
                rows.add(r)
                index.append((source, n))
        if start and len(rows) > start:
            resumed_at = (rows.epoch[start], rows.iter[start])
            keep = next((i for i in range(start) if (rows.epoch[i], rows.iter[i]) >= resumed_at), start)
            rows.drop(keep, start)
            del index[keep:start]
    return rows, meta


def analyze_log(
    paths: str | Path | Sequence[str | Path], *, outputs: Sequence[str | Path] = (), **kwargs
) -> tuple[Analysis, Rows, dict | None]:
    """``analyze`` for one log or a stage's logs in order, streaming (see ``load_rows``); the epoch length comes
    from the (first) text log, the metrics UniAD only prints from the attempts' ``outputs``. Returns the analysis,
    the rows it was made from, and the json meta line."""
    rows, meta = load_rows(paths)
    printed = []
    for output in outputs:
        with open(output, encoding="utf-8", errors="replace") as handle:
            printed += parse_printed(handle)
    kwargs.setdefault("printed", printed)
    first = Path(paths) if isinstance(paths, (str, Path)) else Path(paths[0])
    kwargs.setdefault("iters_per_epoch", iters_per_epoch_of(text_log_of(first)))
    return analyze_rows(rows, meta, **kwargs), rows, meta
