# The Airflow image: api-server, scheduler, dag-processor, triggerer and default-queue workers.
# Build from the repository root:  docker build -f docker/airflow.Dockerfile -t uniad-airflow .
ARG AIRFLOW_VERSION=3.3.2
FROM apache/airflow:${AIRFLOW_VERSION}-python3.11

# torch (CPU build) for the checkpoint gate: validate_* and promote_checkpoint load checkpoints on these workers.
# Installed first from the CPU index: the project's torch==2.13.0 then finds it satisfied.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
# mmcv 1.x (without its ops): preflight reads the stage configs with mmcv's Config, as UniAD's tools/train.py does
# (inheritance, cfg options). Its setup.py needs pkg_resources, so setuptools<81 and no build isolation.
RUN pip install --no-cache-dir "setuptools>=77.0.3,<81" wheel \
 && pip install --no-cache-dir --no-build-isolation mmcv==1.7.2

# This project, installed with its Airflow and mini extras (pins in pyproject.toml): the uniad and uniad_airflow
# packages, the plugin registered by its entry point. The DAG file is the only thing copied.
COPY --chown=airflow:0 pyproject.toml README.md /opt/uniad-pipeline/
COPY --chown=airflow:0 uniad /opt/uniad-pipeline/uniad
COPY --chown=airflow:0 plugins /opt/uniad-pipeline/plugins
RUN pip install --no-cache-dir --no-build-isolation "/opt/uniad-pipeline[airflow,mini]" \
 && python -m uniad_airflow.policy
COPY --chown=airflow:0 dags /opt/airflow/dags
