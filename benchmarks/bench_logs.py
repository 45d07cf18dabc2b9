"""Benchmark: the health analysis against the cost of merely reading the log, and polling a growing log.

    .venv/bin/python benchmarks/bench_logs.py            # or: make bench

1. A generated 7,000-record, 100+-key UniAD-shaped log (stage 2 on 8 GPUs is ~7,000 records): `analyze` (parse +
   analysis, no plots) vs a plain `json.loads` loop over the same file. Target: ratio <= 1.5.
2. A LogReader that has read that log polls it after a one-record append, vs reading the whole log again: a poll
   must cost O(new bytes), so its time must not grow with the log.
Each timing is the best of several repeats, measured side by side in one run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from uniad.health.analysis import analyze_log  # noqa: E402
from uniad.health.logs import LogReader  # noqa: E402
from uniad.health.reference import reference_config, reference_records, write_json_log  # noqa: E402

REPEATS = 5


def best(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def json_floor(path: Path) -> None:
    with open(path) as handle:
        for line in handle:
            json.loads(line)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        # 20 epochs of 3,500 iterations logged every 10: 7,000 records.
        records = reference_records(epochs=20, iters_per_epoch=3500, seed=1, map_layers=7)
        assert len(records) == 7000
        keys = len(records[0])
        path = write_json_log(Path(tmp) / "20240101_000000.log.json", records, config=reference_config(20))
        size_mb = path.stat().st_size / 1e6

        floor = best(lambda: json_floor(path))
        full = best(lambda: analyze_log(path))
        verdict = analyze_log(path)[0].verdict
        print(f"log: {len(records)} records x {keys} keys, {size_mb:.1f} MB; analysis verdict: {verdict}")
        print(f"json.loads loop (floor)   {floor * 1e3:8.1f} ms")
        print(f"analyze (parse+analysis)  {full * 1e3:8.1f} ms   ratio {full / floor:.2f}x   (target <= 1.5x)")

        small = Path(tmp) / "small.log.json"
        write_json_log(small, records[:700], config=reference_config(20))
        line = json.dumps(records[-1]) + "\n"
        poll_times = {}
        for name, log in (("700-record log", small), ("7,000-record log", path)):
            reader = LogReader(log)
            reader.poll()

            def append_and_poll(reader=reader, log=log):
                with open(log, "a") as handle:
                    handle.write(line)
                assert len(reader.poll()) == 1

            poll_times[name] = best(append_and_poll, repeats=20)
        reread = best(lambda: LogReader(path).poll())
        for name, seconds in poll_times.items():
            print(f"poll after 1-record append, {name:17s} {seconds * 1e6:8.1f} us")
        print(f"re-reading the whole 7,000-record log   {reread * 1e6:8.1f} us")
        growth = poll_times["7,000-record log"] / poll_times["700-record log"]
        print(f"poll cost ratio (10x larger log)        {growth:.2f}x   (constant cost: ~1x)")
        print(f"poll vs full re-read                    {poll_times['7,000-record log'] / reread:.4f}x")
        ok = full / floor <= 1.5 and growth < 3
        print("PASS" if ok else "MISS")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
