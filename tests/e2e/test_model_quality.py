"""Model quality through the whole DAG on the mini profile: every stage's final epoch is evaluated whatever the epoch
count, the gate fails on a metric requirement with both numbers, champion/challenger keeps a better champion, and the
model registry keeps every model with its alias on the champion, to which a rollback moves file and alias together."""

from __future__ import annotations

import json

from support import BIN, PYTHON, run
from uniad.artifacts.checkpoints import sha256_file
from uniad.registry import Registry
from uniad.tracking import Tracking
from uniad.workdir import provenance_path

DAG_ID = "uniad_e2e_training"
STAGE1 = "projects/work_dirs/stage1_track_map/full_track_map"
STAGE2 = "projects/work_dirs/stage2_e2e/full_e2e"


def dags_test(conf: dict, check: bool = True, env: dict | None = None) -> str:
    argv = [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)]
    done = run(argv, timeout=900, check=check, env=env)
    return done.stdout + done.stderr


def final_val(work) -> dict:
    records = [json.loads(line) for line in next(work.glob("*.log.json")).read_text().splitlines()[1:]]
    return [r for r in records if r.get("mode") == "val"][-1]


def test_evaluated_stages_a_metric_gate_and_champion_challenger(airflow_home, tmp_path):
    root = tmp_path / "uniad-mini"
    (tmp_path / "mlflow").mkdir()
    store = f"sqlite:///{tmp_path}/mlflow/mlflow.db"  # the model registry, as make demo has it
    tracked = {"MLFLOW_TRACKING_URI": store}
    # 3 and 5 epochs: the configs evaluate every 6 and 4 epochs, so neither final epoch would have been evaluated.
    output = dags_test(
        {"profile": "mini", "uniad_root": str(root), "stage1_epochs": 3, "stage2_epochs": 5}, env=tracked
    )
    assert "'total_epochs=3', 'runner.max_epochs=3', 'evaluation.interval=3'" in output
    assert "'total_epochs=5', 'runner.max_epochs=5', 'load_from=" in output and "'evaluation.interval=5'" in output
    stage1, stage2 = final_val(root / STAGE1), final_val(root / STAGE2)
    assert stage1["epoch"] == 3 and stage2["epoch"] == 5
    # Motion, occupancy and planning were printed by rank 0 and kept in the stage's output file.
    analysis = json.loads(
        run([PYTHON, "-m", "uniad", "analyze", str(next((root / STAGE2).glob("*.log.json"))), "--json"]).stdout
    )
    metrics = analysis["metrics"]
    assert metrics["epoch"] == 5 and metrics["values"]["pts_bbox_NuScenes/amota"] == stage2["pts_bbox_NuScenes/amota"]
    assert {"motion/minADE", "occ/iou_n", "planning/L2_avg", "planning/obj_box_col_avg", "lanes_iou"} <= set(
        metrics["values"]
    )
    # It learned (untrained: AMOTA ~0, lanes IoU ~0.09; AMOTA as nuScenes computes it is ~0.2 after 2-3 epochs).
    assert stage1["pts_bbox_NuScenes/amota"] > 0.1 and stage1["lanes_iou"] > 0.3
    # Published as the first champion, with its metrics and run id in the provenance.
    published = root / "ckpts/uniad_e2e.pth"
    champion = json.loads(provenance_path(published).read_text())
    assert champion["metrics"]["pts_bbox_NuScenes/amota"] == metrics["values"]["pts_bbox_NuScenes/amota"]
    assert champion["sha256"] == sha256_file(published) and champion["epoch"] == 5 and champion["run_id"]
    report = (root / STAGE2 / "health/report.md").read_text()
    assert "## Metrics" in report and "### epoch 5" in report and (root / STAGE2 / "health/metrics.png").is_file()

    # A retraining run that comes out worse (1 + 1 epochs) keeps the champion, byte for byte.
    before = sha256_file(published)
    output = dags_test(
        {"profile": "mini", "uniad_root": str(root), "stage1_epochs": 1, "stage2_epochs": 1}, env=tracked
    )
    assert "keeping the champion" in output and "kept the champion" in output
    assert sha256_file(published) == before and json.loads(provenance_path(published).read_text()) == champion

    # The registry kept both runs' models and promoted checkpoints; its alias stayed on the first model, which the
    # second run was judged against.
    registry = Registry(Tracking(store))
    first, second = registry.versions()[::-1]
    assert (first["sha256"], first["run_id"]) == (before, champion["run_id"]) and first["champion"]
    assert second["sha256"] == sha256_file(root / STAGE2 / "latest.pth") and not second["champion"]
    assert second["metrics"]["pts_bbox_NuScenes/amota"] < first["metrics"]["pts_bbox_NuScenes/amota"]
    assert "the champion is uniad_e2e version 1" in output
    assert [v["epoch"] for v in registry.versions("stage1")] == ["1", "3"]
    # Rollback, to the second model with the rollback DAG and back to the first by hand: the published file, its
    # provenance and the alias follow.
    rollback = {"model_version": "2", "publish_path": str(published)}
    argv = [str(BIN / "airflow"), "dags", "test", "uniad_model_rollback", "-c", json.dumps(rollback)]
    said = run(argv, env=tracked, timeout=300)
    assert f"is uniad_e2e version 2 again (sha256 {second['sha256']})" in said.stdout + said.stderr
    assert sha256_file(published) == second["sha256"] and registry.champion()["number"] == "2"
    said = run([PYTHON, "-m", "uniad", "models", "--rollback", "1", "--publish-path", str(published)], env=tracked)
    assert f"is uniad_e2e version 1 again (sha256 {before})" in said.stdout
    assert sha256_file(published) == before and registry.champion()["number"] == "1"
    assert json.loads(provenance_path(published).read_text())["registry_version"] == "1"
    listed = run([PYTHON, "-m", "uniad", "models"], env=tracked).stdout.splitlines()
    assert [line.split()[:2] for line in listed] == [["2", "run"], ["1", "champion"]], listed

    # An impossible requirement fails validate_stage1, naming the metric and both numbers; nothing runs after it.
    output = dags_test(
        {
            "profile": "mini",
            "uniad_root": str(tmp_path / "root-req"),
            "stage1_epochs": 1,
            "stage1_metric_requirements": ["pts_bbox_NuScenes/amota>=1.01"],
        },
        check=False,
    )
    assert "pts_bbox_NuScenes/amota>=1.01 not met: pts_bbox_NuScenes/amota is " in output
    assert ", required >= 1.01" in output
    assert "starting task_id=stage2_train" not in output and "task_id=validate_stage1" in output
    # People are alerted to the missed requirement with its numbers (no connection here: recorded as not sent).
    alerts = (tmp_path / "root-req" / STAGE1 / "alerts.jsonl").read_text().splitlines()
    (missed,) = [json.loads(line) for line in alerts if json.loads(line)["kind"] == "metric_requirement"]
    assert "required >= 1.01" in missed["message"] and missed["not_sent"] == "no connection 'uniad_notify'"
