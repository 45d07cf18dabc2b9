"""What Airflow's providers manager lists for this package (``apache_airflow_provider`` entry point): the
dashboard's operator link and the run-outcome notifier. The plugin itself is registered by the ``airflow.plugins``
entry point only (listing it here too would register it twice)."""

from __future__ import annotations


def get_provider_info() -> dict:
    return {
        "package-name": "uniad-pipeline",
        "name": "UniAD pipeline",
        "description": "Staged end-to-end training of UniAD: operators, the training dashboard and alerts.",
        "extra-links": ["uniad_airflow.operators.TrainingDashboardLink"],
        "notifications": ["uniad_airflow.notify.RunOutcomeNotifier"],
    }
