# The Airflow image: api-server, scheduler, dag-processor, triggerer and default-queue workers.
# Build from the repository root:  docker build -f docker/airflow.Dockerfile -t uniad-airflow .
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11

# torch (CPU build) for the checkpoint gate: validate_* and promote_checkpoint load checkpoints on these workers.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY --chown=airflow:0 requirements-airflow.txt /tmp/requirements-airflow.txt
RUN pip install --no-cache-dir -r /tmp/requirements-airflow.txt
# mmcv 1.x (without its ops): preflight reads the stage configs with mmcv's Config, as UniAD's tools/train.py does
# (inheritance, cfg options). Its setup.py needs pkg_resources, so setuptools<81 and no build isolation.
RUN pip install --no-cache-dir "setuptools>=77.0.3,<81" && pip install --no-cache-dir --no-build-isolation mmcv==1.7.2

# This project: the uniad package, the DAG and the plugin (operators and the training dashboard).
COPY --chown=airflow:0 pyproject.toml README.md /opt/uniad-pipeline/
COPY --chown=airflow:0 uniad /opt/uniad-pipeline/uniad
RUN pip install --no-cache-dir --no-deps /opt/uniad-pipeline
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
