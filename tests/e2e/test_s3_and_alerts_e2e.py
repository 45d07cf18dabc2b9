"""The DAG with its production features on: pretrained weights pulled from S3, artifacts uploaded to S3 through
the amazon provider's hook, the promoted checkpoint's Asset event, email notifications through the smtp provider, and
alerts while a run goes wrong through the apprise provider. A real S3-compatible server, a real SMTP server and an
HTTP endpoint run on loopback; connections come from the environment, as a deployment's secrets backend would give
them."""

from __future__ import annotations

import asyncio
import json
import os
import time
from email import message_from_bytes
from email.policy import default as email_policy
from pathlib import Path
from urllib.parse import quote

import pytest

from support import BIN, apprise_connection, http_receiver, run
from uniad.artifacts.checkpoints import sha256_file
from uniad.health.logs import read_log
from uniad.tracking import global_step
from uniad.train.launch import find_free_port
from uniad.workdir import provenance_path, sanitize_run_id

DAG_ID = "uniad_e2e_training"
BUCKET = "uniad-e2e"
MLFLOW_BUCKET = "uniad-mlflow"
# A metric of each stage's evaluation: in the json log (stage 1), printed by rank 0 only (stage 2's planning).
VAL_METRIC = {"stage1": "pts_bbox_NuScenes/amota", "stage2": "planning/L2_avg"}


@pytest.fixture
def smtp_receiver():
    """An SMTP server on loopback that keeps what it receives."""
    from aiosmtpd.controller import Controller

    received = []

    class Keep:
        async def handle_DATA(self, server, session, envelope):
            received.append(message_from_bytes(envelope.content, policy=email_policy))
            return "250 OK"

    controller = Controller(Keep(), hostname="127.0.0.1", port=find_free_port())
    controller.start()
    try:
        yield controller.port, received
    finally:
        controller.stop()


