"""Experiment tracking on a real MLflow store (a SQLite file, as make demo uses): a stage's runs are found again by a
retry, no step is logged twice, and a tracking server that is down costs a stage nothing."""

from __future__ import annotations

import time

import pytest

from uniad.tracking import PAUSE_S, Tracking


def records(epochs: range, per_epoch: int = 40, every: int = 10) -> list[dict]:
    return [
        {
            "mode": "train",
            "epoch": e,
            "iter": i,
            "iters_per_epoch": per_epoch,
            "loss": 100.0 / (e * per_epoch + i),
            "lr": 2e-4,
            "time": 0.5,
            "map.loss_cls": 0.3,
            "note": "not a number",
        }
        for e in epochs
        for i in range(every, per_epoch + 1, every)
    ]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def test_a_retried_stage_goes_on_in_the_same_runs_and_logs_no_step_twice(store, tmp_path):
    first = Tracking(store)
    run = first.stage_run("manual__1", "stage1", params={"epochs": 6, "executor": "local"}, tags={"airflow.url": "u"})
    assert run is not None and first.skipped == []
    assert first.log_records(run, records(range(1, 3)), first.logged_step(run)) == 80  # 2 epochs of 40 iterations

    # A new attempt (another process) replays the log from epoch 1 and resumes in epoch 3.
    again = Tracking(store)
    assert again.stage_run("manual__1", "stage1", params={"epochs": 6, "executor": "local"}) == run
    after = again.logged_step(run)
    assert after == 80
    assert again.log_records(run, records(range(1, 4)), after) == 120
    history = again.client.get_metric_history(run, "loss")
    assert sorted(m.step for m in history) == list(range(10, 121, 10))  # each step once
    metrics = again.client.get_run(run).data.metrics
    assert {"loss", "lr", "time", "map.loss_cls"} <= set(metrics) and "note" not in metrics

    for job in ("101", "102", "101"):  # a Slurm job, its continuation, the first again (a re-attaching attempt)
        again.add_to_tag(run, "uniad.slurm_jobs", job)
    assert again.client.get_run(run).data.tags["uniad.slurm_jobs"] == "101,102"

    other = again.stage_run("manual__1", "stage2", params={"epochs": 20})
    parent = again.client.get_run(run).data.tags["mlflow.parentRunId"]
    assert other != run and again.client.get_run(other).data.tags["mlflow.parentRunId"] == parent
    assert again.stage_run("manual__2", "stage1", params={}) not in (run, other)  # another pipeline run

    again.log_evaluations(run, [(1, {"amota": 0.2}), (2, {"amota": 0.3, "note": "x"})])
    again.log_evaluations(run, [(1, {"amota": 0.2}), (2, {"amota": 0.3})])  # the gate run again: not twice
    assert sorted((m.step, m.value) for m in again.client.get_metric_history(run, "val/amota")) == [(1, 0.2), (2, 0.3)]
    report = tmp_path / "health"
    report.mkdir()
    (report / "report.md").write_text("# HEALTHY\n")
    assert again.log_artifacts(run, [(report, "health"), (tmp_path / "absent.jsonl", "jobs")]) == ["health"]
    again.end_pipeline("manual__1", "FINISHED")
    assert again.client.get_run(run).info.status == again.client.get_run(other).info.status == "FINISHED"


def test_a_tracking_server_that_is_down_costs_nothing_and_says_so():
    down = Tracking("http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    assert down.stage_run("manual__1", "stage1", params={"epochs": 6}) is None
    assert down.log_records("some-run", records(range(1, 2))) is None
    assert down.logged_step("some-run") is None
    down.end_pipeline("manual__1", "FAILED")
    assert time.monotonic() - started < 10
    assert len(down.skipped) == 1 and down.skipped[0].startswith("opening the stage's run:")  # then paused
    assert not down.on and PAUSE_S >= 60
    assert Tracking(None).stage_run("manual__1", "stage1", params={}) is None  # off: no call at all
