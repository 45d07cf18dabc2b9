"""What the run list compares runs by: the headline metric, the champion mark and the MLflow link."""

from __future__ import annotations

import json

from uniad.run.configs import ConfigFacts
from uniad.run.params import PipelineParams
from uniad.run.plan import Plan
from uniad.run.root import prepare_root
from uniad.vocabulary import STAGE1_CONFIG, STAGE2_CONFIG
from uniad.workdir import provenance_path


def test_headline_champion_and_mlflow_link(tmp_path, monkeypatch):
    from uniad_airflow.dashboard import _comparison
    from uniad_airflow.names import PREFLIGHT, TRACKING_XCOM

    params = PipelineParams.from_mapping({"profile": "mini", "champion_metric": "planning/L2_avg"})
    facts = {
        "stage1": ConfigFacts(STAGE1_CONFIG, evaluation_interval=1),
        "stage2": ConfigFacts(STAGE2_CONFIG, evaluation_interval=1),
    }
    plan = Plan.build(params, prepare_root(params, mini_run_dir=tmp_path / "run"), facts)
    published = provenance_path(plan.publish.path)
    published.parent.mkdir(parents=True, exist_ok=True)
    published.write_text(json.dumps({"run_id": "manual__a", "sha256": "0" * 64}))
    results = {
        (PREFLIGHT, "return_value"): plan.to_json(),
        ("validate_stage2", "return_value"): {"metrics": {"values": {"planning/L2_avg": 1.25, "lanes_iou": 0.4}}},
        ("stage1_train", TRACKING_XCOM): {"experiment_id": "3", "run_id": "abc"},
    }
    monkeypatch.delenv("UNIAD_MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000/")
    assert _comparison("manual__a", results) == {
        "headline": {"metric": "planning/L2_avg", "value": 1.25},
        "champion": True,
        "mlflow_url": "http://mlflow.example:5000/#/experiments/3/runs/abc",
    }
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///runs/mlflow/mlflow.db")  # a local store: no UI to link
    assert _comparison("manual__b", results)["champion"] is False  # another run's model is the champion
    assert _comparison("manual__b", results)["mlflow_url"] is None
    monkeypatch.setenv("UNIAD_MLFLOW_UI_URL", "https://mlflow.example")
    assert _comparison("manual__b", results)["mlflow_url"] == "https://mlflow.example/#/experiments/3/runs/abc"
    # Preflight refused the run: nothing to compare it by.
    assert _comparison("manual__c", {}) == {"headline": None, "champion": False, "mlflow_url": None}
