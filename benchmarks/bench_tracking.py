"""Benchmark: what experiment tracking costs the follower of a long stage.

    .venv/bin/python benchmarks/bench_tracking.py          # or: make bench

A real MLflow tracking server (SQLite) on loopback, and the reference run's train records (94 fields each). They are
logged the way the trigger logs them: one ``log_records`` call per batch. A UniAD stage 2 on 8 GPUs writes ~7,000
train records in about 4 days, so a batch (at most one every 30 s) holds about one record: the worst case is a call
per record, measured over 500 records and scaled to 7,000. Tracking back after it was down the whole stage logs all
in one call (a restarted triggerer logs only what is after the logged step). Printed: the seconds each way, and the
share of the stage's 4 days the per-record way costs (target < 1 %).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from services import mlflow_server  # noqa: E402
from uniad.health.reference import reference_records  # noqa: E402
from uniad.tracking import Tracking  # noqa: E402

STAGE_S = 4 * 24 * 3600.0
STAGE_RECORDS = 7000
PER_RECORD_SAMPLE = 500
PER_EPOCH = 3517


def main() -> None:
    records = [{**r, "iters_per_epoch": PER_EPOCH} for r in reference_records() if r.get("mode") == "train"]
    keys = len(records[0])
    with tempfile.TemporaryDirectory() as scratch:
        with mlflow_server(Path(scratch) / "mlflow.db", Path(scratch) / "mlflow.log") as url:
            tracking = Tracking(url)
            one_by_one = tracking.stage_run("bench", "per-record", params={})
            started, after = time.perf_counter(), -1
            for record in records[:PER_RECORD_SAMPLE]:
                after = tracking.log_records(one_by_one, [record], after)
            per_record = (time.perf_counter() - started) / PER_RECORD_SAMPLE
            replay = tracking.stage_run("bench", "replay", params={})
            started = time.perf_counter()
            tracking.log_records(replay, records, -1)
            at_once = time.perf_counter() - started
            assert not tracking.skipped, tracking.skipped
            logged = len(tracking.client.get_metric_history(one_by_one, "loss"))
    stage = per_record * STAGE_RECORDS
    print(f"train records of {keys} fields, to a local MLflow server:")
    print(f"  one call per record (the trigger's worst case): {1000 * per_record:.0f} ms a record ({logged} logged)")
    print(f"  one call for {len(records)} records (tracking back after it was down): {at_once:.1f} s")
    print(
        f"  a 4-day stage's {STAGE_RECORDS} records one by one: {stage:.0f} s, {100 * stage / STAGE_S:.3f} % of it"
        " (target < 1 %)"
    )


if __name__ == "__main__":
    main()
