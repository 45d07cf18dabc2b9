-- The MLflow tracking server's runs and registered models, beside Airflow's metadata (docker/compose.yaml).
CREATE DATABASE mlflow;
