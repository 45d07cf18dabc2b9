# The GPU worker: a Celery worker on the gpu queue (Python 3.11, Airflow, this project) that launches UniAD's
# tools/train.py with UniAD's own stack (Python 3.9, CUDA 11.8, mmcv-full with CUDA ops) as UNIAD_PYTHON.
# Build from the repository root:
#   docker build -f docker/training.Dockerfile -t uniad-training .                              # UniAD v2.0 stack
#   docker build -f docker/training.Dockerfile --build-arg RECIPE=uniad-trt -t uniad-training-trt .  # torch 1.12
FROM nvidia/cuda:11.8.0-cudnn8-devel-ubuntu22.04
ARG RECIPE=uniad-v2

ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common ca-certificates git ninja-build \
      libgl1 libglib2.0-0 \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.9 python3.9-dev python3.9-venv \
      python3.11 python3.11-dev python3.11-venv \
 && rm -rf /var/lib/apt/lists/*

# UniAD's stack in its own interpreter (versions per recipe: docker/install_uniad_stack.sh).
COPY docker/install_uniad_stack.sh /tmp/install_uniad_stack.sh
RUN python3.9 -m venv /opt/uniad-venv && bash /tmp/install_uniad_stack.sh "$RECIPE" /opt/uniad-venv

# The worker: Airflow and this project (torch CPU build only for checkpoint inspection in the worker itself),
# installed with its Airflow extra (pins in pyproject.toml); the plugin is registered by its entry point. Nothing
# of this project goes into /opt/uniad-venv: the modules UniAD's interpreter runs are shipped into each work dir.
RUN python3.11 -m venv /opt/airflow-venv \
 && /opt/airflow-venv/bin/pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && /opt/airflow-venv/bin/pip install --no-cache-dir "setuptools>=77.0.3,<81" wheel
COPY pyproject.toml README.md /opt/uniad-pipeline/
COPY uniad /opt/uniad-pipeline/uniad
COPY plugins /opt/uniad-pipeline/plugins
RUN /opt/airflow-venv/bin/pip install --no-cache-dir --no-build-isolation "/opt/uniad-pipeline[airflow]"
COPY dags /opt/airflow/dags

ENV PATH=/opt/airflow-venv/bin:$PATH \
    AIRFLOW_HOME=/opt/airflow \
    UNIAD_PYTHON=/opt/uniad-venv/bin/python \
    UNIAD_ROOT=/workspace/UniAD \
    PYTHONUNBUFFERED=1
WORKDIR /opt/airflow
# One training task at a time: it takes all of the worker's GPUs.
CMD ["airflow", "celery", "worker", "--queues", "gpu", "--concurrency", "1"]
