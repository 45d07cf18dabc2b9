"""Airflow operators of the UniAD pipeline: thin adapters over the ``uniad`` package.

Constructors only store arguments; all work happens in ``execute`` through ``uniad``. Bad input and invalid
checkpoints fail without retry (a retry cannot fix them); a crashed training process fails retryably.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseOperator, BaseOperatorLink
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from uniad_airflow.settings import gpus_per_worker, runs_dir, training_python

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

DAG_ID = "uniad_e2e_training"
PLAN_TASK_ID = "preflight"
DASHBOARD_PREFIX = "/uniad"  # where the training dashboard (uniad_airflow.dashboard) is mounted in the api-server


def dashboard_url(run_id: str) -> str:
    return f"{DASHBOARD_PREFIX}/runs/{quote(run_id, safe='')}"


class TrainingDashboardLink(BaseOperatorLink):
    """The run's page in the training dashboard: curves, findings and progress of both stages."""

    name = "Training dashboard"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return dashboard_url(ti_key.run_id)


class _PlanMixin:
    def _plan(self, context: Context) -> dict:
        plan = context["ti"].xcom_pull(task_ids=PLAN_TASK_ID)
        if not plan:
            raise AirflowFailException(
                f"no plan in XCom from task {PLAN_TASK_ID!r}; did preflight run in this dag run?"
            )
        return plan


class UniADPreflightOperator(BaseOperator):
    """Validate the trigger parameters, prepare the UniAD root (writing one for the mini profile), emit the plan."""

    ui_color = "#e8f4fd"

    def execute(self, context: Context) -> dict:
        from uniad.errors import PipelineError
        from uniad.pipeline import PipelineParams, build_plan, prepare_root, sanitize_run_id

        try:
            params = PipelineParams.from_mapping(dict(context["params"]))
            if params.nproc > gpus_per_worker():
                raise PipelineError(
                    f"nproc_per_node={params.nproc} is more than the {gpus_per_worker()} GPU slots a training task "
                    "reserves on a worker (UNIAD_GPUS_PER_WORKER); lower nproc_per_node"
                )
            run_dir = runs_dir() / self.dag_id / sanitize_run_id(context["run_id"])
            root = prepare_root(params, mini_run_dir=run_dir)
            plan = build_plan(params, root, python=training_python())
        except PipelineError as exc:
            raise AirflowFailException(f"invalid parameters: {exc}") from exc
        self.log.info("profile %s, UniAD root %s", plan["profile"], plan["uniad_root"])
        for stage, spec in plan["stages"].items():
            self.log.info(
                "%s: %s, %d epoch(s), %d process(es), backend %s, work dir %s",
                stage,
                spec["config"],
                spec["max_epochs"],
                spec["nproc_per_node"],
                spec["backend"],
                spec["work_dir"],
            )
        self.log.info("stage-1 checkpoint will be promoted to %s", plan["ckpt_path"])
        return plan


