"""The operators' contract with Airflow, without running a DAG: which domain errors fail without a retry, and how
a task receives the plan."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from uniad.errors import (
    CheckpointError,
    GateFailed,
    LaunchError,
    ParamError,
    PipelineError,
    StorageError,
    TrainingFailed,
)
from uniad_airflow.operators import (
    PlanOperator,
    UniADTrainOperator,
    ValidateStageOperator,
    airflow_error,
    domain_errors,
)


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (ParamError("nproc_per_node must be ..."), False),
        (LaunchError("backend nccl needs one GPU per process"), False),
        (CheckpointError("refusing to promote"), False),
        (GateFailed("stage1 training is unhealthy"), False),
        (TrainingFailed("exited with code 1"), True),  # a crash, a killed rank, a hung rank
        (TrainingFailed("stopped by the health watch: non_finite_loss", retryable=False), False),
        (StorageError("upload failed"), True),
    ],
)
def test_which_domain_errors_are_retried(error, retried):
    mapped = airflow_error(error)
    assert type(mapped) is (AirflowException if retried else AirflowFailException)
    assert str(mapped) == str(error)
    with pytest.raises(type(mapped)) as info, domain_errors():
        raise error
    assert info.value.__cause__ is error


def test_every_project_error_is_mapped_and_others_pass_through():
    for kind in PipelineError.__subclasses__():
        assert isinstance(airflow_error(kind("x")), AirflowException), kind
    with pytest.raises(KeyError), domain_errors():  # a bug is not a domain error: it stays what it is
        raise KeyError("x")
    with (
        pytest.raises(AirflowFailException, match="invalid parameters: profile must be"),
        domain_errors(prefix="invalid parameters: "),
    ):
        raise ParamError("profile must be one of uniad, mini")


def test_the_training_health_watch_decides_retry():
    """The process runner marks a NaN stop non-retryable and a stall retryable (tests/unit/train)."""
    stalled = TrainingFailed("stall", retryable=True)
    assert isinstance(airflow_error(stalled), AirflowException) and not isinstance(
        airflow_error(stalled), AirflowFailException
    )


def test_tasks_take_the_plan_as_a_template_field():
    task = ValidateStageOperator(task_id="validate_stage1", stage="stage1", plan={"not": "a plan"})
    assert isinstance(task, PlanOperator) and task.template_fields == ("plan",)
    with pytest.raises(AirflowFailException, match="not a version-2 plan"):
        task.typed_plan()
    train = UniADTrainOperator(task_id="stage1_train", stage="stage1", plan={})
    assert train.stage == "stage1" and train.plan == {}


def test_a_stage_runs_with_the_interpreter_of_the_worker_that_trains(tmp_path, monkeypatch):
    """preflight runs on a default-queue worker whose UNIAD_PYTHON (if any) is not the GPU worker's: the plan names
    no interpreter, and each attempt takes the one of the worker it runs on."""
    from uniad.run.configs import ConfigFacts
    from uniad.run.params import PipelineParams
    from uniad.run.plan import Plan
    from uniad.vocabulary import STAGE1_CONFIG, STAGE2_CONFIG

    monkeypatch.setenv("UNIAD_PYTHON", "/opt/airflow-venv/bin/python")  # preflight's worker
    facts = {"stage1": ConfigFacts(STAGE1_CONFIG), "stage2": ConfigFacts(STAGE2_CONFIG)}
    plan = Plan.build(PipelineParams(profile="mini", uniad_root=str(tmp_path)), tmp_path, facts).to_json()
    assert all(spec["python"] is None for spec in plan["stages"].values())
    monkeypatch.setenv("UNIAD_PYTHON", "/opt/uniad-venv/bin/python")  # the GPU worker
    train = UniADTrainOperator(task_id="stage2_train", stage="stage2", plan=plan)
    assert train.attempt_spec(train.typed_plan()).python == "/opt/uniad-venv/bin/python"


def test_a_controller_that_stayed_away_fails_for_a_retry_and_records_no_end(tmp_path):
    """The trigger's UNREACHABLE event (Slurm's controller silent for the whole grace period) is not the job's end:
    a retryable failure that says so, before the audit trail or the task state store is touched (the retry
    re-attaches to the job whose id the store keeps)."""
    from uniad.run.configs import ConfigFacts
    from uniad.run.params import PipelineParams
    from uniad.run.plan import Plan
    from uniad.train import slurm
    from uniad.vocabulary import STAGE1_CONFIG, STAGE2_CONFIG

    facts = {"stage1": ConfigFacts(STAGE1_CONFIG), "stage2": ConfigFacts(STAGE2_CONFIG)}
    params = PipelineParams(profile="mini", uniad_root=str(tmp_path), executor="slurm")
    plan = Plan.build(params, tmp_path, facts)
    work_dir = plan.work_dir("stage1")
    work_dir.path.mkdir(parents=True)
    slurm.record_job(work_dir, "41", attempt=1, state="PENDING", nnodes=1)
    train = UniADTrainOperator(task_id="stage1_train", stage="stage1", plan=plan.to_json())

    event = {"job_id": "41", "status": slurm.UNREACHABLE, "away_s": 900.4, "state": {"Reason": "connect failure"}}
    with pytest.raises(AirflowException, match="did not answer about job 41 for 900 s") as raised:
        train.execute_complete({"run_id": "manual__2026-12-04"}, event)
    assert not isinstance(raised.value, AirflowFailException)
    assert slurm.read_jobs(work_dir) == [{**slurm.read_jobs(work_dir)[0], "state": "PENDING"}]


def test_a_stage_that_ran_out_of_memory_alerts_people_and_fails_without_a_retry(tmp_path, monkeypatch):
    """A local job whose ranks ran out of GPU memory: the task says so, alerts people once (apprise to an HTTP
    endpoint on loopback), and fails without a retry (the same settings run out of memory again)."""
    from support import apprise_connection, http_receiver
    from uniad.run.configs import ConfigFacts
    from uniad.run.params import PipelineParams
    from uniad.run.plan import Plan
    from uniad.vocabulary import STAGE1_CONFIG, STAGE2_CONFIG

    facts = {"stage1": ConfigFacts(STAGE1_CONFIG), "stage2": ConfigFacts(STAGE2_CONFIG)}
    plan = Plan.build(PipelineParams(profile="mini", uniad_root=str(tmp_path)), tmp_path, facts)
    plan.work_dir("stage2").path.mkdir(parents=True)
    train = UniADTrainOperator(task_id="stage2_train", stage="stage2", plan=plan.to_json())
    end = {
        "returncode": 1,
        "reason": "failed",
        "retryable": False,
        "message": "stage2 training exited with code 1: CUDA out of memory; lower samples_per_gpu",
        "finding": None,
        "out_of_memory": True,
    }
    event = {"job_id": "j7", "status": "FAILED", "state": {"JobState": "FAILED", "end": end}}
    with http_receiver() as (port, received):
        monkeypatch.setenv("AIRFLOW_CONN_UNIAD_NOTIFY", apprise_connection(f"json://127.0.0.1:{port}/"))
        for _ in range(2):  # the task's end handled twice (a re-run of execute_complete): one alert
            with pytest.raises(AirflowFailException, match="CUDA out of memory"):
                train.execute_complete({"run_id": "manual__oom"}, event)
    (alert,) = received
    assert alert["title"] == "[UniAD] stage2 of manual__oom: out_of_memory" and alert["type"] == "failure"
    assert "lower samples_per_gpu" in alert["message"]
