"""Benchmark: the checkpoint gate (safe load + finite check + hash + atomic promote) on a 2 GB UniAD-shaped
checkpoint, against `sha256sum` followed by `cp` of the same file, measured side by side in one run.

    .venv/bin/python benchmarks/bench_checkpoint_gate.py [--gb 2.0]      # or: make bench

Targets: the gate not slower than the two-pass baseline; the gate's peak RSS <= 0.3x the file size. The gate runs
in a fresh process; its time is reported with and without that process's start (python + torch import), and its
RSS both as a peak and as growth over the RSS after imports. Both sides read a warm page cache (the file was just
written), best of a few repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Peak RSS from VmHWM: ru_maxrss survives exec and would report the (large) parent's RSS at fork.
GATE = """
import json, sys, time
from uniad.artifacts.publish import promote_checkpoint
import torch  # noqa: F401  (imported by the gate anyway; counted in the RSS after imports)

def status_kb(key):
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith(key))

after_imports = status_kb("VmRSS:")
start = time.perf_counter()
provenance = promote_checkpoint(sys.argv[1], sys.argv[2], stage="stage1")
elapsed = time.perf_counter() - start
peak = status_kb("VmHWM:")
print(json.dumps({"seconds": elapsed, "peak_rss_kb": peak, "rss_after_imports_kb": after_imports,
                  "sha256": provenance["sha256"]}))
"""


def make_checkpoint(path: Path, gigabytes: float) -> None:
    """UniAD prefixes; model weights plus AdamW's two moments, as mmcv saves them (meta, state_dict, optimizer)."""
    import torch

    params = int(gigabytes * 1e9 / 4 / 3)  # fp32 weights + exp_avg + exp_avg_sq
    prefixes = [
        "img_backbone.layer",
        "img_neck.fpn",
        "pts_bbox_head.transformer",
        "seg_head.decoder",
        "query_interact.ffn",
        "memory_bank.update",
        "query_embedding",
        "reference_points",
    ]
    # Many tensors of up to 2M parameters (a ResNet-101 conv is 2.4M at most), as in a real checkpoint.
    sizes = [min(2_000_000, params - i) for i in range(0, params, 2_000_000)]
    prefixes = [f"{prefixes[i % len(prefixes)]}{i}" for i in range(len(sizes))]
    generator = torch.Generator().manual_seed(0)
    state = {f"{p}.weight": torch.randn(n, generator=generator) for p, n in zip(prefixes, sizes)}
    optimizer = {
        "state": {
            i: {
                "step": torch.tensor(1000.0),
                "exp_avg": torch.randn(t.numel(), generator=generator),
                "exp_avg_sq": torch.rand(t.numel(), generator=generator),
            }
            for i, t in enumerate(state.values())
        },
        "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999), "params": list(range(len(state)))}],
    }
    torch.save(
        {"meta": {"epoch": 6, "iter": 21102, "mmcv_version": "1.7.2"}, "state_dict": state, "optimizer": optimizer},
        path,
    )


def best(fn, repeats: int):
    results = [fn() for _ in range(repeats)]
    return min(results, key=lambda r: r[0] if isinstance(r, tuple) else r)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gb", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="uniad-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        tmp = Path(tmp)
        src = tmp / "epoch_6.pth"
        make_checkpoint(src, args.gb)
        size = src.stat().st_size
        print(f"checkpoint: {size / 1e9:.2f} GB, UniAD prefixes, weights + AdamW state")

        def baseline() -> float:
            (tmp / "baseline.pth").unlink(missing_ok=True)
            start = time.perf_counter()
            subprocess.run(["sha256sum", str(src)], check=True, capture_output=True)
            subprocess.run(["cp", str(src), str(tmp / "baseline.pth")], check=True)
            return time.perf_counter() - start

        def gate() -> tuple[float, float, dict]:
            dst = tmp / "ckpts" / "full_track_map.pth"
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", GATE, str(src), str(dst)], check=True, capture_output=True, text=True, cwd=REPO
            )
            wall = time.perf_counter() - start
            result = json.loads(done.stdout.strip().splitlines()[-1])
            return result["seconds"], wall, result

        base = best(baseline, args.repeats)
        gate_s, gate_wall, result = best(gate, args.repeats)
        expected = subprocess.run(["sha256sum", str(src)], check=True, capture_output=True, text=True).stdout.split()[0]
        assert result["sha256"] == expected, "the gate's hash differs from sha256sum's"
        peak = result["peak_rss_kb"] * 1024
        growth = (result["peak_rss_kb"] - result["rss_after_imports_kb"]) * 1024
        print(f"sha256sum + cp (baseline)            {base:6.2f} s")
        print(f"gate: inspect + hash + promote       {gate_s:6.2f} s   ratio {gate_s / base:.2f}x (target <= 1.0x)")
        print(f"gate incl. python + torch start      {gate_wall:6.2f} s   ratio {gate_wall / base:.2f}x")
        print(
            f"gate peak RSS                        {peak / 1e6:6.0f} MB   {peak / size:.2f}x the file (target <= 0.3x)"
        )
        print(f"gate RSS growth over its imports     {growth / 1e6:6.0f} MB   {growth / size:.2f}x the file")
        ok = gate_s <= base and peak <= 0.3 * size
        print("PASS" if ok else "MISS")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
