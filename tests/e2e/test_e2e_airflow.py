"""The whole DAG on the mini profile: once through `airflow dags test`, once through a real scheduler."""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from services import api_healthy, api_token, cli_json, http, service_group
from support import BIN, processes_mentioning, run, training_pools
from uniad.artifacts.checkpoints import inspect_checkpoint, sha256_file
from uniad.health.logs import read_log
from uniad.train.launch import find_free_port
from uniad.workdir import provenance_path

DAG_ID = "uniad_e2e_training"


def test_dags_test_leaves_the_reference_layout(reference_run):
    root, output = reference_run["root"], reference_run["output"]
    assert "[stage1] epoch 6/6 iter 40/40 | 100.0%" in output
    assert "[stage2] epoch 20/20 iter 40/40 | 100.0%" in output
    assert "backend gloo (auto: 0 usable GPU(s) for 2 process(es))" in output
    # Mid-epoch checkpoints were written in both stages and went once their epoch's file existed.
    assert "'runner.type=IterCheckpointEpochBasedRunner', 'runner.checkpoint_interval_iters=15'" in output
    assert "saved epoch_6_iter_30.pth (epoch 6, iteration 30 of 40)" in output
    assert "saved epoch_20_iter_30.pth (epoch 20, iteration 30 of 40)" in output
    assert not list(root.glob("projects/work_dirs/*/*/epoch_*_iter_*.pth"))

    ckpt = root / "ckpts/full_track_map.pth"
    stage1 = root / "projects/work_dirs/stage1_track_map/full_track_map"
    stage2 = root / "projects/work_dirs/stage2_e2e/full_e2e"
    assert ckpt.is_file() and not ckpt.is_symlink()
    provenance = json.loads(provenance_path(ckpt).read_text())
    assert provenance["epoch"] == 6 and provenance["source_resolved"] == str(stage1 / "epoch_6.pth")
    assert provenance["sha256"] == sha256_file(ckpt) == sha256_file(stage1 / "epoch_6.pth")
    assert sorted(p.name for p in stage1.glob("epoch_*.pth")) == [f"epoch_{i}.pth" for i in range(1, 7)]
    assert (stage2 / "latest.pth").resolve() == stage2 / "epoch_20.pth"
    report = inspect_checkpoint(stage2 / "latest.pth", stage="stage2", expect_epoch=20)
    assert report.valid, report.problems
    assert f"load checkpoint from local path: {ckpt}" in next(stage2.glob("*.log")).read_text()
    # The health gate ran on both stages and left its report in the work dir.
    for work in (stage1, stage2):
        report = (work / "health/report.md").read_text()
        assert report.splitlines()[0].endswith("HEALTHY"), report[:2000]
        assert (work / "health/loss.png").stat().st_size > 10_000
    assert "pipeline ETA" in output and "stage1 health: healthy" in output and "stage2 health: healthy" in output
    # No s3_uri: the uploads are skipped; no uniad_notify connection: no email, and the log says so.
    assert "no s3_uri for this run" in output
    assert "no connection 'uniad_notify': no notification sent" in output


def test_nan_in_stage1_fails_stage1_train_fast(airflow_home, tmp_path):
    root = tmp_path / "uniad-mini-nan"
    conf = {
        "profile": "mini",
        "uniad_root": str(root),
        "stage1_epochs": 3,
        "stage1_cfg_options": ["fault_injection.kind=nan_loss", "fault_injection.epoch=2", "fault_injection.iter=5"],
    }
    done = run([str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)], timeout=600, check=False)
    output = done.stdout + done.stderr
    assert "stopped by the health watch: non_finite_loss: loss is nan at epoch 2 iter 10" in output, output[-5000:]
    assert done.returncode != 0
    assert re.search(r"Marking run <DagRun uniad_e2e_training .*> failed", output)
    assert output.count("new_state=failed") == 1  # stage1_train only: no retry of a NaN run, nothing after it
    assert not (root / "projects/work_dirs/stage2_e2e").exists()
    assert not (root / "ckpts/full_track_map.pth").exists()
    log = next((root / "projects/work_dirs/stage1_track_map/full_track_map").glob("*.log.json"))
    # The watch follows the text log, which mmcv writes before the json line of the same record: the stop may come
    # before the NaN record reaches the json log, never before the text log.
    last = [record for record in read_log(log.with_suffix(""))[0] if record.get("mode") == "train"][-1]
    assert last["epoch"] == 2 and not (log.parent / "epoch_2.pth").exists(), last  # the NaN epoch never saved
    assert processes_mentioning(str(root)) == []


