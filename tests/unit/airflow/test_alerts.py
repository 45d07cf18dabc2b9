"""Alerts through the apprise provider to a real HTTP endpoint on loopback: once per kind and stage of a run, what
was sent kept in the work dir, and a target that is down or no connection at all never stops a stage."""

from __future__ import annotations

import json

import pytest

from support import apprise_connection, http_receiver


@pytest.fixture
def receiver():
    with http_receiver() as (port, received):
        yield port, received


def test_one_alert_per_kind_and_stage_of_a_run(tmp_path, monkeypatch, receiver):
    from uniad_airflow.alerts import StageAlerts

    port, received = receiver
    monkeypatch.setenv("AIRFLOW_CONN_UNIAD_NOTIFY", apprise_connection(f"json://127.0.0.1:{port}/alerts"))
    alerts = StageAlerts(tmp_path, "scheduled__2026-12-01", "stage1")
    said = alerts.alert("stall", "no new log records or output for 640 s", failure=True, epoch=3, it=120)
    assert said.startswith("alert stall sent to 1 apprise target(s)"), said
    # A retry, a restarted triggerer: the same kind of the same stage is not sent again, even by another follower.
    assert StageAlerts(tmp_path, "scheduled__2026-12-01", "stage1").alert("stall", "again", failure=True) is None
    assert alerts.alert("component_became_zero", "map.loss_cls was 0.7 and is exactly 0.0") is not None
    assert StageAlerts(tmp_path, "scheduled__2026-12-01", "stage2").alert("stall", "stage 2's own") is not None
    assert StageAlerts(tmp_path, "manual__next", "stage1").alert("stall", "the next run's own") is not None

    assert [(r["title"], r["type"]) for r in received] == [
        ("[UniAD] stage1 of scheduled__2026-12-01: stall at epoch 3 iter 120", "failure"),
        ("[UniAD] stage1 of scheduled__2026-12-01: component_became_zero", "warning"),
        ("[UniAD] stage2 of scheduled__2026-12-01: stall", "warning"),
        ("[UniAD] stage1 of manual__next: stall", "warning"),
    ]
    first = received[0]["message"]
    assert "no new log records or output for 640 s" in first and "/uniad/runs/scheduled__2026-12-01" in first
    kept = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(r["run_id"], r["stage"], r["kind"]) for r in kept] == [
        ("scheduled__2026-12-01", "stage1", "stall"),
        ("scheduled__2026-12-01", "stage1", "component_became_zero"),
        ("scheduled__2026-12-01", "stage2", "stall"),
        ("manual__next", "stage1", "stall"),
    ]
    assert all("sent_to" in r for r in kept)


def test_an_alert_that_cannot_go_out_is_said_and_recorded_never_raised(tmp_path, monkeypatch, receiver):
    from uniad_airflow.alerts import StageAlerts

    port, received = receiver
    monkeypatch.delenv("AIRFLOW_CONN_UNIAD_NOTIFY", raising=False)
    said = StageAlerts(tmp_path, "r", "stage1").alert("loss_spike", "loss 9.1 is 3.2x its running median")
    assert said == "alert loss_spike not sent: no connection 'uniad_notify'"

    monkeypatch.setenv("AIRFLOW_CONN_UNIAD_NOTIFY", apprise_connection("json://127.0.0.1:9/down"))  # nothing listens
    said = StageAlerts(tmp_path, "r", "stage1").alert("stall", "no new records", failure=True)
    assert said.startswith("alert stall not sent: delivery failed"), said
    kept = [json.loads(line) for line in (tmp_path / "alerts.jsonl").read_text().splitlines()]
    assert [(r["kind"], "not_sent" in r) for r in kept] == [("loss_spike", True), ("stall", True)]
    assert received == []


def test_run_notifications_go_through_the_same_apprise_connection(monkeypatch, receiver):
    from types import SimpleNamespace

    from uniad_airflow.notify import RunOutcomeNotifier

    port, received = receiver
    monkeypatch.setenv("AIRFLOW_CONN_UNIAD_NOTIFY", apprise_connection(f"json://127.0.0.1:{port}/runs"))
    context = {
        "dag": SimpleNamespace(dag_id="uniad_e2e_training"),
        "run_id": "manual__1",
        "ti": SimpleNamespace(task_id="validate_stage1", try_number=1),
    }
    RunOutcomeNotifier(outcome="failed").notify(context)
    (message,) = received
    assert message["title"] == "[UniAD] uniad_e2e_training manual__1 failed" and message["type"] == "failure"
    assert "Failed task: <b>validate_stage1</b>" in message["message"]
