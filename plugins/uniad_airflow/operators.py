"""Airflow operators of the UniAD pipeline: thin adapters over the ``uniad`` package.

Constructors only store arguments; all work happens in ``execute`` through ``uniad``. Every task after
``preflight`` takes the run's plan as an argument (``plan=preflight.output``, a template field), so the DAG file
shows the dependency. Domain errors map to Airflow's by whether a retry can help (``airflow_error``): bad input, a
refused checkpoint, a failed gate, NaN or exploding gradients fail at once; a crashed process or a failed
transfer is retried.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from uniad_airflow.names import TRACKING_XCOM, dashboard_url
from uniad_airflow.settings import (
    allowed_roots,
    gpus_per_worker,
    runs_dir,
    slurm_controller_grace_s,
    slurm_export,
    slurm_partition,
    slurm_stop_signal_lead_s,
    tracking_uri,
    training_python,
    worker_jobs_dir,
)

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

    from uniad.run.plan import Plan


class TrainingDashboardLink(BaseOperatorLink):
    """The run's page in the training dashboard: curves, findings and progress of both stages."""

    name = "Training dashboard"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return dashboard_url(ti_key.run_id)


def airflow_error(exc: Exception, prefix: str = "") -> Exception:
    """The Airflow exception for a domain error: AirflowFailException (no retry) unless ``exc.retryable``."""
    retryable = getattr(exc, "retryable", True)
    return (AirflowException if retryable else AirflowFailException)(f"{prefix}{exc}")


@contextmanager
def domain_errors(prefix: str = "") -> Iterator[None]:
    """Raise the project's errors as Airflow's, with or without a retry (``airflow_error``)."""
    from uniad.errors import PipelineError

    try:
        yield
    except PipelineError as exc:
        raise airflow_error(exc, prefix) from exc


def cancel_jobs_of_run(context: Context) -> None:
    """The DAG run's failure callback: no job of the run trains on after the run failed (a task marked failed
    before a triggerer followed its job, or while none ran, leaves the job to no one). Runs where DAG callbacks run
    (the dag-processor): a local job is stopped through its work dir (the supervisor on its GPU worker acts on the
    control file), a Slurm job by ``scancel``, which needs Slurm's client there as on the GPU workers."""
    import logging

    log = logging.getLogger(__name__)
    run_id = context["run_id"]
    conf = getattr(context.get("dag_run"), "conf", None) or {}
    executor = (context.get("params") or {}).get("executor") or conf.get("executor")
    # None: a minimal callback context, which does not say: both are looked for.
    if executor in (None, "local"):
        _stop_local_jobs(context, run_id, log)
    if executor in (None, "slurm"):
        _cancel_slurm_jobs(run_id, log)


def _stop_local_jobs(context: Context, run_id: str, log) -> None:
    from uniad.errors import PipelineError
    from uniad.run.plan import Plan
    from uniad.stages import STAGES
    from uniad.train.local_job import cancel_run_jobs
    from uniad_airflow.names import PREFLIGHT

    ti = context.get("ti")
    plan = ti.xcom_pull(task_ids=PREFLIGHT) if ti is not None else None
    if not isinstance(plan, dict):
        log.info(
            "run %s has no plan (preflight did not pass, or a minimal callback context): no local job to stop", run_id
        )
        return
    try:
        work_dirs = [Plan.from_json(plan).work_dir(stage) for stage in STAGES]
        stopped = cancel_run_jobs([work_dir for work_dir in work_dirs if work_dir.path.is_dir()], run_id)
    except (PipelineError, OSError) as exc:
        log.error(
            "could not stop the local jobs of run %s: %s; stop them with python -m uniad stop WORK_DIR", run_id, exc
        )
        return
    if stopped:
        log.warning("run %s failed with local job(s) %s still training: asked to stop", run_id, ", ".join(stopped))


