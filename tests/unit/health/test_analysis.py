"""Health analysis on the reference run's curve, and each finding provoked on purpose."""

from __future__ import annotations

import math

import pytest

from uniad.health.analysis import analyze
from uniad.health.monitor import ERROR, HealthMonitor, Thresholds
from uniad.health.reference import REFERENCE_CONFIG, reference_records
from uniad.health.report import write_report
from uniad.health.schedule import ScheduleConfig

META = {"config": REFERENCE_CONFIG}
N = 3517


@pytest.fixture(scope="module")
def reference():
    return reference_records(stop=(4, 540))


def codes(analysis):
    return {f.code for f in analysis.findings}


def test_reference_run_is_healthy_with_default_thresholds(reference):
    a = analyze(reference, META, iters_per_epoch=N)
    assert a.verdict == "healthy", a.findings
    assert codes(a) == {"zero_by_design"}
    assert a.latest == {"epoch": 4, "iter": 540, "iters_per_epoch": N}
    assert a.progress == pytest.approx((3 * N + 540) / (6 * N))
    assert a.total_epochs == 6
    assert a.loss["first"] == pytest.approx(105.67, rel=0.03) and a.loss["latest"] == pytest.approx(48, rel=0.05)
    assert a.lr == {"peak": 0.0002, "latest": 0.0001}
    assert 50 <= a.grad_norm["median"] <= 60
    assert a.components["map.loss_bbox"]["first"] == pytest.approx(1.69, rel=0.1)
    assert a.components["track.frame_0_loss_past_trajs_0"] == {"first": 0.0, "latest": 0.0}
    points = [m["point"] for m in a.milestones]
    assert points == ["start", "warmup done", "end of epoch 1", "end of epoch 2", "end of epoch 3", "latest"]


def test_nan_loss_is_unhealthy_with_its_location(reference):
    records = [dict(r) for r in reference]
    records[500]["loss"] = math.nan
    records[501]["grad_norm"] = math.inf
    a = analyze(records, META, iters_per_epoch=N)
    assert a.verdict == "unhealthy"
    nan = next(f for f in a.findings if f.code == "non_finite_loss")
    assert (nan.severity, nan.epoch, nan.iter) == (ERROR, records[500]["epoch"], records[500]["iter"])
    assert "non_finite_grad_norm" in codes(a)


def test_grad_norm_explosion(reference):
    records = [dict(r) for r in reference]
    records[700]["grad_norm"] = 5000.0
    a = analyze(records, META, iters_per_epoch=N)
    finding = next(f for f in a.findings if f.code == "grad_norm_explosion")
    assert finding.severity == ERROR and (finding.epoch, finding.iter) == (records[700]["epoch"], records[700]["iter"])


def test_single_loss_spike_is_a_warning(reference):
    records = [dict(r) for r in reference]
    records[800]["loss"] = 200.0
    a = analyze(records, META, iters_per_epoch=N)
    assert a.verdict == "warning" and "loss_spike" in codes(a)


def test_divergence(reference):
    records = [dict(r) for r in reference]
    for i, r in enumerate(records[600:]):
        r["loss"] = 50.0 * (1 + i / 100)
    a = analyze(records, META, iters_per_epoch=N)
    assert "divergence" in codes(a) and a.verdict == "unhealthy"


def test_plateau(reference):
    records = [dict(r) for r in reference]
    for r in records[700:]:
        r["loss"] = 50.0
    a = analyze(records, META, iters_per_epoch=N)
    assert "plateau" in codes(a) and a.verdict == "warning"


def test_component_that_becomes_exactly_zero_is_the_nan_signature(reference):
    records = [dict(r) for r in reference]
    for r in records[900:]:
        r["map.loss_mask_things"] = 0.0
    a = analyze(records, META, iters_per_epoch=N)
    finding = next(f for f in a.findings if f.code == "component_became_zero")
    assert finding.severity == ERROR and "map.loss_mask_things" in finding.message
    assert (finding.epoch, finding.iter) == (records[900]["epoch"], records[900]["iter"])


def test_always_zero_component_warns_unless_disabled_by_config(reference):
    records = [dict(r, **{"planning.loss_collision_0": 0.0}) for r in reference]
    a = analyze(records, META, iters_per_epoch=N)
    finding = next(f for f in a.findings if f.code == "component_always_zero")
    assert "planning.loss_collision_0" in finding.message and "track." not in finding.message
    # Without loss_past_traj_weight=0.0 in the config, zero past-trajectory losses are suspicious too.
    a = analyze(reference, {"config": REFERENCE_CONFIG.replace("loss_past_traj_weight=0.0", "x=1")}, iters_per_epoch=N)
    assert "component_always_zero" in codes(a) and "zero_by_design" not in codes(a)


