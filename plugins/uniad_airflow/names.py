"""The names the DAG, its operators, the dashboard and the alerts share: the DAG id, its task ids, and where the
training dashboard is mounted. A leaf: the web app and the notifier read these without importing the operators."""

from __future__ import annotations

from urllib.parse import quote

DAG_ID = "uniad_e2e_training"
DASHBOARD_PREFIX = "/uniad"  # where the training dashboard (uniad_airflow.dashboard) is mounted in the api-server

PREFLIGHT = "preflight"  # its return value is the run's plan
FETCH_PRETRAINED = "fetch_pretrained"
PROMOTE = "promote_checkpoint"
PUBLISH = "publish_model"
TRAIN = {"stage1": "stage1_train", "stage2": "stage2_train"}
VALIDATE = {"stage1": "validate_stage1", "stage2": "validate_stage2"}
UPLOAD = {"stage1": "upload_stage1", "stage2": "upload_stage2"}
TRACKING_XCOM = "mlflow"  # a training task's XCom: the run's MLflow experiment and run ids


def dashboard_url(run_id: str) -> str:
    return f"{DASHBOARD_PREFIX}/runs/{quote(run_id, safe='')}"