def _cancel_slurm_jobs(run_id: str, log) -> None:
    import shutil

    from uniad.errors import PipelineError
    from uniad.stages import STAGES
    from uniad.train.slurm import cancel_run_jobs

    if shutil.which("squeue") is None:
        log.info("no Slurm client here: no Slurm job of run %s looked for", run_id)
        return
    try:
        cancelled = cancel_run_jobs(run_id, STAGES)
    except PipelineError as exc:
        log.error("could not cancel the Slurm jobs of run %s: %s; look for them with squeue --name", run_id, exc)
        return
    if cancelled:
        log.warning("run %s failed with Slurm job(s) %s still active: cancelled", run_id, ", ".join(cancelled))


def stage_tracking():
    """Experiment tracking as this deployment sets it (``settings.tracking_uri``); off or down, it does nothing."""
    from uniad.tracking import Tracking

    return Tracking(tracking_uri())


def end_tracked_run(status: str):
    """A DAG run callback that ends the run's MLflow runs with ``status`` (FINISHED, FAILED)."""

    def end(context: Context) -> None:
        stage_tracking().end_pipeline(context["run_id"], status)

    end.__name__ = f"end_tracked_run_{status.lower()}"
    return end


class PlanOperator(BaseOperator):
    """A task that works from the run's plan, given as ``plan=preflight.output``; a task of one stage names it
    (``stage="stage1"`` or ``"stage2"``). The one constructor of the pipeline's operators but publish_model's: Airflow
    deep-copies the DAG's 40 parameters for every constructor in a task's class chain, at every parse."""

    template_fields = ("plan",)

    def __init__(self, *, plan: Any, stage: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.stage = stage

    def typed_plan(self) -> Plan:
        from uniad.run.plan import Plan

        with domain_errors():
            return Plan.from_json(self.plan)

    def register(self, context: Context, stage: str, checkpoint: Path, provenance: dict) -> str | None:
        """``checkpoint`` as a version of the stage's model in the registry (``uniad.registry``): its number, or None
        with tracking off or down (said in the log; the task goes on)."""
        from uniad.registry import MODELS, Registry

        registry = Registry(stage_tracking())
        version = registry.register(stage, context["run_id"], checkpoint, provenance)
        if version is not None:
            self.log.info("registered %s as %s version %s", checkpoint, MODELS[stage], version)
        elif registry.tracking.skipped:
            self.log.warning("not registered: tracking skipped: %s", registry.tracking.skipped[-1])
        return version


class UniADPreflightOperator(BaseOperator):
    """Validate the trigger parameters, check every path against the deployment's allowed roots, prepare the UniAD
    root (writing one for the mini profile), emit the plan."""

    ui_color = "#e8f4fd"

    def execute(self, context: Context) -> dict:
        from uniad.errors import ParamError
        from uniad.run.params import PipelineParams
        from uniad.run.plan import prepare
        from uniad.workdir import sanitize_run_id

        with domain_errors(prefix="invalid parameters: "):
            params = PipelineParams.from_mapping(dict(context["params"]))
            if params.executor == "slurm" and params.slurm_partition is None and slurm_partition():
                params = replace(params, slurm_partition=slurm_partition())
            if params.executor == "local" and params.nproc > gpus_per_worker():
                raise ParamError(
                    f"nproc_per_node={params.nproc} is more than the {gpus_per_worker()} GPU slots a training task "
                    "reserves on a worker (UNIAD_GPUS_PER_WORKER); lower nproc_per_node"
                )
            run_dir = runs_dir() / self.dag_id / sanitize_run_id(context["run_id"])
            # The configs are read by mmcv's Config in this worker's UNIAD_PYTHON (else its own interpreter); the
            # stages' interpreter, GPUs and backend are decided by the worker that trains, at each attempt.
            plan, notes = prepare(
                params, python=training_python(), mini_run_dir=run_dir, allowed=allowed_roots(params.profile)
            )
            for note in notes:
                self.log.warning("%s", note)
            if plan.slurm is not None:
                from uniad.train.slurm import check_cluster

                facts = check_cluster(plan.slurm, params.nproc, needs_gpus=params.profile == "uniad")
                self.log.info(
                    "Slurm: partition %s, %d node(s), gres %s, %d CPU(s) per rank",
                    facts["partition"],
                    facts["nodes"],
                    facts["gres"],
                    facts["cpus_per_task"],
                )
        self.log.info("profile %s, UniAD root %s", plan.profile, plan.uniad_root)
        for stage, spec in plan.stages.items():
            self.log.info(
                "%s: %s, %d epoch(s), %d process(es), backend %s, work dir %s",
                stage,
                spec.config,
                spec.max_epochs,
                spec.nproc_per_node,
                spec.backend,
                spec.work_dir,
            )
        self.log.info("stage-1 checkpoint will be promoted to %s", plan.ckpt_path)
        if plan.slurm is None:
            # What this worker cannot see: the GPU worker decides them when it launches each attempt.
            self.log.info(
                "the training interpreter (UNIAD_PYTHON), the GPUs and the backend are resolved by the GPU "
                "worker that runs each attempt"
            )
        return plan.to_json()


class UniADTrainOperator(PlanOperator):
    """Train one stage as a job that outlives the task (``uniad.train.executor``): a detached local process group on
    this GPU worker (executor=local) or a Slurm job (executor=slurm). The task adopts the job an earlier run of it
    left (the task state store's, or any the work dir or the cluster says is active), else submits one, and defers to
    the trigger that follows it: a worker restart or an api-server outage leaves the ranks training, and the retry
    re-attaches. Its end decides: success, a continuation in a new job, a retry, or a failure without one."""

    ui_color = "#fde8e8"
    operator_extra_links = (TrainingDashboardLink(),)
    _job = None  # (its StageExecutor, the job) once this run of the task has one

    def execute(self, context: Context) -> dict | None:
        # Airflow stores extra links when a task ends; push this one now so it works while the stage trains.
        link = TrainingDashboardLink()
        context["ti"].xcom_push(key=link.xcom_key, value=dashboard_url(context["run_id"]))
        plan = self.typed_plan()
        stage = self.stage_executor(context, plan)
        store = context.get("task_state_store")
        known = (store.get(self.job_key(stage)) if store is not None else None) or {}
        with domain_errors():
            job = stage.adopt(known.get("job_id"), known.get("started"))
            if job is not None and job.completed:  # it ended while no task followed it
                self.log.info(
                    "%s job %s, started by an earlier run of this task, has completed", stage.label, job.job_id
                )
                return self.execute_complete(context, {"job_id": job.job_id, "status": "COMPLETED", "state": job.state})
            if job is not None:
                self.log.info("re-attaching to %s job %s (%s)", stage.label, job.job_id, job.state["JobState"])
            else:
                job = stage.submit(context["ti"].try_number)
        self._job = (stage, job)  # stopped before it deferred: on_kill stops the job
        return self._follow(context, plan, stage, job)

    def on_kill(self) -> None:
        """The task was stopped before it deferred to its trigger (which stops the job from then on)."""
        if self._job is not None:
            stage, job = self._job
            self.log.warning("the task was stopped: stopping %s job %s", stage.label, job.job_id)
            stage.cancel(job.job_id, "the Airflow task was stopped")

    def attempt_spec(self, plan: Plan):
        """The stage as this worker launches it: with its own training interpreter (``UNIAD_PYTHON`` here, not
        where preflight ran)."""
        return replace(plan.stage(self.stage), python=training_python())

    @staticmethod
    def job_key(stage) -> str:
        """The job's id in the task state store (``uniad_local_job``, ``uniad_slurm_job``): a restarted task
        re-attaches to it."""
        return f"uniad_{stage.executor}_job"

    def stage_executor(self, context: Context, plan: Plan):
        """This stage of this run as this worker runs it: a ``StageExecutor``."""
        if plan.slurm is None:
            from uniad.train.local_job import LocalStage

            return LocalStage(
                self.attempt_spec(plan),
                stage=self.stage,
                run_id=context["run_id"],
                stall_timeout_s=plan.gate.stall_timeout_s,
                later_epochs=plan.later_epochs(self.stage),
                worker_jobs=worker_jobs_dir(),
                emit=self.log.info,
            )
        import os

        from uniad.train.slurm import job_environment
        from uniad.train.slurm_stage import SlurmStage

        return SlurmStage(
            self.attempt_spec(plan),
            plan.slurm,
            stage=self.stage,
            run_id=context["run_id"],
            env=job_environment(os.environ, slurm_export()),
            stop_signal_lead_s=slurm_stop_signal_lead_s(),
            emit=self.log.info,
        )

    def _follow(self, context: Context, plan: Plan, stage, job) -> None:
        """Keep the job's id for a restarted task and defer to the trigger that follows it."""
        from uniad_airflow.triggers import LocalJobTrigger, SlurmStageTrigger

        store = context.get("task_state_store")
        if store is not None:
            store.set(self.job_key(stage), {"job_id": job.job_id, "started": job.started})
        from uniad_airflow.alerts import airflow_run_link, dashboard_link

        tracking = stage_tracking()
        tracked = tracking.stage_run(
            context["run_id"],
            self.stage,
            params=plan.tracking_params(self.stage),
            tags={
                "airflow.url": airflow_run_link(context["run_id"]),
                "uniad.dashboard": dashboard_link(context["run_id"]),
            },
        )
        tracking.add_to_tag(tracked, f"uniad.{stage.executor}_jobs", job.job_id)
        ids = tracking.pipeline_ids(tracked)
        if ids is not None:  # the dashboard links the run to MLflow
            context["ti"].xcom_push(key=TRACKING_XCOM, value=ids)
        if tracking.skipped:
            self.log.warning("experiment tracking skipped for now: %s", tracking.skipped[-1])
        facts = {
            "job_id": job.job_id,
            "stage": self.stage,
            "work_dir": str(plan.work_dir(self.stage).path),
            "total_epochs": plan.stage(self.stage).max_epochs,
            "started": job.started,
            "stall_timeout_s": plan.gate.stall_timeout_s,
            "later_epochs": plan.later_epochs(self.stage),
            "run_id": context["run_id"],
            "tracking_run": tracked,
        }
        if stage.executor == "slurm":
            trigger = SlurmStageTrigger(**facts, controller_grace_s=slurm_controller_grace_s())
        else:
            trigger = LocalJobTrigger(**facts)
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict) -> dict:
        """The job ended: succeed, continue the stage in a new job, or fail with or without a retry by cause."""
        from uniad.train.ending import End
        from uniad.train.slurm import UNREACHABLE

        plan = self.typed_plan()
        stage = self.stage_executor(context, plan)
        outcome = stage.finish(event)
        store = context.get("task_state_store")
        if store is not None and event["status"] != UNREACHABLE:
            # Ended: a retry submits a new job. The controller away is no end: the retry re-attaches to this one.
            store.delete(self.job_key(stage))
        if outcome.cause is not None:
            from uniad_airflow.alerts import StageAlerts

            alerts = StageAlerts(plan.work_dir(self.stage).path, context["run_id"], self.stage)
            self.log.info("%s", alerts.alert(outcome.cause, outcome.message, failure=True) or "alerted before")
        if outcome.end is End.COMPLETED:
            return outcome.result
        if outcome.end is End.CONTINUE:
            self.log.warning("%s", outcome.message)
            with domain_errors():
                job = stage.submit(context["ti"].try_number, continuing=event["job_id"])
            return self._follow(context, plan, stage, job)
        raise (AirflowException if outcome.end is End.RETRY else AirflowFailException)(outcome.message)


