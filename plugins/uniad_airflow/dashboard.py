"""The training dashboard: a FastAPI app inside Airflow's api-server, behind Airflow's own auth.

    /uniad/                     the runs of uniad_e2e_training
    /uniad/runs/{run_id}        one run: progress, ETA, GPU-hours, curves, findings, the promoted checkpoint
    /uniad/compare?a=..&b=..    two runs' curves overlaid
    /uniad/api/runs             JSON list
    /uniad/api/runs/{run_id}    JSON: the run and ``uniad.views.dashboard.run_view``

Everything shown comes from what the pipeline already wrote: the run and its task states from the metadata
database, preflight's plan and the gate/promote results from XCom, and each stage's mmcv logs from its work dir
(read again on every request, so a run that is still training shows its latest record).
"""

from __future__ import annotations

import html
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select

from uniad_airflow.names import DAG_ID, DASHBOARD_PREFIX, PREFLIGHT, PROMOTE, PUBLISH, TRACKING_XCOM, TRAIN, VALIDATE

RUN_LIMIT = 100


def _requires_read_access():
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID))


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _run_summary(run: Any) -> dict:
    return {
        "run_id": run.run_id,
        "state": str(run.state) if run.state is not None else None,
        "run_type": str(run.run_type),
        "run_after": _iso(run.run_after),
        "start_date": _iso(run.start_date),
        "end_date": _iso(run.end_date),
        "conf": run.conf or {},
    }


def list_runs(limit: int = RUN_LIMIT) -> list[dict]:
    """The recent runs, newest first, each with what compares runs: its headline metric (the champion metric of the
    final evaluation), whether its model is the champion at its publish path now, and its MLflow run."""
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    wanted = {(PREFLIGHT, "return_value"), (VALIDATE["stage2"], "return_value"), (PUBLISH, "return_value")}
    wanted |= {(task_id, TRACKING_XCOM) for task_id in TRAIN.values()}
    with create_session() as session:
        runs = session.scalars(
            select(DagRun).where(DagRun.dag_id == DAG_ID).order_by(DagRun.run_after.desc()).limit(limit)
        )
        summaries = [_run_summary(run) for run in runs]
        results: dict[str, dict] = {summary["run_id"]: {} for summary in summaries}
        rows = session.scalars(
            select(XComModel).where(
                XComModel.dag_id == DAG_ID,
                XComModel.run_id.in_(list(results)),
                XComModel.task_id.in_({task for task, _ in wanted}),
                XComModel.key.in_({key for _, key in wanted}),
            )
        )
        for xcom in rows:
            if (xcom.task_id, xcom.key) in wanted:
                results[xcom.run_id][(xcom.task_id, xcom.key)] = XComModel.deserialize_value(xcom)
    return [{**summary, **_comparison(summary["run_id"], results[summary["run_id"]])} for summary in summaries]


def _comparison(run_id: str, results: dict) -> dict:
    from uniad.artifacts.publish import read_provenance
    from uniad.errors import PipelineError
    from uniad.run.plan import Plan
    from uniad_airflow.settings import mlflow_ui_url

    found: dict = {"headline": None, "champion": False, "mlflow_url": None}
    try:
        plan = Plan.from_json(results.get((PREFLIGHT, "return_value")))
    except (PipelineError, TypeError):
        return found  # preflight refused it, or has not run yet
    gate = results.get((VALIDATE["stage2"], "return_value")) or {}
    values = (gate.get("metrics") or {}).get("values") or {}
    if plan.publish.metric in values:
        found["headline"] = {"metric": plan.publish.metric, "value": values[plan.publish.metric]}
    found["champion"] = (read_provenance(plan.publish.path) or {}).get("run_id") == run_id
    tracked = next((results[k] for k in results if k[1] == TRACKING_XCOM and isinstance(results[k], dict)), None)
    ui = mlflow_ui_url()
    if tracked and ui:
        found["mlflow_url"] = f"{ui}/#/experiments/{tracked['experiment_id']}/runs/{tracked['run_id']}"
    return found


