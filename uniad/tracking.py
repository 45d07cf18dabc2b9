"""Experiment tracking on MLflow, from the pipeline rather than from UniAD's code: the same for local and Slurm
stages, for the mini and the real model.

    tracking = Tracking("http://mlflow:5000")
    stage_run = tracking.stage_run("scheduled__2026-12-01", "stage1", params={...}, tags={...})
    tracking.log_records(stage_run, records, tracking.logged_step(stage_run))  # as the follower reads them
    tracking.log_evaluations(stage_run, evaluations)     # the gate: evaluations, artifacts, the stage's end
    tracking.log_artifacts(stage_run, [(work_dir.health_dir, "health")])
    tracking.end(stage_run, "FINISHED")

One MLflow run per pipeline run (experiment ``uniad_e2e_training``, tag ``airflow.run_id``) with a nested run per
stage (tag ``uniad.stage``); a retried or resumed stage finds its runs by those tags and goes on in them. Metrics are
logged at their global step (``(epoch - 1) * iters_per_epoch + iter``); the stage run's tag ``uniad.logged_step``
says how far, so a follower that starts again (a restarted triggerer, a new attempt replaying a log) logs no step
twice.

Tracking never fails a stage and never holds one up: MLflow's client gets one try per call with a short timeout, an
error is said once ("tracking skipped: ...") and tracking stays off for ``PAUSE_S`` before it tries again.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXPERIMENT = "uniad_e2e_training"
RUN_TAG, STAGE_TAG, STEP_TAG = "airflow.run_id", "uniad.stage", "uniad.logged_step"
PARENT_TAG = "mlflow.parentRunId"
PAUSE_S = 60.0
BATCH = 1000  # MLflow's limit of metrics per log_batch call
# The record fields that are not metrics.
NOT_METRICS = {"mode", "epoch", "iter", "iters_per_epoch", "time_str"}


def global_step(record: dict) -> int | None:
    """The record's iteration counted from the stage's start."""
    epoch, it, per_epoch = record.get("epoch"), record.get("iter"), record.get("iters_per_epoch")
    if not isinstance(epoch, int) or not isinstance(it, int):
        return None
    return (epoch - 1) * per_epoch + it if isinstance(per_epoch, int) else None


def run_filter(airflow_run_id: str, stage: str | None = None) -> str:
    """An MLflow search filter for the runs of an Airflow run (of one ``stage``, or ``pipeline``, when given)."""
    quoted = airflow_run_id.replace("'", "\\'")
    return f"tags.`{RUN_TAG}` = '{quoted}'" + (f" and tags.`{STAGE_TAG}` = '{stage}'" if stage else "")


def numeric_fields(record: dict) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in record.items()
        if key not in NOT_METRICS
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class Tracking:
    """MLflow at ``uri`` (None: tracking off). Every method returns None or nothing when tracking is off or down."""

    def __init__(self, uri: str | None, *, artifact_location: str | None = None, timeout_s: int = 5) -> None:
        self.uri = uri
        if artifact_location is None and uri is not None and uri.startswith("sqlite:///"):
            # A local store (make demo): its artifacts beside its database file, not in the process's folder.
            artifact_location = (Path(uri[len("sqlite:///") :]).parent / "artifacts").resolve().as_uri()
        self.artifact_location = artifact_location  # for a new experiment
        self.timeout_s = timeout_s
        self.skipped: list[str] = []
        self._client = None
        self._paused_until = 0.0

    @property
    def on(self) -> bool:
        return self.uri is not None and time.monotonic() >= self._paused_until

    def try_again(self) -> None:
        """End a pause after a failure now: for a last call that would otherwise lose what it carries."""
        self._paused_until = 0.0

    def guarded(self, what: str, call, *args, **kwargs):
        """``call(*args, **kwargs)``, or None when tracking is off, paused or the call fails (said once, then a pause:
        ``skipped`` keeps why). Every MLflow call of the pipeline goes through here, the client too: pass a
        function that reaches ``self.client`` inside, so that making the client is guarded as well."""
        if not self.on:
            return None
        try:
            return call(*args, **kwargs)
        except Exception as exc:  # MLflow down, refusing, or its store broken: the stage goes on without it
            self._paused_until = time.monotonic() + PAUSE_S
            self.skipped.append(f"{what}: {exc}")
            logger.warning(
                "tracking skipped (%s at %s): %s; the stage goes on, tracking retries in %.0f s",
                what,
                self.uri,
                str(exc).splitlines()[0][:300],
                PAUSE_S,
            )
            return None

    @property
    def client(self):
        if self._client is None:
            # One try per call, a short timeout: a tracking server that is down must not hold up a stage.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(self.timeout_s))
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------------ runs
    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        return self.client.create_experiment(EXPERIMENT, artifact_location=self.artifact_location)

    def _find_or_create(self, experiment_id: str, filter_string: str, name: str, tags: dict[str, str]) -> str:
        runs = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=1)
        if runs:
            return runs[0].info.run_id
        return self.client.create_run(experiment_id, tags=tags, run_name=name).info.run_id

    def stage_run(
        self, airflow_run_id: str, stage: str, *, params: dict[str, Any], tags: dict[str, str] | None = None
    ) -> str | None:
        """The MLflow run of ``stage`` of this pipeline run, nested in the pipeline run's, created with ``params``
        (the plan) the first time; the same ids for a retry or a resumed stage."""

        def find() -> str:
            experiment = self._experiment_id()
            parent = self._find_or_create(
                experiment,
                run_filter(airflow_run_id, "pipeline"),
                airflow_run_id,
                {RUN_TAG: airflow_run_id, STAGE_TAG: "pipeline", **(tags or {})},
            )
            child = self._find_or_create(
                experiment,
                run_filter(airflow_run_id, stage),
                stage,
                {RUN_TAG: airflow_run_id, STAGE_TAG: stage, PARENT_TAG: parent, **(tags or {})},
            )
            self._log_params(child, params)
            return child

        return self.guarded("opening the stage's run", find)

    def pipeline_ids(self, stage_run: str | None) -> dict[str, str] | None:
        """``experiment_id`` and the pipeline's ``run_id`` of a stage's MLflow run (for links to MLflow's UI)."""
        if stage_run is None:
            return None

        def ids() -> dict[str, str]:
            run = self.client.get_run(stage_run)
            return {"experiment_id": run.info.experiment_id, "run_id": run.data.tags.get(PARENT_TAG, stage_run)}

        return self.guarded("reading the run's ids", ids)

    def _log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        logged = self.client.get_run(run_id).data.params
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in logged]
        if new:  # a param is logged once; a retry with the same plan has nothing new
            self.client.log_batch(run_id, params=new)

    def set_tags(self, run_id: str | None, tags: dict[str, str]) -> None:
        if run_id is not None:
            self.guarded("tagging the stage's run", self._set_tags, run_id, tags)

    def add_to_tag(self, run_id: str | None, key: str, value: str) -> None:
        """Add ``value`` to the comma-separated list in tag ``key`` (a stage's jobs: every attempt and continuation)."""
        if run_id is None:
            return

        def add() -> None:
            listed = [v for v in self.client.get_run(run_id).data.tags.get(key, "").split(",") if v]
            if value not in listed:
                self._set_tags(run_id, {key: ",".join([*listed, value])})

        self.guarded("tagging the stage's run", add)

    def _set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    # ------------------------------------------------------------------ metrics
    def logged_step(self, run_id: str | None) -> int | None:
        """How far the stage's train records were logged, by any follower before this one."""
        if run_id is None:
            return None
        tags = self.guarded("reading the stage's run", lambda: self.client.get_run(run_id).data.tags)
        return int(tags.get(STEP_TAG, -1)) if tags is not None else None

    def log_records(self, run_id: str | None, records: Iterable[dict], after_step: int = -1) -> int | None:
        """Log the numeric fields of train ``records`` after ``after_step`` at their global steps, in batches:
        the last step logged (``after_step`` when there was nothing new), None when tracking is off or down."""
        if run_id is None or not self.on:
            return None
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics, last = [], after_step
        for record in records:
            step = global_step(record)
            if record.get("mode") != "train" or step is None or step <= after_step:
                continue
            metrics += [Metric(k, v, now, step) for k, v in numeric_fields(record).items()]
            last = max(last, step)
        if not metrics:
            return after_step

        def send() -> int:
            self._log_metrics(run_id, metrics)
            self._set_tags(run_id, {STEP_TAG: str(last)})
            return last

        return self.guarded("logging metrics", send)

    def log_evaluations(self, run_id: str | None, evaluations: Iterable[tuple[int, dict[str, float]]]) -> None:
        """Each evaluation's metrics at its epoch (the step of ``val_`` metrics is the epoch)."""
        if run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        by_key = {
            (f"val/{k}", epoch): v for epoch, values in evaluations for k, v in numeric_fields(values).items()
        }  # an epoch's value once, the later reading winning (the gate's, which has the printed metrics too)
        metrics = [Metric(key, v, now, epoch) for (key, epoch), v in by_key.items()]
        if not metrics:
            return
        logged = self.guarded("reading evaluations", lambda: self.client.get_metric_history(run_id, metrics[0].key))
        if logged is None or {m.step for m in logged} >= {m.step for m in metrics}:
            return  # tracking down, or logged by an earlier attempt of the gate
        self.guarded("logging evaluations", self._log_metrics, run_id, metrics)

    def _log_metrics(self, run_id: str, metrics: list) -> None:
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[i : i + BATCH])

    # ------------------------------------------------------------------ artifacts and the end
    def log_artifacts(self, run_id: str | None, files: Iterable[tuple[Path, str]]) -> list[str]:
        """Upload each (file or folder, folder in the run's artifacts); what was uploaded."""
        done = []
        for path, folder in files:
            if run_id is None or not path.exists():
                continue

            def upload(path: Path = path, folder: str = folder) -> bool:
                (self.client.log_artifacts if path.is_dir() else self.client.log_artifact)(run_id, str(path), folder)
                return True

            if self.guarded(f"uploading {path.name}", upload):
                done.append(f"{folder}/{path.name}" if not path.is_dir() else folder)
        return done

    def end_pipeline(self, airflow_run_id: str, status: str) -> None:
        """End the pipeline run's MLflow run (and a stage's left open) with ``status``."""

        def end() -> None:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            if experiment is None:
                return
            for run in self.client.search_runs([experiment.experiment_id], run_filter(airflow_run_id)):
                if run.info.status == "RUNNING":
                    self.client.set_terminated(run.info.run_id, status)

        self.guarded("ending the pipeline's run", end)

    def end(self, run_id: str | None, status: str) -> None:
        """``FINISHED`` or ``FAILED``."""
        if run_id is not None:
            self.guarded("ending the stage's run", lambda: self.client.set_terminated(run_id, status))