class ValidateStageOperator(PlanOperator):
    """The gate of a stage: analyse its log and its evaluations (report in ``<work_dir>/health/``) and check that
    its ``latest.pth`` loads safely, is finite, fits the stage and is its last epoch. Fails on an unhealthy verdict
    (or a warning when the run is ``strict``), on a metric requirement not met, on a final epoch that was not
    evaluated (unless validation was off), and on an invalid checkpoint. Returns the final metrics too."""

    ui_color = "#e8fde8"

    def execute(self, context: Context) -> dict:
        from uniad.health.gate import validate_stage
        from uniad.health.monitor import ERROR, INFO
        from uniad_airflow.alerts import StageAlerts

        plan = self.typed_plan()
        alerts = StageAlerts(plan.work_dir(self.stage).path, context["run_id"], self.stage)

        def alert(findings) -> None:
            """The analysis' warnings and errors (a plateau, a metric requirement missed, ...), before the verdict;
            kinds alerted while the stage trained are not sent again."""
            for finding in findings:
                if finding.severity != INFO:
                    said = alerts.alert(
                        finding.code,
                        finding.message,
                        failure=finding.severity == ERROR,
                        epoch=finding.epoch,
                        it=finding.iter,
                    )
                    if said is not None:
                        self.log.info("%s", said)

        try:
            with domain_errors():
                result = validate_stage(
                    plan.work_dir(self.stage),
                    self.stage,
                    expect_epoch=plan.stage(self.stage).max_epochs,
                    strict=plan.gate.strict,
                    requirements=plan.requirements(self.stage),
                    evaluated=plan.stage(self.stage).validate,
                    references=plan.references(self.stage),
                    on_findings=alert,
                )
        except Exception:
            self.track_end(context, plan, "FAILED")
            raise
        self.track_end(context, plan, "FINISHED", (result.get("metrics") or {}).get("values"))
        return result

    def track_end(self, context: Context, plan: Plan, status: str, final: dict | None = None) -> None:
        """The stage's evaluations and artifacts (health report and plots, resolved config, Slurm trail, alerts,
        tf_logs/) to its MLflow run, which ends with the gate's verdict."""
        from uniad.health.logs import read_log

        tracking = stage_tracking()
        tracked = tracking.stage_run(context["run_id"], self.stage, params=plan.tracking_params(self.stage))
        if tracked is None:
            if tracking.skipped:
                self.log.warning("experiment tracking skipped: %s", tracking.skipped[-1])
            return
        work_dir = plan.work_dir(self.stage)
        evaluations = [
            (record["epoch"], record)
            for log in work_dir.json_logs()
            for record in read_log(log)[0]
            if record.get("mode") == "val" and isinstance(record.get("epoch"), int)
        ]
        if final:  # the final evaluation as the gate read it, with what only rank 0 printed (planning, occupancy)
            evaluations.append((plan.stage(self.stage).max_epochs, final))
        tracking.log_evaluations(tracked, evaluations)
        files = [
            (work_dir.health_dir, work_dir.health_dir.name),
            (work_dir.resolved_config(plan.stage(self.stage).config), "config"),
            (work_dir.slurm_jobs, "jobs"),
            (work_dir.alerts, "alerts"),
            (work_dir.tf_logs, work_dir.tf_logs.name),
        ]
        uploaded = tracking.log_artifacts(tracked, files)
        tracking.end(tracked, status)
        self.log.info("MLflow run %s of %s: %s, artifacts %s", tracked, self.stage, status, uploaded)
        if tracking.skipped:
            self.log.warning("experiment tracking skipped: %s", tracking.skipped[-1])


