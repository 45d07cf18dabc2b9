"""The live health watch: non-finite loss/grad_norm, grad-norm explosions, loss spikes, a head's loss that became
exactly zero, and stalls, one record at a time, so a bad run is stopped (or, for a warning, someone told) within a log
interval or two. It holds no I/O of its own: feed it records as they are read (from a process's work dir, or from a
trigger following a growing log), and ask it about stalls by wall clock. ``uniad.health.analysis`` replays a whole
log through the same per-record checks.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Thresholds:
    """Defaults call the reference run (loss ~106 -> ~48 by epoch 4, grad norm 50-60, cosine 2e-4 -> 1e-4) healthy."""

    window: int = 20  # records in the running median that spikes and explosions are measured against
    spike_factor: float = 2.0  # loss above this x the running median: a spike
    explosion_factor: float = 10.0  # grad_norm above this x the running median: an explosion
    explosion_min_history: int = 5
    divergence_factor: float = 1.5  # smoothed latest loss above this x the smoothed minimum: divergence
    plateau_fraction: float = 0.25  # the last part of the run checked for a plateau
    plateau_min_reduction: float = 0.005  # relative loss reduction across it, below which it is a plateau
    zero_run: int = 3  # a component exactly 0.0 in this many latest records
    lr_rel_tolerance: float = 0.1
    lr_abs_tolerance: float = 5.1e-6  # mmcv rounds json floats to 5 decimals
    stall_factor: float = 5.0  # silence longer than this x the usual record interval: a stall
    stall_min_s: float = 300.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"health threshold {name} must be a non-negative number, got {value!r}")


@dataclass
class Finding:
    severity: str
    code: str
    message: str
    epoch: int | None = None
    iter: int | None = None


def as_number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class HealthMonitor:
    """Online checks, one record at a time: non-finite loss/grad_norm and grad-norm explosions (errors), loss
    spikes (warnings), and stalls by wall clock. ``fatal`` holds the first error: the reason to stop a run."""

    def __init__(self, thresholds: Thresholds | None = None) -> None:
        self.t = thresholds or Thresholds()
        self.findings: list[Finding] = []
        self.fatal: Finding | None = None
        self._losses: list[float] = []
        self._grads: list[float] = []
        self._seen_nonfinite: set[str] = set()
        self._last_record_at: float | None = None
        self._intervals: list[float] = []
        self._stalled = False
        self._medians: dict[int, tuple[int, float]] = {}
        self._nonzero: dict[str, float] = {}  # each loss component's last non-zero value
        self._zeros: dict[str, int] = {}  # the records since, in which it was exactly 0.0
        self._zero_said: set[str] = set()

    def add(self, finding: Finding) -> Finding:
        self.findings.append(finding)
        if finding.severity == ERROR and self.fatal is None:
            self.fatal = finding
        return finding

    def feed(self, record: dict, now: float | None = None) -> list[Finding]:
        if record.get("mode") != "train":
            return []
        if now is not None:
            if self._last_record_at is not None:
                self._intervals.append(now - self._last_record_at)
            self._last_record_at = now
            self._stalled = False
        epoch, it = record.get("epoch"), record.get("iter")
        new = self._zero_components(record, epoch, it)
        return new + self.observe(epoch, it, as_number(record.get("loss")), as_number(record.get("grad_norm")))

    def _zero_components(self, record: dict, epoch: int | None, it: int | None) -> list[Finding]:
        """A head's loss that was non-zero and is exactly 0.0 in the last ``zero_run`` records: UniAD passes every
        loss through nan_to_num, so that is a NaN term. A warning while it trains (someone should look); the gate's
        analysis of the whole log judges it. Said once per component."""
        new = []
        for key, value in record.items():
            if "loss" not in key or key == "loss" or as_number(value) is None or key in self._zero_said:
                continue
            if value != 0:
                self._nonzero[key], self._zeros[key] = value, 0
                continue
            self._zeros[key] = self._zeros.get(key, 0) + 1
            if key in self._nonzero and self._zeros[key] >= self.t.zero_run:
                self._zero_said.add(key)
                new.append(
                    self.add(
                        Finding(
                            WARNING,
                            "component_became_zero",
                            f"{key} was {self._nonzero[key]:.4g} and is exactly 0.0 in the last {self._zeros[key]} "
                            f"records, up to epoch {epoch} iter {it}: UniAD's nan_to_num turns a NaN loss into 0.0; "
                            "that head has stopped learning",
                            epoch,
                            it,
                        )
                    )
                )
        return new

    def observe(self, epoch: int | None, it: int | None, loss: float | None, grad: float | None) -> list[Finding]:
        """The per-record checks on already extracted values (``analyze`` calls this in its single pass)."""
        new: list[Finding] = []
        for key, value in (("loss", loss), ("grad_norm", grad)):
            if value is not None and not math.isfinite(value) and key not in self._seen_nonfinite:
                self._seen_nonfinite.add(key)
                new.append(
                    self.add(
                        Finding(
                            ERROR,
                            f"non_finite_{key}",
                            f"{key} is {value} at epoch {epoch} iter {it}: training diverged (NaN/Inf); check the lr, "
                            "fp16 loss scaling and the data of that iteration, then resume from an earlier epoch_N.pth",
                            epoch,
                            it,
                        )
                    )
                )
        outliers = (
            (loss, self._losses, self.t.spike_factor, WARNING, "loss_spike", "loss", ""),
            (
                grad,
                self._grads,
                self.t.explosion_factor,
                ERROR,
                "grad_norm_explosion",
                "grad_norm",
                ": gradients are exploding; lower the lr or check grad_clip",
            ),
        )
        for value, history, factor, severity, code, name, advice in outliers:
            if value is None or not math.isfinite(value):
                continue
            median = self._running_median(history)
            if median is not None and median > 0 and value > factor * median:
                new.append(
                    self.add(
                        Finding(
                            severity,
                            code,
                            f"{name} {value:.4g} at epoch {epoch} iter {it} is {value / median:.1f}x its running median "
                            f"{median:.4g}{advice}",
                            epoch,
                            it,
                        )
                    )
                )
            history.append(value)
        return new

    def _running_median(self, history: list[float]) -> float | None:
        """Median of the last ``window`` values, refreshed every few records (a slightly stale median is fine for
        spotting 2x-10x outliers, and it keeps a 7,000-record analysis near the cost of parsing)."""
        if len(history) < self.t.explosion_min_history:
            return None
        n = len(history)
        cache = self._medians.get(id(history))
        if cache is None or n - cache[0] >= 5 or n <= self.t.window:
            cache = (n, statistics.median(history[-self.t.window :]))
            self._medians[id(history)] = cache
        return cache[1]

    def usual_interval(self) -> float | None:
        """Median wall time between records (epoch boundaries included), once a few have been seen."""
        return statistics.median(self._intervals) if len(self._intervals) >= 2 else None

    def wait_for_records(self) -> None:
        """The stage starts again (a requeued job): no stall until its first record, however long it waits."""
        self._last_record_at, self._stalled = None, False

    def check_stall(
        self,
        now: float,
        last_epoch: int | None = None,
        last_iter: int | None = None,
        last_output_at: float | None = None,
    ) -> Finding | None:
        """A stall is silence in the log *and* on the output: evaluation after the last epoch writes no log records
        for a long time, but its progress bar keeps printing."""
        if self._last_record_at is None or self._stalled:
            return None
        silence = now - max(self._last_record_at, last_output_at or 0.0)
        finding = stall_finding(silence, self.usual_interval(), self.t, last_epoch, last_iter, live=True)
        if finding is None:
            return None
        self._stalled = True
        return self.add(finding)


def stall_finding(
    silence_s: float, interval_s: float | None, t: Thresholds, epoch: int | None, it: int | None, *, live: bool
) -> Finding | None:
    """The one stall rule: silence longer than ``stall_factor`` x the usual interval between records, and than
    ``stall_min_s``. Live (a stage the watch would stop) it is an error; in an analysis of a log, a warning."""
    limit = max(t.stall_factor * interval_s, t.stall_min_s) if interval_s is not None else t.stall_min_s
    if silence_s <= limit:
        return None
    usual = f"{interval_s:.1f} s" if interval_s is not None else "not known yet"
    where = f"after epoch {epoch} iter {it}"
    if live:
        return Finding(
            ERROR,
            "stall",
            f"no new log records or output for {silence_s:.0f} s (usual interval {usual}, limit {limit:.0f} s) "
            f"{where}: a rank is hung (NCCL watchdog, dataloader or I/O)",
            epoch,
            it,
        )
    return Finding(
        WARNING,
        "stall",
        f"no new records for {silence_s:.0f} s (usual interval {usual}, limit {limit:.0f} s) {where}, and the "
        "stage is not finished",
        epoch,
        it,
    )