class UniADTrainOperator(_PlanMixin, BaseOperator):
    """Train one stage with torch.distributed in its own process group; ``on_kill`` stops every rank."""

    ui_color = "#fde8e8"
    operator_extra_links = (TrainingDashboardLink(),)

    def __init__(self, *, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage
        self._run = None

    def execute(self, context: Context) -> dict:
        from uniad.errors import LaunchError, TrainingFailed
        from uniad.health import Thresholds
        from uniad.pipeline import later_epochs, stage_spec, stage_work_dir
        from uniad.resume import plan_attempt
        from uniad.runner import make_stage_run

        # Airflow stores extra links when a task ends; push this one now so it works while the stage trains.
        link = TrainingDashboardLink()
        context["ti"].xcom_push(key=link.xcom_key, value=dashboard_url(context["run_id"]))
        plan = self._plan(context)
        attempt = plan_attempt(stage_spec(plan, self.stage), self.stage, run_id=context["run_id"])
        if attempt.resumed_from:
            self.log.info("attempt %s: %s", context["ti"].try_number, attempt.describe())
        for line in attempt.skipped + attempt.warnings:
            self.log.warning("%s", line)
        try:
            self._run = make_stage_run(
                attempt.spec,
                stage=self.stage,
                emit_output=lambda line: self.log.info("%s", line),
                emit_progress=lambda progress: self.log.info("%s", progress.line()),
                thresholds=Thresholds(stall_min_s=plan["stall_timeout_s"]),
                later_epochs=later_epochs(plan, self.stage),
                resume_point=attempt.resume_point,
            )
        except LaunchError as exc:
            raise AirflowFailException(str(exc)) from exc
        try:
            result = self._run.run()
        except TrainingFailed as exc:
            failure = self._run.health_failure
            if failure is not None and failure.code != "stall":
                # NaN or exploding gradients come back on a plain retry; a hung rank may not.
                raise AirflowFailException(str(exc)) from exc
            raise AirflowException(str(exc)) from exc
        work_dir = stage_work_dir(plan, self.stage)
        latest = work_dir / "latest.pth"
        return {
            "stage": self.stage,
            "work_dir": str(work_dir),
            "latest_checkpoint": str(latest.resolve()) if latest.exists() else None,
            "backend": self._run.command.backend,
            "backend_reason": self._run.backend_reason,
            "resumed_from": attempt.resumed_from,
            "skipped_checkpoints": attempt.skipped,
            "duration_s": round(result.duration_s, 1),
            "final_loss": result.last_progress.loss if result.last_progress else None,
        }

    def on_kill(self) -> None:
        if self._run is not None:
            self._run.terminate(reason="the Airflow task was stopped")


class ValidateStageOperator(_PlanMixin, BaseOperator):
    """The training-health gate of a stage: analyse its log (report in ``<work_dir>/health/``) and check that its
    ``latest.pth`` loads safely, is finite, fits the stage and is its last epoch. Fails on an unhealthy verdict
    (or a warning when the run is ``strict``) and on an invalid checkpoint."""

    ui_color = "#e8fde8"

    def __init__(self, *, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage

    def execute(self, context: Context) -> dict:
        from uniad.errors import CheckpointError, GateFailed
        from uniad.gate import validate_stage
        from uniad.pipeline import stage_spec, stage_work_dir

        plan = self._plan(context)
        try:
            return validate_stage(
                stage_work_dir(plan, self.stage),
                self.stage,
                expect_epoch=stage_spec(plan, self.stage).max_epochs,
                strict=plan.get("strict", False),
            )
        except (GateFailed, CheckpointError) as exc:
            raise AirflowFailException(str(exc)) from exc


def _s3_client(aws_conn_id: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=aws_conn_id).get_conn()


class FetchPretrainedOperator(_PlanMixin, BaseOperator):
    """Download the run's ``pretrained_s3_uris`` into ``<root>/ckpts/`` (verified, atomic) before stage 1."""

    ui_color = "#f0e8fd"

    def execute(self, context: Context) -> list[dict]:
        from uniad.storage import StorageError, download_file, parse_s3_uri

        s3 = self._plan(context)["s3"]
        if not s3["pretrained"]:
            self.log.info("no pretrained_s3_uris: nothing to fetch")
            return []
        client = _s3_client(s3["aws_conn_id"])
        fetched = []
        for item in s3["pretrained"]:
            try:
                fetched.append(download_file(client, parse_s3_uri(item["uri"], need_key=True), Path(item["path"])))
            except StorageError as exc:
                raise AirflowException(str(exc)) from exc
            self.log.info("fetched %s -> %s (sha256 %s)", item["uri"], item["path"], fetched[-1]["sha256"])
        return fetched


class UploadArtifactsOperator(_PlanMixin, BaseOperator):
    """Upload a finished stage's checkpoint(s), logs and health report to ``<s3_uri>/<run_id>/`` through the
    amazon provider's S3 hook (``aws_conn_id``). Skipped when the run has no ``s3_uri``."""

    ui_color = "#f0e8fd"

    def __init__(self, *, stage: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stage = stage

    def execute(self, context: Context) -> list[dict]:
        from uniad.pipeline import sanitize_run_id
        from uniad.storage import S3Location, StorageError, parse_s3_uri, stage_artifacts, upload_artifacts

        plan = self._plan(context)
        if not plan["s3"]["uri"]:
            raise AirflowSkipException("no s3_uri for this run: artifacts stay in the UniAD root only")
        base = parse_s3_uri(plan["s3"]["uri"])
        run_key = sanitize_run_id(context["run_id"])
        prefix = S3Location(base.bucket, f"{base.key}/{run_key}" if base.key else run_key)
        files = stage_artifacts(plan, self.stage)
        self.log.info("uploading %d file(s) of %s to %s/", len(files), self.stage, prefix.uri)
        try:
            return upload_artifacts(_s3_client(plan["s3"]["aws_conn_id"]), files, prefix)
        except StorageError as exc:
            raise AirflowException(str(exc)) from exc


class PromoteCheckpointOperator(_PlanMixin, BaseOperator):
    """Publish the verified stage-1 checkpoint at the plan's ckpt_path (atomic, with provenance). With an
    outlet Asset, its event carries the checkpoint's path, epoch and sha256."""

    ui_color = "#fdf6e8"

    def execute(self, context: Context) -> dict:
        from uniad.checkpoints import promote_checkpoint
        from uniad.errors import CheckpointError
        from uniad.pipeline import stage_spec, stage_work_dir

        plan = self._plan(context)
        source = stage_work_dir(plan, "stage1") / "latest.pth"
        try:
            provenance = promote_checkpoint(
                source, plan["ckpt_path"], stage="stage1", expect_epoch=stage_spec(plan, "stage1").max_epochs
            )
        except CheckpointError as exc:
            raise AirflowFailException(str(exc)) from exc
        self.log.info(
            "promoted %s (epoch %s, sha256 %s) to %s",
            provenance["source_resolved"],
            provenance["epoch"],
            provenance["sha256"],
            provenance["path"],
        )
        for asset in self.outlets:
            context["outlet_events"][asset].extra = {
                "path": provenance["path"],
                "epoch": provenance["epoch"],
                "sha256": provenance["sha256"],
                "run_id": context["run_id"],
            }
        return provenance