def run_detail(run_id: str) -> dict:
    """The run, its task states and the dashboard view of its artifacts; 404 for a run this DAG does not have."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from uniad.errors import PipelineError
    from uniad.run.plan import Plan
    from uniad.views.dashboard import run_view

    with create_session() as session:
        run = session.scalar(select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.run_id == run_id))
        if run is None:
            raise HTTPException(status_code=404, detail=f"{DAG_ID} has no run {run_id!r}")
        summary = _run_summary(run)
        tasks = {
            task_id: {"state": str(state) if state is not None else None, "try_number": tries}
            for task_id, state, tries in session.execute(
                select(TaskInstance.task_id, TaskInstance.state, TaskInstance.try_number).where(
                    TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run_id
                )
            )
        }
        results = {
            xcom.task_id: XComModel.deserialize_value(xcom)
            for xcom in session.scalars(XComModel.get_many(run_id=run_id, dag_ids=DAG_ID, key="return_value"))
        }
    plan = results.get(PREFLIGHT)
    detail = {"run": summary, "tasks": tasks, "view": None, "message": None}
    if not isinstance(plan, dict):
        state = tasks.get(PREFLIGHT, {}).get("state")
        detail["message"] = (
            "preflight failed: the parameters were refused (see the preflight task's log)"
            if state == "failed"
            else "waiting for preflight to validate the parameters and write the plan"
        )
        return detail
    gates = {}
    for stage, task_id in VALIDATE.items():
        result = results.get(task_id)
        if isinstance(result, dict):
            gates[stage] = {"verdict": result.get("verdict"), "report": result.get("report")}
    try:
        detail["view"] = run_view(
            Plan.from_json(plan),
            run_id,
            stage_states={stage: tasks.get(task_id, {}).get("state") for stage, task_id in TRAIN.items()},
            promoted=results.get(PROMOTE),
            published=results.get(PUBLISH),
            gates=gates,
        )
    except (OSError, PipelineError) as exc:
        detail["message"] = f"could not read this run's artifacts: {exc}"
    return detail


def _static(name: str) -> str:
    return resources.files("uniad_airflow").joinpath("static", name).read_text(encoding="utf-8")


def _page(request: Request) -> str:
    # The mount point (and any proxy prefix) is where the script and the API are, whatever the page's depth.
    base = html.escape(request.scope.get("root_path", DASHBOARD_PREFIX).rstrip("/"), quote=True)
    return _static("dashboard.html").replace("{{BASE}}", base)


def create_app() -> FastAPI:
    app = FastAPI(title="UniAD training dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    auth = _requires_read_access()

    @app.exception_handler(HTTPException)
    async def _login_for_pages(request: Request, exc: HTTPException) -> Response:
        # A person opening a page without a session goes to Airflow's login and comes back; one whose role may not
        # read this DAG's runs gets 403, like the API (sending them to the login again would loop).
        is_page = not request.url.path.startswith(f"{DASHBOARD_PREFIX}/api/")
        if is_page and exc.status_code in (401, 403):
            from airflow.api_fastapi.app import get_auth_manager

            login = get_auth_manager().get_url_login(next_url=str(request.url))
            if exc.status_code == 401:
                return RedirectResponse(login, status_code=303)
            return HTMLResponse(
                f"<h1>403 Forbidden</h1><p>Your role may not read the runs of {html.escape(DAG_ID)}: ask an Airflow "
                "admin for a role with read access to this DAG (Viewer or above), or "
                f'<a href="{html.escape(login, quote=True)}">log in as another user</a>.</p>',
                status_code=403,
            )
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.get("/api/runs", dependencies=[auth])
    def api_runs() -> list[dict]:
        return list_runs()

    @app.get("/api/runs/{run_id:path}", dependencies=[auth])
    def api_run(run_id: str) -> dict:
        return run_detail(run_id)

    @app.get("/dashboard.js", dependencies=[auth])
    def script() -> Response:
        return Response(_static("dashboard.js"), media_type="text/javascript")

    @app.get("/", dependencies=[auth], response_class=HTMLResponse)
    def index(request: Request) -> str:
        return _page(request)

    @app.get("/compare", dependencies=[auth], response_class=HTMLResponse)
    def compare_page(request: Request) -> str:
        return _page(request)

    @app.get("/runs/{run_id:path}", dependencies=[auth], response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> str:
        return _page(request)

    return app