def _s3_client(aws_conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()


class FetchPretrainedOperator(PlanOperator):
    """Download the run's ``pretrained_s3_uris`` into ``<root>/ckpts/`` (verified, atomic) before stage 1."""

    ui_color = "#f0e8fd"

    def execute(self, context: Context) -> list[dict]:
        from uniad.artifacts.storage import download_file, parse_s3_uri

        storage = self.typed_plan().storage
        if not storage.pretrained:
            self.log.info("no pretrained_s3_uris: nothing to fetch")
            return []
        client = _s3_client(storage.aws_conn_id)
        fetched = []
        for item in storage.pretrained:
            with domain_errors():
                fetched.append(download_file(client, parse_s3_uri(item.uri, need_key=True), Path(item.path)))
            self.log.info("fetched %s -> %s (sha256 %s)", item.uri, item.path, fetched[-1]["sha256"])
        return fetched


class UploadArtifactsOperator(PlanOperator):
    """Upload a finished stage's checkpoint(s), logs and health report to ``<s3_uri>/<run_id>/`` through the
    amazon provider's S3 hook (``aws_conn_id``). Skipped when the run has no ``s3_uri``."""

    ui_color = "#f0e8fd"

    def execute(self, context: Context) -> list[dict]:
        from uniad.artifacts.storage import S3Location, parse_s3_uri, upload_artifacts
        from uniad.workdir import sanitize_run_id

        plan = self.typed_plan()
        if not plan.storage.uri:
            raise AirflowSkipException("no s3_uri for this run: artifacts stay in the UniAD root only")
        base = parse_s3_uri(plan.storage.uri)
        run_key = sanitize_run_id(context["run_id"])
        prefix = S3Location(base.bucket, f"{base.key}/{run_key}" if base.key else run_key)
        files = plan.artifacts(self.stage)
        self.log.info("uploading %d file(s) of %s to %s/", len(files), self.stage, prefix.uri)
        with domain_errors():
            return upload_artifacts(_s3_client(plan.storage.aws_conn_id), files, prefix)


class PromoteCheckpointOperator(PlanOperator):
    """Publish the verified stage-1 checkpoint at the plan's ckpt_path (atomic, with provenance). With an
    outlet Asset, its event carries the checkpoint's path, epoch and sha256."""

    ui_color = "#fdf6e8"

    def execute(self, context: Context) -> dict:
        from uniad.artifacts.publish import promote_checkpoint

        plan = self.typed_plan()
        with domain_errors():
            provenance = promote_checkpoint(
                plan.work_dir("stage1").latest,
                plan.ckpt_path,
                stage="stage1",
                expect_epoch=plan.stage("stage1").max_epochs,
            )
        self.log.info(
            "promoted %s (epoch %s, sha256 %s) to %s",
            provenance["source_resolved"],
            provenance["epoch"],
            provenance["sha256"],
            provenance["path"],
        )
        self.register(context, "stage1", Path(provenance["path"]), provenance)
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "path": provenance["path"],
                "epoch": provenance["epoch"],
                "sha256": provenance["sha256"],
                "run_id": context["run_id"],
            }
        return provenance