@pytest.fixture
def mlflow_server(s3_server, s3_client, tmp_path):
    """A real MLflow tracking server on loopback: runs in SQLite, artifacts on the S3 server (served through the
    tracking server, as in production). Its URL and a client of it."""
    from mlflow.tracking import MlflowClient

    from services import mlflow_server as tracking_server

    s3_client.create_bucket(Bucket=MLFLOW_BUCKET)
    env = {
        "MLFLOW_S3_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    artifacts = f"s3://{MLFLOW_BUCKET}/artifacts"
    with tracking_server(tmp_path / "mlflow.db", tmp_path / "mlflow.log", artifacts=artifacts, env=env) as url:
        yield url, MlflowClient(tracking_uri=url)


@pytest.fixture
def bucket(s3_client):
    s3_client.create_bucket(Bucket=BUCKET)
    return s3_client


def connections(s3_server: str, smtp_port: int) -> dict[str, str]:
    aws = {
        "conn_type": "aws",
        "login": "test",
        "password": "test",
        "extra": {"endpoint_url": s3_server, "region_name": "us-east-1"},
    }
    smtp = {
        "conn_type": "smtp",
        "host": "127.0.0.1",
        "port": smtp_port,
        "extra": {
            "to": ["ml-oncall@example.com"],
            "from_email": "uniad@example.com",
            "disable_ssl": True,
            "disable_tls": True,
        },
    }
    return {"AIRFLOW_CONN_UNIAD_S3": json.dumps(aws), "AIRFLOW_CONN_UNIAD_NOTIFY": json.dumps(smtp)}


def test_pretrained_from_s3_artifacts_to_s3_asset_event_success_email_and_tracking(
    airflow_home, s3_server, bucket, smtp_receiver, mlflow_server, tmp_path
):
    smtp_port, received = smtp_receiver
    pretrained = tmp_path / "bevformer_tiny.pth"
    pretrained.write_bytes(os.urandom(300_000))
    bucket.upload_file(str(pretrained), BUCKET, "pretrained/bevformer_tiny.pth")
    root = tmp_path / "uniad-mini"
    conf = {
        "profile": "mini",
        "uniad_root": str(root),
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "s3_uri": f"s3://{BUCKET}/runs",
        "aws_conn_id": "uniad_s3",
        "pretrained_s3_uris": [f"s3://{BUCKET}/pretrained/bevformer_tiny.pth"],
    }
    tracking_uri, mlflow = mlflow_server
    done = run(
        [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        env={**connections(s3_server, smtp_port), "MLFLOW_TRACKING_URI": tracking_uri},
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert "Marking run" in output and "successful" in output
    assert "tracking skipped" not in output

    # Pretrained weights landed in ckpts/, verified.
    assert sha256_file(root / "ckpts/bevformer_tiny.pth") == sha256_file(pretrained)

    # Artifacts under s3://uniad-e2e/runs/<run id>/, each with the local file's sha256.
    run_id = next(
        line.split("run_id=", 1)[1].split(",", 1)[0] for line in output.splitlines() if "DagRun Finished" in line
    )
    prefix = f"runs/{sanitize_run_id(run_id)}/"
    keys = {o["Key"][len(prefix) :] for o in bucket.list_objects_v2(Bucket=BUCKET, Prefix=prefix)["Contents"]}
    stage1 = root / "projects/work_dirs/stage1_track_map/full_track_map"
    stage2 = root / "projects/work_dirs/stage2_e2e/full_e2e"
    expected = {
        "ckpts/full_track_map.pth": root / "ckpts/full_track_map.pth",
        "ckpts/full_track_map.pth.provenance.json": provenance_path(root / "ckpts/full_track_map.pth"),
        "stage1/health/report.md": stage1 / "health/report.md",
        "stage2/epoch_1.pth": stage2 / "epoch_1.pth",
        "stage2/health/loss.png": stage2 / "health/loss.png",
    }
    assert set(expected) <= keys, keys
    assert not {k for k in keys if k.startswith("stage1/") and k.endswith(".pth")}  # promoted copy only, once
    assert {k for k in keys if k.endswith(".log.json")} == {
        f"stage{n}/{p.name}" for n, d in ((1, stage1), (2, stage2)) for p in d.glob("*.log.json")
    }
    for key, path in expected.items():
        head = bucket.head_object(Bucket=BUCKET, Key=prefix + key)
        assert head["Metadata"]["sha256"] == sha256_file(path), key

    # The promoted checkpoint's Asset event says where it is and what it is.
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == "uniad_stage1_checkpoint", AssetEvent.source_run_id == run_id)
        ).all()
        extras = [e.extra for e in events]
    provenance = json.loads(provenance_path(root / "ckpts/full_track_map.pth").read_text())
    assert extras == [{"path": provenance["path"], "epoch": 1, "sha256": provenance["sha256"], "run_id": run_id}]

    # Experiment tracking: one MLflow run for the pipeline run, a nested run per stage with the plan as params, every
    # train record's metrics at its global step, the evaluation, the gate's report on S3, all ended FINISHED.
    experiment = mlflow.get_experiment_by_name("uniad_e2e_training")
    runs = {r.data.tags["uniad.stage"]: r for r in mlflow.search_runs([experiment.experiment_id])}
    assert set(runs) == {"pipeline", "stage1", "stage2"}, runs
    parent = runs["pipeline"].info.run_id
    assert runs["pipeline"].data.tags["airflow.run_id"] == run_id and runs["pipeline"].info.status == "FINISHED"
    for stage, work in (("stage1", stage1), ("stage2", stage2)):
        tracked = runs[stage]
        assert tracked.data.tags["mlflow.parentRunId"] == parent and tracked.info.status == "FINISHED", tracked
        assert tracked.data.tags["uniad.local_jobs"] and tracked.data.tags["uniad.dashboard"].endswith(
            f"/uniad/runs/{quote(run_id, safe='')}"
        )
        assert tracked.data.tags["airflow.url"].endswith(f"/dags/{DAG_ID}/runs/{quote(run_id, safe='')}")
        params = tracked.data.params
        assert (params["epochs"], params["executor"], params["world_size"]) == ("1", "local", "2"), params
        assert params["config_sha256"] == sha256_file(root / params["config"])
        (log,) = work.glob("*.log.json")
        train = [r for r in read_log(log)[0] if r.get("mode") == "train"]
        history = mlflow.get_metric_history(tracked.info.run_id, "loss")
        # The follower reads mmcv's text log, which has 4 decimals; the json log has 5.
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [r["loss"] for r in train], abs=1e-4
        )
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [10, 20, 30, 40]  # 40 iterations, every 10
        assert mlflow.get_metric_history(tracked.info.run_id, "lr") and mlflow.get_metric_history(
            tracked.info.run_id, "grad_norm"
        )
        assert [m.step for m in mlflow.get_metric_history(tracked.info.run_id, "val/" + VAL_METRIC[stage])] == [1]
        artifacts = {a.path for a in mlflow.list_artifacts(tracked.info.run_id, "health")}
        assert "health/report.md" in artifacts and "health/loss.png" in artifacts, artifacts
        assert {a.path for a in mlflow.list_artifacts(tracked.info.run_id, "config")} == {
            f"config/{Path(params['config']).name}"
        }
    stored = bucket.list_objects_v2(Bucket=MLFLOW_BUCKET, Prefix="artifacts/")["Contents"]
    assert any(o["Key"].endswith("/health/report.md") for o in stored)

    # One success email, with the dashboard's link.
    assert len(received) == 1, [m["Subject"] for m in received]
    mail = received[0]
    assert mail["Subject"] == f"[UniAD] {DAG_ID} {run_id} succeeded" and mail["To"] == "ml-oncall@example.com"
    assert "/uniad/runs/" in mail.get_body().get_content()


