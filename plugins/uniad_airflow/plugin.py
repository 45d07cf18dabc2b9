"""The UniAD training dashboard as an Airflow 3 plugin: the FastAPI app at /uniad, a "UniAD training" entry in the
navigation, a tab on every run of uniad_e2e_training, and the training tasks' "Training dashboard" link.

Registered by the package's ``airflow.plugins`` entry point (``pip install .``), not by the plugins folder, whose
``.airflowignore`` keeps Airflow's folder scan from registering it a second time."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from uniad_airflow.dashboard import create_app
from uniad_airflow.names import DASHBOARD_PREFIX
from uniad_airflow.operators import TrainingDashboardLink


class UniADDashboardPlugin(AirflowPlugin):
    name = "uniad_dashboard"
    fastapi_apps = [{"app": create_app(), "url_prefix": DASHBOARD_PREFIX, "name": "UniAD training dashboard"}]
    external_views = [
        {"name": "UniAD training", "href": f"{DASHBOARD_PREFIX}/", "destination": "nav", "url_route": "uniad-training"},
        {
            "name": "Training curves",
            "href": f"{DASHBOARD_PREFIX}/runs/{{RUN_ID}}",
            "destination": "dag_run",
            "url_route": "uniad-training-run",
        },
    ]
    operator_extra_links = [TrainingDashboardLink()]