@pytest.mark.parametrize("escape", ["dot-dot", "symlink"])
def test_a_root_outside_the_allowed_roots_fails_at_preflight_and_starts_nothing(airflow_home, tmp_path, escape):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    allowed.mkdir()
    outside.mkdir()
    if escape == "dot-dot":
        root = f"{allowed}/../outside/uniad-mini"
    else:
        (allowed / "link").symlink_to(outside)
        root = f"{allowed}/link/uniad-mini"
    conf = {"profile": "mini", "uniad_root": root, "stage1_epochs": 1, "stage2_epochs": 1}
    done = run(
        [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        env={"UNIAD_ALLOWED_ROOTS": str(allowed)},
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert f"resolves to {outside}/uniad-mini) is outside the directories this deployment lets runs use" in output
    assert f"UNIAD_ALLOWED_ROOTS={allowed}" in output
    assert "AirflowFailException: invalid parameters: uniad_root" in output  # failed, without a retry
    assert output.count("new_state=failed") == 1 and "new_state=success" not in output
    assert "starting task_id=fetch_pretrained" not in output  # nothing ran after preflight
    assert list(outside.iterdir()) == []  # no mini root written, no work dir
    assert processes_mentioning(str(outside)) == []


@pytest.fixture(scope="module")
def scheduler(airflow_home):
    """`airflow standalone` (api-server, scheduler, dag-processor, triggerer; LocalExecutor) in its own group,
    shared by this module's tests (it takes a while to start on 2 cores)."""
    port = find_free_port()
    env = {
        **os.environ,
        "AIRFLOW__API__PORT": str(port),
        # Task supervisors report to the execution API, which moves with the api-server's port.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
    }
    argv = [str(BIN / "airflow"), "standalone"]
    with service_group(argv, airflow_home / "standalone.log", env, api_healthy(port, "scheduler")) as proc:
        yield proc, port


def wait_for_dag(airflow: str) -> None:
    """The dag-processor must have serialized the DAG before it can be triggered."""
    deadline = time.monotonic() + 120
    while run([airflow, "dags", "list", "-o", "json"], check=False).stdout.find(DAG_ID) < 0:
        assert time.monotonic() < deadline, "the DAG never showed up in the metadata DB"
        time.sleep(3)


def test_two_triggered_runs_succeed_one_after_the_other(scheduler, airflow_home, tmp_path):
    """Two triggers at once: both runs succeed, and their training tasks never overlap in time (max_active_runs=1,
    and each training task takes a whole worker's gpu pool slots)."""
    airflow = str(BIN / "airflow")
    wait_for_dag(airflow)
    runs = {}
    for name in ("a", "b"):
        root = tmp_path / f"uniad-mini-{name}"
        run_id = f"ci_{name}__{int(time.time())}"
        conf = {"profile": "mini", "uniad_root": str(root), "stage1_epochs": 1, "stage2_epochs": 1}
        run([airflow, "dags", "trigger", DAG_ID, "-r", run_id, "-c", json.dumps(conf)])
        runs[run_id] = root

    deadline = time.monotonic() + 600
    states: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        listed = cli_json(run([airflow, "dags", "list-runs", DAG_ID, "-o", "json"]).stdout)
        states = {r["run_id"]: r["state"] for r in listed if r["run_id"] in runs}
        if len(states) == 2 and set(states.values()) <= {"success", "failed"}:
            break
        time.sleep(5)
    assert set(states.values()) == {"success"}, (states, (airflow_home / "standalone.log").read_text()[-3000:])

    training = []
    for run_id, root in runs.items():
        tasks = cli_json(run([airflow, "tasks", "states-for-dag-run", DAG_ID, run_id, "-o", "json"]).stdout)
        assert {t["task_id"]: t["state"] for t in tasks} == {
            **dict.fromkeys(
                [
                    "preflight",
                    "fetch_pretrained",
                    "stage1_train",
                    "validate_stage1",
                    "promote_checkpoint",
                    "stage2_train",
                    "validate_stage2",
                    "publish_model",  # each run's own root: no champion there yet
                ],
                "success",
            ),
            **dict.fromkeys(["upload_stage1", "upload_stage2"], "skipped"),  # no s3_uri
        }
        # A local stage holds its worker's GPU slots (the policy moves only Slurm runs' training tasks).
        assert training_pools(airflow_home, run_id) == dict.fromkeys(["stage1_train", "stage2_train"], ("gpu", 8))
        training += [(t["start_date"], t["end_date"], run_id) for t in tasks if t["task_id"].endswith("_train")]
        assert inspect_checkpoint(root / "ckpts/full_track_map.pth", stage="stage1", expect_epoch=1).valid
        assert inspect_checkpoint(
            root / "projects/work_dirs/stage2_e2e/full_e2e/latest.pth", stage="stage2", expect_epoch=1
        ).valid
    training.sort()
    for (_, end, first), (start, _, second) in zip(training, training[1:]):
        assert end <= start, f"training of {first} and {second} overlapped: {training}"


def test_marking_failed_or_clearing_a_training_task_kills_its_ranks(scheduler, airflow_home, tmp_path):
    proc, port = scheduler
    root = tmp_path / "uniad-mini-killed"
    run_id = f"kill__{int(time.time())}"
    airflow = str(BIN / "airflow")
    wait_for_dag(airflow)
    conf = {"profile": "mini", "uniad_root": str(root), "stage1_epochs": 30}
    run([airflow, "dags", "trigger", DAG_ID, "-r", run_id, "-c", json.dumps(conf)])

    work = root / "projects/work_dirs/stage1_track_map/full_track_map"
    deadline = time.monotonic() + 300
    while not any(len(p.read_text().splitlines()) > 2 for p in work.glob("*.log.json")):
        assert time.monotonic() < deadline, "stage1_train never started training"
        time.sleep(1)
    assert len(processes_mentioning(str(root))) >= 4  # the job's supervisor, the launcher and both ranks

    token = api_token(airflow_home, port)

    def api(method: str, path: str, body: dict) -> None:
        status, answer = http(method, f"http://127.0.0.1:{port}/api/v2/dags/{DAG_ID}/{path}", token=token, body=body)
        assert status == 200, answer

    def gone_within(pids: set[str], seconds: float) -> float:
        start = time.monotonic()
        while time.monotonic() - start < 60:
            alive = {p.split()[0] for p in processes_mentioning(str(root))} & pids
            if not alive:
                return time.monotonic() - start
            time.sleep(0.5)
        raise AssertionError(f"processes {alive} kept running")

    # 1. Mark the running task failed.
    pids = {p.split()[0] for p in processes_mentioning(str(root))}
    api("PATCH", f"dagRuns/{run_id}/taskInstances/stage1_train", {"new_state": "failed"})
    seconds = gone_within(pids, 30)
    print(f"ranks gone {seconds:.1f} s after the task was marked failed")
    assert seconds < 10

    # 2. Clear it: it runs again in the same run (a retry); then clear it while it trains.
    logs_before = len(list(work.glob("*.log.json")))
    clear = {"dry_run": False, "only_failed": False, "task_ids": ["stage1_train"], "dag_run_id": run_id}
    api("POST", "clearTaskInstances", clear)
    deadline = time.monotonic() + 300
    while not (
        len(logs := sorted(work.glob("*.log.json"))) > logs_before and len(logs[-1].read_text().splitlines()) > 2
    ):
        assert time.monotonic() < deadline, "the cleared task never trained again"
        time.sleep(1)
    pids = {p.split()[0] for p in processes_mentioning(str(root))}
    assert len(pids) >= 4
    api("POST", "clearTaskInstances", clear)
    seconds = gone_within(pids, 30)
    print(f"ranks gone {seconds:.1f} s after the running task was cleared")
    assert seconds < 10
    api("PATCH", f"dagRuns/{run_id}/taskInstances/stage1_train", {"new_state": "failed"})  # stop the next try
    assert not (work / "epoch_30.pth").exists()
