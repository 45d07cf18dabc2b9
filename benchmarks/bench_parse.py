"""Benchmark: the DAG file's parse cost, what every dag-processor pass and every task start pays.

    .venv/bin/python benchmarks/bench_parse.py      # part of make bench

Running the DAG file in a fresh interpreter after `import airflow.sdk`, median of 7, with bytecode cached as a
dag-processor has it (one warm-up run writes it; PYTHONDONTWRITEBYTECODE is dropped). Target: <= 30 ms. Printed
beside Airflow's own floor, probed in turn with it in the same run: benchmarks/dags/bench_empty_chain.py, a DAG
of the pipeline's shape whose tasks do nothing and which has no parameters; and `import airflow.sdk` itself.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DAG_FILE = REPO / "dags/uniad_e2e_training.py"
EMPTY_CHAIN = REPO / "benchmarks/dags/bench_empty_chain.py"
TARGET_S = 0.030


def parse_costs(dag_files: list[Path], repeats: int = 7, clock: str = "perf_counter") -> list[float]:
    """Median seconds of each DAG file's parse after ``import airflow.sdk`` by ``clock`` (wall time;
    ``process_time``: the probe's CPU time), the files probed in turn, round after round, so load on the machine
    falls on all of them alike."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

    def probe(dag_file: Path) -> float:
        code = (
            "import sys, time, runpy; import airflow.sdk; "
            f"sys.path.insert(0, {str(REPO / 'plugins')!r}); "
            f"t = time.{clock}(); runpy.run_path({str(dag_file)!r}); print(time.{clock}() - t)"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
        return float(done.stdout)

    for dag_file in dag_files:
        probe(dag_file)  # writes the bytecode caches
    rounds = [[probe(dag_file) for dag_file in dag_files] for _ in range(repeats)]
    return [statistics.median(column) for column in zip(*rounds)]


def import_cost(repeats: int = 7) -> float:
    """Median wall seconds of ``import airflow.sdk`` in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import airflow.sdk; print(time.perf_counter() - t)"
    return statistics.median(
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
        for _ in range(repeats)
    )


def main() -> int:
    parse_s, floor_s = parse_costs([DAG_FILE, EMPTY_CHAIN])
    sdk_s = import_cost()
    verdict = "met" if parse_s <= TARGET_S else "MISSED"
    print(
        f"DAG file parse after `import airflow.sdk`: {parse_s * 1000:.1f} ms (median of 7); the empty chain of the "
        f"same shape: {floor_s * 1000:.1f} ms, ratio {parse_s / floor_s:.2f}x; import airflow.sdk itself: "
        f"{sdk_s * 1000:.0f} ms; target <= {TARGET_S * 1000:.0f} ms: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
