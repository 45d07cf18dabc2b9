"""The cluster policy: a Slurm run's training tasks take no slot of the GPU workers' pool; nothing else moves."""

from __future__ import annotations

import json
import uuid

import pytest

from support import BIN, REPO, airflow_env, run


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags")).dags["uniad_e2e_training"]


def instance(dag, task_id: str, conf: dict | None):
    """A task instance of ``task_id`` built as the scheduler builds one, then given its run as the scheduler does."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance

    from uniad_airflow.policy import task_instance_mutation_hook

    ti = TaskInstance(dag.get_task(task_id), run_id="r", dag_version_id=uuid.uuid4())
    task_instance_mutation_hook(ti, dag_run=DagRun(dag_id=dag.dag_id, run_id="r", conf=conf))
    return ti.pool, ti.pool_slots


@pytest.mark.parametrize("task_id", ["stage1_train", "stage2_train"])
def test_a_slurm_runs_training_tasks_leave_the_gpu_pool(dag, task_id):
    assert dag.get_task(task_id).pool == "gpu"
    assert instance(dag, task_id, {"executor": "slurm"}) == ("default_pool", 1)
    assert instance(dag, task_id, {"executor": "local"}) == ("gpu", 8)
    assert instance(dag, task_id, None) == ("gpu", 8)  # a scheduled run: the parameter's default, local
    assert instance(dag, task_id, {}) == ("gpu", 8)


def test_evaluation_and_publishing_stay_on_the_gpu_workers(dag):
    """publish_model may run tools/test.py on the worker's GPUs whichever executor trained."""
    assert instance(dag, "publish_model", {"executor": "slurm"}) == ("gpu", 8)
    assert instance(dag, "preflight", {"executor": "slurm"}) == ("default_pool", 1)


def test_airflow_applies_the_installed_policy_when_it_creates_task_instances(tmp_path):
    """Installed into a home, Airflow loads it from airflow_local_settings (where the hook is applied at creation);
    installing twice keeps the file; a deployment's own settings file is not overwritten but named with the fix."""
    env = airflow_env(tmp_path)
    run([str(BIN / "python"), "-m", "uniad_airflow.policy"], env=env)
    first = (tmp_path / "config/airflow_local_settings.py").read_text()
    run([str(BIN / "python"), "-m", "uniad_airflow.policy"], env=env)
    assert (tmp_path / "config/airflow_local_settings.py").read_text() == first
    probe = (
        "import json\n"
        "from types import SimpleNamespace as N\n"
        "from airflow import settings\n"
        "ti = N(dag_id='uniad_e2e_training', task_id='stage1_train', pool='gpu', pool_slots=8)\n"
        "settings.task_instance_mutation_hook(ti, dag_run=N(conf={'executor': 'slurm'}))\n"
        "print(json.dumps([settings.task_instance_mutation_hook.is_noop, ti.pool, ti.pool_slots]))\n"
    )
    done = run([str(BIN / "python"), "-c", probe], env=env)
    assert json.loads(done.stdout.splitlines()[-1]) == [False, "default_pool", 1]

    own = tmp_path / "own"
    (own / "config").mkdir(parents=True)
    (own / "config/airflow_local_settings.py").write_text("POLICY = 1\n")
    refused = run([str(BIN / "python"), "-m", "uniad_airflow.policy"], env=airflow_env(own), check=False)
    assert refused.returncode != 0
    assert "from uniad_airflow.policy import task_instance_mutation_hook" in refused.stderr
    assert (own / "config/airflow_local_settings.py").read_text() == "POLICY = 1\n"