class PublishModelOperator(PlanOperator):
    """Champion/challenger after stage 2 passed its gate: publish its final checkpoint at the plan's publish path
    (atomic, provenance with metrics and run id) unless it is worse than the champion there on the plan's metric.
    Publishing emits the outlet Asset's event (path, sha256, metrics, run id); keeping the champion skips the task
    (no event), with the comparison in the log and in XCom. ``gate`` is validate_stage2's result (its metrics)."""

    template_fields = ("plan", "gate")
    ui_color = "#fdf6e8"

    def __init__(self, *, gate: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def execute(self, context: Context) -> dict:
        import os

        from uniad.artifacts.checkpoints import sha256_file
        from uniad.artifacts.publish import ChampionRule, publish_model
        from uniad.train import slurm
        from uniad.train.evaluate import evaluate_checkpoint, evaluate_checkpoint_on_slurm

        plan = self.typed_plan()
        spec = plan.stage("stage2")
        metrics = (self.gate or {}).get("metrics") or {}
        if not metrics.get("values"):
            raise AirflowFailException(
                "stage 2 has no evaluation to compare with the champion: run it with validate=true (or evaluate its "
                "checkpoint with python -m uniad evaluate and publish by hand)"
            )

        def score(champion: Path) -> dict:
            # Where the GPUs are: on the cluster for executor=slurm, else on this GPU worker (the task's queue and
            # pool), with the training interpreter of where it runs.
            if plan.slurm is not None:
                return evaluate_checkpoint_on_slurm(
                    replace(spec, python=training_python()),
                    plan.slurm,
                    str(champion),
                    work_dir=plan.work_dir("stage2").champion_evaluation,
                    env=slurm.job_environment(os.environ, slurm_export()),
                    job_name=slurm.job_name("evaluate", context["run_id"]),
                    emit=self.log.info,
                )
            return evaluate_checkpoint(
                spec.uniad_root,
                spec.config,
                str(champion),
                nproc_per_node=spec.nproc_per_node,
                python=training_python(),
                launcher=spec.launcher,
                backend=spec.backend,
                needs_gpus=spec.needs_gpus,
                emit_output=lambda line: self.log.info("%s", line),
            )

        from uniad.registry import Registry

        latest = plan.work_dir("stage2").latest
        registry = Registry(stage_tracking())
        champion = registry.champion()  # the registry's alias names the champion where tracking is on
        if champion is not None:
            self.log.info("the champion is %s version %s (run %s)", "uniad_e2e", champion["number"], champion["run_id"])
        with domain_errors():
            result = publish_model(
                latest,
                metrics["values"],
                plan.publish.path,
                ChampionRule(plan.publish.metric, plan.publish.tolerance),
                expect_epoch=spec.max_epochs,
                run_id=context["run_id"],
                score_champion=score,
                champion_metrics=champion["metrics"] if champion and champion["metrics"] else None,
            )
        self.log.info("%s", result["comparison"])
        # Every challenger is kept as a version; the alias moves only to one that was published.
        provenance = (
            result["champion"]
            if result["published"]
            else {
                "sha256": sha256_file(latest),
                "epoch": spec.max_epochs,
                "metrics": metrics["values"],
            }
        )
        version = self.register(context, "stage2", latest.resolve(), provenance)
        if version is not None and result["published"]:
            registry.crown(version)
            self.log.info("the champion alias now names version %s", version)
        result["registry_version"] = version
        if not result["published"]:
            context["ti"].xcom_push(key="return_value", value=result)
            raise AirflowSkipException(f"kept the champion {plan.publish.path}: {result['comparison']}")
        provenance = result["champion"]
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "path": provenance["path"],
                "sha256": provenance["sha256"],
                "metrics": provenance["metrics"],
                "run_id": context["run_id"],
            }
        return result


class RollbackModelOperator(BaseOperator):
    """Put a registered stage-2 model back: the file at ``publish_path`` is rewritten from that version (atomically,
    with provenance, its sha256 checked) and the registry's ``champion`` alias moves to it (``uniad.registry``).
    ``publish_path`` must be inside the deployment's allowed roots."""

    ui_color = "#f4e8fd"

    def execute(self, context: Context) -> dict:
        from uniad.errors import ParamError
        from uniad.registry import Registry

        params = context["params"]
        version, publish_path = str(params["model_version"]).strip(), str(params["publish_path"]).strip()
        with domain_errors(prefix="invalid parameters: "):
            if not version.isdigit():
                raise ParamError(f"model_version must be a registered version number, e.g. 3; got {version!r}")
            path = allowed_roots("uniad").check("publish_path", publish_path)
        registry = Registry(stage_tracking())
        with domain_errors():
            provenance = registry.rollback(version, path)
        self.log.info("%s is uniad_e2e version %s again (sha256 %s)", path, version, provenance["sha256"])
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "path": provenance["path"],
                "sha256": provenance["sha256"],
                "registry_version": version,
            }
        return provenance