def test_lr_schedule_mismatch(reference):
    records = [dict(r, lr=0.0002) for r in reference]  # constant lr: no warmup, no cosine
    a = analyze(records, META, iters_per_epoch=N)
    finding = next(f for f in a.findings if f.code == "lr_schedule")
    assert (finding.epoch, finding.iter) == (1, 10) and "warmup phase" in finding.message
    records = [dict(r, lr=r["lr"] * 2) for r in reference]
    assert "lr_peak" in codes(analyze(records, META, iters_per_epoch=N))


def test_expected_lr_follows_mmcv_cosine_with_linear_warmup():
    schedule = ScheduleConfig.from_text(REFERENCE_CONFIG)
    assert (schedule.lr, schedule.policy, schedule.warmup_iters, schedule.max_epochs) == (
        2e-4,
        "CosineAnnealing",
        500,
        6,
    )
    assert schedule.expected_lr(1, 1, N) == pytest.approx(2e-4 / 3)
    assert schedule.expected_lr(1, 501, N) == pytest.approx(2e-4)
    assert schedule.expected_lr(4, 100, N) == pytest.approx(2e-7 + 0.5 * (2e-4 - 2e-7))


def test_stall_in_a_finished_analysis(reference):
    a = analyze(reference, META, iters_per_epoch=N, silence_s=3600)
    assert "stall" in codes(a)
    assert "stall" not in codes(analyze(reference, META, iters_per_epoch=N, silence_s=30))


def test_live_stall_detection_counts_output_as_liveness():
    monitor = HealthMonitor(Thresholds(stall_factor=2, stall_min_s=10))
    for i in range(4):
        monitor.feed({"mode": "train", "epoch": 1, "iter": 10 * (i + 1), "loss": 1.0}, now=float(i))
    assert monitor.usual_interval() == 1.0
    assert monitor.check_stall(now=12.0) is None  # 9 s of silence < 10 s
    assert monitor.check_stall(now=20.0, last_output_at=15.0) is None  # output 5 s ago: alive (evaluation)
    finding = monitor.check_stall(now=30.0, last_epoch=1, last_iter=40, last_output_at=15.0)
    assert finding.code == "stall" and finding.severity == ERROR and "epoch 1 iter 40" in finding.message
    assert monitor.fatal is finding
    assert monitor.check_stall(now=40.0) is None  # reported once


def test_live_watch_warns_once_when_a_heads_loss_becomes_exactly_zero():
    """UniAD's nan_to_num logs a NaN head loss as 0.0: a warning (the run trains on, people are told), once per
    component; a component that has been 0.0 from the start (disabled by design, e.g. past trajectories) is not."""
    monitor = HealthMonitor(Thresholds(zero_run=3))
    record = {"mode": "train", "epoch": 1, "loss": 2.0, "map.loss_cls": 0.7, "track.loss_past_trajs": 0.0}
    new = []
    for i in range(1, 10):
        cls = 0.7 if i < 5 else 0.0  # zero from iter 50 on
        new += monitor.feed({**record, "iter": 10 * i, "map.loss_cls": cls}, now=float(i))
    (finding,) = new
    assert (finding.severity, finding.code, finding.epoch, finding.iter) == ("warning", "component_became_zero", 1, 70)
    assert "map.loss_cls was 0.7 and is exactly 0.0 in the last 3 records" in finding.message
    assert monitor.fatal is None


def test_thresholds_are_validated():
    with pytest.raises(ValueError, match="stall_min_s"):
        Thresholds(stall_min_s=-1)


def test_no_records_is_a_warning():
    assert analyze([], None).verdict == "warning"


def test_report_renders_markdown_and_plots(reference, tmp_path):
    a = analyze(reference, META, iters_per_epoch=N)
    md = write_report(a, reference, tmp_path, title="stage1")
    text = md.read_text()
    assert text.startswith("# stage1: HEALTHY")
    assert "| warmup done | 1 | 500 |" in text and "| end of epoch 3 | 3 | 3510 |" in text
    assert "| track |" in text and "| map |" in text
    for name in ("loss.png", "loss_by_task.png", "grad_norm.png", "lr.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
        assert f"]({name})" in text


def test_streaming_log_analysis_matches_in_memory(reference, tmp_path):
    from uniad.health.analysis import analyze_log
    from uniad.health.reference import write_json_log

    records = [dict(r) for r in reference]
    for r in records[900:]:
        r["map.loss_mask_things"] = 0.0
    path = write_json_log(tmp_path / "x.log.json", records)
    with open(path, "a") as handle:
        handle.write('{"mode": "train", "epoch": 4, "iter": 550, "lo')  # a half-written last line
    streamed, _, meta = analyze_log(path, iters_per_epoch=N)
    in_memory = analyze(records, meta, iters_per_epoch=N)
    assert streamed.to_dict() == in_memory.to_dict()
    assert "component_became_zero" in codes(streamed)
