"""Airflow adapters of the UniAD pipeline (operators); the logic lives in the ``uniad`` package."""
