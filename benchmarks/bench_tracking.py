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

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uniad.health.reference import reference_records  # noqa: E402
from uniad.tracking import Tracking  # noqa: E402

STAGE_S = 4 * 24 * 3600.0
STAGE_RECORDS = 7000
PER_RECORD_SAMPLE = 500
PER_EPOCH = 3517


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    records = [{**r, "iters_per_epoch": PER_EPOCH} for r in reference_records() if r.get("mode") == "train"]
    keys = len(records[0])
    with tempfile.TemporaryDirectory() as scratch:
        port = free_port()
        mlflow = Path(sys.executable).parent / "mlflow"
        server = subprocess.Popen(
            [
                str(mlflow),
                "server",
                "--backend-store-uri",
                f"sqlite:///{scratch}/mlflow.db",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    urllib.request.urlopen(f"{url}/health", timeout=2)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise SystemExit("the MLflow server did not start") from None
                    time.sleep(0.5)
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
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=30)
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
