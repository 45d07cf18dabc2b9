"""DAG integrity: it parses cleanly, without DB or connection access, with the declared shape and trigger form."""

from __future__ import annotations

import copy

import pytest

from support import REPO


@pytest.fixture(scope="module")
def dagbag():
    """The DAG folder parsed as the dag-processor parses it, every SQL statement counted: a DAG file must not touch
    the metadata database (the session's SQLite file is not even migrated here)."""
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag
    from sqlalchemy import event

    settings.configure_orm()
    statements: list[str] = []

    def count(conn, cursor, statement, *args):
        statements.append(statement)

    event.listen(settings.engine, "before_cursor_execute", count)
    try:
        bag = DagBag(dag_folder=str(REPO / "dags"))
    finally:
        event.remove(settings.engine, "before_cursor_execute", count)
    bag.parse_statements = statements
    return bag


@pytest.fixture(scope="module")
def dag(dagbag):
    return dagbag.dags["uniad_e2e_training"]


def test_dag_imports_without_errors_or_db_queries(dagbag):
    assert dagbag.import_errors == {}
    assert list(dagbag.dags) == ["uniad_e2e_training", "uniad_model_rollback"]
    assert dagbag.parse_statements == []


def test_dag_shape(dag):
    assert dag.max_active_runs == 1
    assert dag.tags and {"uniad", "training"} <= set(dag.tags)
    assert dag.doc_md and "preflight" in dag.doc_md
    order = [
        "preflight",
        "fetch_pretrained",
        "stage1_train",
        "validate_stage1",
        "promote_checkpoint",
        "stage2_train",
        "validate_stage2",
        "upload_stage2",
    ]
    assert [t.task_id for t in dag.topological_sort() if t.task_id not in ("upload_stage1", "publish_model")] == order
    for upstream, downstream in zip(order, order[1:]):
        # Every task after preflight also takes its plan (plan=preflight.output): a data edge from preflight.
        assert dag.get_task(downstream).upstream_task_ids == {upstream, "preflight"}
        assert dag.get_task(downstream).template_fields == ("plan",)
    # Stage 1's upload runs beside stage 2 (a skipped upload must not skip training), after the promotion.
    assert dag.get_task("upload_stage1").upstream_task_ids == {"promote_checkpoint", "preflight"}
    assert dag.get_task("upload_stage1").downstream_task_ids == set()
    assert [a.name for a in dag.get_task("promote_checkpoint").outlets] == ["uniad_stage1_checkpoint"]
    # Champion/challenger after stage 2's gate, beside its upload; it takes the gate's metrics as an argument.
    publish = dag.get_task("publish_model")
    assert publish.upstream_task_ids == {"validate_stage2", "preflight"} and publish.downstream_task_ids == set()
    assert publish.template_fields == ("plan", "gate")
    assert [a.name for a in publish.outlets] == ["uniad_e2e_model"]
    assert dag.catchup is False and dag.schedule is None  # UNIAD_SCHEDULE unset
    assert dag.on_success_callback and dag.on_failure_callback


def test_training_tasks_take_the_gpu_pool_and_queue(dag):
    """Training, and publish_model (which may evaluate the champion with tools/test.py), run where the GPUs are."""
    on_gpus = ("stage1_train", "stage2_train", "publish_model")
    for task_id in on_gpus:
        task = dag.get_task(task_id)
        assert (task.pool, task.pool_slots, task.queue) == ("gpu", 8, "gpu")
        assert task.retries == 1
    for task in dag.tasks:
        if task.task_id not in on_gpus:
            assert task.pool != "gpu" and task.queue != "gpu", task.task_id


def test_every_task_sets_retries_explicitly(dag):
    import ast

    tree = ast.parse((REPO / "dags/uniad_e2e_training.py").read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.endswith("Operator")
    ]
    # Every task comes from one of these calls (a loop builds the per-stage ones), each with retries set.
    assert {call.func.id for call in calls} == {type(task).__name__ for task in dag.tasks}
    for call in calls:
        assert "retries" in {kw.arg for kw in call.keywords}, ast.unparse(call)


def test_trigger_form_is_the_typed_params_field_by_field(dag):
    """Names, types, defaults, bounds: the form is derived from PipelineParams, and every default passes it."""
    from dataclasses import MISSING, fields

    from uniad.run.params import PipelineParams

    typed = {f.name: f for f in fields(PipelineParams)}
    assert set(dag.params) == set(typed)
    for name, f in typed.items():
        schema = dag.params.get_param(name).schema
        assert {k: v for k, v in schema.items() if k not in ("title", "description")} == f.metadata["schema"], name
        assert schema["title"] == f.metadata["title"] and schema.get("type"), name
        default = list(f.default) if isinstance(f.default, tuple) else f.default
        if name not in ("profile", "uniad_root"):  # the deployment's UNIAD_ROOT decides these two
            assert dag.params[name] == (default if f.default is not MISSING else None), name
    assert dag.params["profile"] == "mini" and dag.params["uniad_root"] is None  # UNIAD_ROOT unset
    assert dag.params.get_param("stage1_epochs").schema["minimum"] == 1
    assert dag.params.get_param("nproc_per_node").schema["maximum"] == 64
    assert dag.params.get_param("backend").schema["enum"] == ["auto", "nccl", "gloo"]
    # The form's defaults are valid typed params too.
    PipelineParams.from_mapping(dict(dag.params))


def test_defaults_validate_and_bad_values_are_refused_by_the_form(dag):
    from airflow.sdk.definitions.param import ParamValidationError

    dag.params.validate()
    for name, value in [
        ("stage1_epochs", 0),
        ("backend", "mpi"),
        ("profile", "toy"),
        ("stage1_cfg_options", ["workers_per_gpu"]),
        ("stage2_cfg_options", ["a.b=1", "; rm -rf /"]),
        ("nproc_per_node", 0),
        ("s3_uri", "https://bucket/x"),
        ("pretrained_s3_uris", ["s3://bucket"]),
        ("aws_conn_id", "a b"),
    ]:
        params = copy.deepcopy(dag.params)
        with pytest.raises(ParamValidationError):  # ParamsDict validates on assignment
            params[name] = value
            params.validate()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0 2 * * 0", "CronTriggerTimetable"), ("asset:file:///data/nuscenes/infos_train.pkl", "AssetTriggeredTimetable")],
)
def test_retraining_schedule_from_the_environment(value, expected):
    """UNIAD_SCHEDULE: a cron expression or an Asset; still no catchup and one run at a time."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIAD_SCHEDULE", value)
        bag = DagBag(dag_folder=str(REPO / "dags"))
    dag = bag.dags["uniad_e2e_training"]
    assert type(dag.timetable).__name__ == expected
    assert dag.catchup is False and dag.max_active_runs == 1


def test_retry_delay_from_the_environment():
    """UNIAD_RETRY_DELAY_S: every task's wait before its retry; a value that is no number of seconds is refused."""
    from airflow.dag_processing.dagbag import DagBag

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNIAD_RETRY_DELAY_S", "15")
        bag = DagBag(dag_folder=str(REPO / "dags"))
        assert {task.retry_delay.total_seconds() for task in bag.dags["uniad_e2e_training"].tasks} == {15.0}
        mp.setenv("UNIAD_RETRY_DELAY_S", "2m")
        bag = DagBag(dag_folder=str(REPO / "dags"))
    assert "uniad_e2e_training" not in bag.dags
    (error,) = bag.import_errors.values()
    assert "UNIAD_RETRY_DELAY_S='2m': give the seconds a failed task waits before its retry" in str(error)