def test_a_failed_run_sends_a_failure_email(airflow_home, s3_server, smtp_receiver):
    smtp_port, received = smtp_receiver
    conf = {"profile": "uniad", "uniad_root": "/nonexistent/UniAD"}
    done = run(
        [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        env=connections(s3_server, smtp_port),
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert len(received) == 1, done.stdout[-3000:]
    body = received[0].get_body().get_content()
    assert received[0]["Subject"].endswith(" failed") and "Failed task: <b>preflight</b>" in body


def test_alerts_reach_people_while_a_run_goes_wrong(airflow_home, tmp_path):
    """Alerts through an apprise connection to an HTTP endpoint on loopback. Stage 1's rank 0 hangs on its first try
    (a stall: the job is stopped and retried); stage 2's map head loss becomes exactly 0.0 as training goes on (as
    UniAD logs a NaN term), which its gate then fails. One alert each, while it happened, with the stage and the
    numbers; the gate's finding of the same kind is not sent again; then the run's failure. The tracking server is
    down all along: the stages train, retry and are judged as they would be."""
    root = tmp_path / "uniad-mini-alerts"
    fault = "fault_injection"
    conf = {
        "profile": "mini",
        "uniad_root": str(root),
        "stage1_epochs": 1,
        "stage2_epochs": 1,
        "stall_timeout_s": 30,
        "stage1_cfg_options": [f"{fault}.kind=hang", f"{fault}.epoch=1", f"{fault}.iter=25", f"{fault}.once=True"],
        "stage2_cfg_options": [f"{fault}.kind=zero_head", f"{fault}.epoch=1", f"{fault}.iter=5"],
    }
    with http_receiver() as (port, received):
        env = {
            "AIRFLOW_CONN_UNIAD_NOTIFY": apprise_connection(f"json://127.0.0.1:{port}/uniad"),
            "UNIAD_RETRY_DELAY_S": "2",
            "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # the tracking server down: nothing listens there
        }
        done = run(
            [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)], env=env, timeout=600, check=False
        )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    run_id = next(
        line.split("run_id=", 1)[1].split(",", 1)[0] for line in output.splitlines() if "DagRun Finished" in line
    )
    titles = [message["title"] for message in received]
    assert len(titles) == len(set(titles)), titles  # nothing said twice

    (stall,) = [m for m in received if m["title"].startswith(f"[UniAD] stage1 of {run_id}: stall")]
    assert stall["type"] == "failure" and "no new log records or output for" in stall["message"], stall
    (zero,) = [m for m in received if m["title"].startswith(f"[UniAD] stage2 of {run_id}: component_became_zero")]
    assert zero["type"] == "warning" and "map.loss_cls was" in zero["message"] and "/uniad/runs/" in zero["message"]
    assert received[-1]["title"] == f"[UniAD] {DAG_ID} {run_id} failed", titles
    assert "Failed task: <b>validate_stage2</b>" in received[-1]["message"]
    # The zero head was alerted while stage 2 trained (its trigger), before the gate found it too.
    stage2 = root / "projects/work_dirs/stage2_e2e/full_e2e"
    kept = [json.loads(line) for line in (stage2 / "alerts.jsonl").read_text().splitlines()]
    assert kept[0]["kind"] == "component_became_zero" and kept[0]["sent_to"], kept
    assert kept[0]["time"] < (stage2 / "health/report.md").stat().st_mtime  # before the gate wrote its report
    assert "alert component_became_zero sent to 1 apprise target(s)" in output
    print("alerts received:", titles)
    # Tracking down from the start: every stage ran as it would have, and each task said tracking was skipped.
    assert "experiment tracking skipped for now: opening the stage's run:" in output
    assert "[UniAD] stage1 of" in titles[0] and "validate_stage2" in received[-1]["message"]  # the run went on


def test_a_tracking_server_lost_in_the_middle_of_a_stage_costs_it_nothing(tmp_path):
    """The trigger's batches to a real MLflow server that goes away mid-stage: the batch during the outage fails at
    once (the trigger goes on following the stage) and says tracking was skipped; the records wait, and the stage's
    last batch, once the server is back, logs every one of them at its step. Shipped pause (60 s), not shortened."""
    from services import mlflow_server as tracking_server
    from uniad.health.reference import reference_records
    from uniad.tracking import Tracking
    from uniad_airflow.triggers import TRACK_EVERY_S, RecordTracker

    records = [{**r, "iters_per_epoch": 3517} for r in reference_records(stop=(1, 300)) if r.get("mode") == "train"]
    first, during, last = records[:10], records[10:20], records[20:]
    port, store = find_free_port(), tmp_path / "mlflow.db"
    with tracking_server(store, tmp_path / "mlflow.log", port=port) as url:
        stage_run = Tracking(url).stage_run("outage_run", "stage1", params={})
        os.environ["MLFLOW_TRACKING_URI"] = url
        try:
            tracker = RecordTracker(stage_run)
            asyncio.run(tracker.add(first, flush=True))
        finally:
            del os.environ["MLFLOW_TRACKING_URI"]
    assert tracker.pending == [] and tracker.after == global_step(first[-1])

    started = time.monotonic()
    tracker.sent_at -= TRACK_EVERY_S  # 30 s on: the next batch is due, and the server is gone
    asyncio.run(tracker.add(during))
    assert time.monotonic() - started < 10 and len(tracker.pending) == len(during)
    assert tracker.tracking.skipped and tracker.tracking.skipped[-1].startswith("logging metrics")
    tracker.sent_at -= TRACK_EVERY_S
    asyncio.run(tracker.add(last[:5]))  # due again but tracking pauses after the failure: no call, the records wait
    assert len(tracker.tracking.skipped) == 1 and len(tracker.pending) == len(during) + 5
    with tracking_server(store, tmp_path / "mlflow-again.log", port=port) as url:
        asyncio.run(tracker.add(last[5:], flush=True))  # the stage ended: its last batch
        history = Tracking(url).client.get_metric_history(stage_run, "loss")
    assert tracker.pending == []
    assert sorted(m.step for m in history) == [global_step(r) for r in records]
