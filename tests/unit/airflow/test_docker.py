"""docker/: the compose file validates offline, and the images install what the docs say."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
import tomllib
import yaml

from support import REPO, require_tool

DOCKER = REPO / "docker"
COMPOSE = shutil.which("docker-compose")


def env_example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in (DOCKER / "env.example").read_text().splitlines() if "=" in line)


def compose_config(tmp_path, **overrides: str):
    env = env_example()
    env.update(overrides)
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items() if v is not None))
    argv = [COMPOSE, "-f", str(DOCKER / "compose.yaml"), "--env-file", str(env_file), "config"]
    # docker-compose prefers the shell's variables to the env file: only the env file may speak here.
    clean = {k: v for k, v in os.environ.items() if k not in env}
    return subprocess.run(argv, env=clean, capture_output=True, text=True, timeout=60)


# What lets a running stage outlive an api-server outage (README, "A control plane that can restart").
OUTAGE_SETTINGS = (
    "AIRFLOW__WORKERS__MAX_FAILED_HEARTBEATS",
    "AIRFLOW__WORKERS__EXECUTION_API_RETRY_WAIT_MIN",
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT",
    "AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME",
)


def script_defaults(names) -> dict[str, str | None]:
    """The defaults scripts/celery_stack.sh gives these settings (``export NAME=${NAME:-default}``)."""
    script = (REPO / "scripts/celery_stack.sh").read_text()
    found = {}
    for name in names:
        match = re.search(rf"^export {name}=\$\{{{name}:-([^}}]+)\}}$", script, re.M)
        found[name] = match[1] if match else None
    return found


@pytest.fixture
def compose_available():
    require_tool(COMPOSE, "docker-compose (validates docker/compose.yaml offline)")


def test_the_compose_file_validates(compose_available, tmp_path):
    done = compose_config(tmp_path)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    example = env_example()
    assert set(services) == {
        "postgres",
        "redis",
        "airflow-init",
        "api-server-1",
        "api-server-2",
        "api-proxy",
        "scheduler",
        "dag-processor",
        "triggerer",
        "worker-default",
        "uniad-worker-gpu",
        "mlflow",
    }
    # MLflow: its runs in the compose PostgreSQL (a database the init script creates), artifacts in S3, and every
    # Airflow part tracks to it.
    mlflow = services["mlflow"]
    assert (
        '--backend-store-uri "postgresql+psycopg2://airflow:$${POSTGRES_PASSWORD}@postgres:5432/mlflow"'
        in (mlflow["command"][2])
    )
    assert '--artifacts-destination "$${MLFLOW_ARTIFACTS}"' in mlflow["command"][2]
    assert mlflow["environment"]["MLFLOW_ARTIFACTS"] == example["MLFLOW_ARTIFACTS"].strip()
    assert "CREATE DATABASE mlflow;" in (DOCKER / "postgres-init.sql").read_text()
    assert any(v.endswith("/docker-entrypoint-initdb.d/uniad.sql:ro") for v in services["postgres"]["volumes"])
    gpu = services["uniad-worker-gpu"]
    assert gpu["stop_grace_period"] == "15m"
    assert gpu["init"] is True and gpu["command"][:2] == ["bash", "-c"]
    assert (
        'airflow celery worker --queues gpu --concurrency 1 --celery-hostname "gpu@gpu-worker-1"' in gpu["command"][2]
    )
    check_the_worker_loop(gpu["command"][2].replace("$$", "$"), tmp_path)  # config's output escapes $ as compose does
    assert (
        gpu["image"] == "uniad-training:latest" and gpu["environment"]["UNIAD_PYTHON"] == "/opt/uniad-venv/bin/python"
    )
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    mounts = {target: source for source, target, _ in (v.split(":") for v in gpu["volumes"]) if source.startswith("/")}
    assert mounts == {
        "/workspace/UniAD": "/srv/UniAD",
        "/workspace/UniAD/data": "/srv/nuscenes-data",
        "/workspace/UniAD/ckpts": "/srv/uniad-ckpts",
    }
    assert services["worker-default"]["command"][3:5] == ["--queues", "default"]
    # A GPU worker acknowledges a task when it starts it and fetches none ahead: never redelivered mid-stage.
    import importlib

    from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

    module, name = gpu["environment"]["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"].rsplit(".", 1)
    gpu_config = getattr(importlib.import_module(module), name)  # what [celery] celery_config_options imports
    assert (gpu_config["task_acks_late"], gpu_config["worker_disable_prefetch"]) == (False, True)
    assert {k: v for k, v in gpu_config.items() if k not in ("task_acks_late", "worker_disable_prefetch")} == {
        k: v for k, v in DEFAULT_CELERY_CONFIG.items() if k != "task_acks_late"
    }
    module, name = services["worker-default"]["environment"]["AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS"].rsplit(".", 1)
    default_config = getattr(importlib.import_module(module), name)
    assert default_config == {**DEFAULT_CELERY_CONFIG, "imports": ("uniad.health.preload",)}
    airflow_services = (
        "api-server-1",
        "api-server-2",
        "scheduler",
        "dag-processor",
        "triggerer",
        "worker-default",
        "uniad-worker-gpu",
    )
    for name in airflow_services:
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("fab_auth_manager.FabAuthManager"), name
        assert env["UNIAD_ALLOWED_ROOTS"] == "/workspace/UniAD", name
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        # Above the longest stage: Celery's 24 h default would redeliver a 2-day stage 1 to a second worker.
        assert int(env["AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT"]) >= 7 * 24 * 3600, name
        # Every part reaches the execution API through the proxy, and tolerates the api-server being away as the
        # script's shape does (the same settings, the same values).
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://api-proxy:8080/execution/", name
        assert {key: env.get(key) for key in OUTAGE_SETTINGS} == script_defaults(OUTAGE_SETTINGS), name
        # One session key for both replicas: a UI login on one is valid on the other.
        assert env["AIRFLOW__API__SECRET_KEY"] == example["AIRFLOW_API_SECRET_KEY"], name
    # The proxy publishes the UI and API and balances over the two replicas the compose file runs.
    proxy = services["api-proxy"]
    assert proxy["ports"][0]["published"] in (8080, "8080") and proxy["ports"][0]["target"] in (8080, "8080")
    backends = re.findall(r"^\s*server (\S+) (\S+):8080$", (DOCKER / "haproxy.cfg").read_text(), re.M)
    assert backends == [("api-server-1", "api-server-1"), ("api-server-2", "api-server-2")]
    assert services["api-server-1"]["command"] == services["api-server-2"]["command"]
    init = services["airflow-init"]
    assert (
        "airflow pools set --include-deferred gpu" in init["command"][2] and init["environment"]["GPU_WORKERS"] == "1"
    )
    # The first admin comes from the deployment's secret, through the environment, never a file or argv.
    assert "python -m uniad_airflow.admin" in init["command"][2]
    assert init["environment"]["UNIAD_ADMIN_PASSWORD"] == "change-me-to-a-long-secret"
    assert "change-me-to-a-long-secret" not in init["command"][2]


def check_the_worker_loop(script: str, tmp_path) -> None:
    """The GPU worker container's command: a worker that dies is started again in the container (its detached
    local jobs live on), and SIGTERM reaches the worker, after which the loop ends. Run with a stand-in airflow."""
    import signal
    import subprocess
    import time

    from support import wait_for

    bin_dir, starts = tmp_path / "bin", tmp_path / "starts"
    bin_dir.mkdir()
    fake = bin_dir / "airflow"
    fake.write_text(f"#!/bin/bash\necho $$ >> {starts}\ntrap 'echo TERM >> {starts}; exit 0' TERM\nsleep 300 & wait\n")
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    loop = subprocess.Popen(["bash", "-c", script], env=env, start_new_session=True)
    try:
        first = int(wait_for("the worker to start", lambda: starts.exists() and starts.read_text().split(), 10)[0])
        os.kill(first, signal.SIGKILL)  # the worker dies: the loop starts it again
        second = wait_for("the worker to start again", lambda: len(starts.read_text().split()) == 2, 15)
        assert second and loop.poll() is None
        time.sleep(0.5)
        loop.send_signal(signal.SIGTERM)  # docker compose stop
        assert loop.wait(timeout=10) == 0
        assert starts.read_text().split()[-1] == "TERM"  # passed on to the worker (Celery's warm shutdown)
    finally:
        if loop.poll() is None:
            os.killpg(loop.pid, signal.SIGKILL)


def test_the_proxy_config_is_valid():
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    require_tool(haproxy, "haproxy (checks docker/haproxy.cfg)")
    done = subprocess.run([haproxy, "-c", "-f", str(DOCKER / "haproxy.cfg")], capture_output=True, text=True)
    assert done.returncode == 0 and "Configuration file is valid" in done.stdout + done.stderr, done.stderr


@pytest.mark.parametrize("secret", ["AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD"])
def test_compose_refuses_to_start_without_its_secrets(compose_available, tmp_path, secret):
    done = compose_config(tmp_path, **{secret: None})
    assert done.returncode != 0
    assert f"set {secret}" in done.stderr


def test_the_images_install_what_the_docs_say():
    readme = (DOCKER / "README.md").read_text()
    stack = (DOCKER / "install_uniad_stack.sh").read_text()
    # Each recipe's row in docker/README.md names the versions install_uniad_stack.sh installs.
    for recipe in ("uniad-v2", "uniad-trt"):
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{recipe}`"))
        block = stack.split(f"  {recipe})", 1)[1].split(";;", 1)[0]
        torch = re.search(r"torch==([\w.+]+)", block).group(1)
        assert torch in row, (recipe, torch, row)
    for package, version in re.findall(r"(mmcv-full|mmdet|mmsegmentation|mmdet3d)==([\w.]+)", stack):
        assert readme.count(version) >= 2, f"{package} {version} is not in both rows of docker/README.md"
    # Both images install this project with its pins (pyproject.toml), as the local environment does: the same
    # Airflow and torch, the plugin by its entry point, the DAG file the only thing copied.
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(re.findall(r"^([\w-]+)==([\w.]+)$", "\n".join(project["optional-dependencies"]["airflow"]), re.M))
    torch_pin = next(d for d in project["dependencies"] if d.startswith("torch=="))
    airflow_image = (DOCKER / "airflow.Dockerfile").read_text()
    training_image = (DOCKER / "training.Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={pins['apache-airflow']}" in airflow_image
    assert 'pip install --no-cache-dir --no-build-isolation "/opt/uniad-pipeline[airflow,mini]"' in airflow_image
    assert 'pip install --no-cache-dir --no-build-isolation "/opt/uniad-pipeline[airflow]"' in training_image
    for image in (airflow_image, training_image):
        assert torch_pin in image and "COPY --chown=airflow:0 plugins /opt/airflow/plugins" not in image
        assert "requirements" not in image
    assert "FROM nvidia/cuda:11.8.0" in training_image and "ARG RECIPE=uniad-v2" in training_image
