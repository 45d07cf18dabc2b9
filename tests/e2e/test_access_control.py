"""Production access control with real parts: an api-server with the FAB auth manager on PostgreSQL, users of
several roles created through Airflow's own CLI, REST tokens per user, and a Viewer logging in through FAB's
login form in headless Chromium."""

from __future__ import annotations

import os
import secrets
import uuid
from urllib.parse import quote, unquote

import pytest

from services import POSTGRES, api_healthy, http, service_group, user_token
from support import BIN, REPO, airflow_env, chromium, run
from uniad.train.launch import find_free_port

DAG_ID = "uniad_e2e_training"
FAB = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    """Users admin (from the deployment secret), viewer, op and nodag (a role without any DAG permission)."""
    from sqlalchemy import create_engine, text

    home = tmp_path_factory.mktemp("airflow-fab")
    database = f"uniad_fab_{uuid.uuid4().hex[:10]}"
    server = create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with server.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    admin_password = secrets.token_urlsafe(18)
    env = {
        **os.environ,
        **airflow_env(home),
        "AIRFLOW__CORE__AUTH_MANAGER": FAB,
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"{POSTGRES}/{database}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "UNIAD_ADMIN_PASSWORD": admin_password,
    }
    airflow = str(BIN / "airflow")
    users = {"admin": admin_password}
    try:
        run([airflow, "db", "migrate"], env=env, timeout=300)
        created = run(
            [str(BIN / "python"), "-m", "uniad_airflow.admin"], env={**env, "PYTHONPATH": str(REPO / "plugins")}
        )
        assert "created admin user 'admin' with role Admin" in created.stderr
        assert admin_password not in created.stdout + created.stderr  # a secret never reaches a log
        again = run(
            [str(BIN / "python"), "-m", "uniad_airflow.admin"], env={**env, "PYTHONPATH": str(REPO / "plugins")}
        )
        assert "exists; left unchanged" in again.stderr
        run([airflow, "roles", "create", "NoDags"], env=env)
        for name, role in (("viewer", "Viewer"), ("op", "Op"), ("nodag", "NoDags")):
            users[name] = secrets.token_urlsafe(12)
            run(
                [
                    airflow,
                    "users",
                    "create",
                    "--username",
                    name,
                    "--role",
                    role,
                    "--firstname",
                    name,
                    "--lastname",
                    "Tester",
                    "--email",
                    f"{name}@example.org",
                    f"--password={users[name]}",
                ],
                env=env,
            )
        run([airflow, "dags", "reserialize"], env=env, timeout=300)
        port = find_free_port()
        argv = [airflow, "api-server", "--port", str(port)]
        with service_group(argv, home / "api-server.log", env, api_healthy(port)):
            tokens = {name: user_token(port, name, password) for name, password in users.items()}
            yield {"base": f"http://127.0.0.1:{port}", "tokens": tokens, "users": users}
    finally:
        with server.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        server.dispose()


def test_roles_decide_who_may_trigger_and_who_may_read(fab):
    base, tokens = fab["base"], fab["tokens"]
    trigger = f"{base}/api/v2/dags/{DAG_ID}/dagRuns"
    body = {"dag_run_id": "op_run", "logical_date": None, "conf": {"profile": "mini", "stage1_epochs": 1}}
    assert http("POST", trigger, token=tokens["viewer"], body={**body, "dag_run_id": "viewer_run"})[0] == 403
    assert http("POST", trigger, token=tokens["nodag"], body={**body, "dag_run_id": "nodag_run"})[0] == 403
    status, answer = http("POST", trigger, token=tokens["op"], body=body)
    assert status == 200, answer
    # A Viewer reads the runs and the dashboard.
    status, runs = http("GET", f"{base}/uniad/api/runs", token=tokens["viewer"])
    assert status == 200 and [r["run_id"] for r in runs] == ["op_run"]
    status, detail = http("GET", f"{base}/uniad/api/runs/op_run", token=tokens["viewer"])
    assert status == 200 and detail["run"]["run_id"] == "op_run"
    assert http("GET", f"{base}/uniad/", token=tokens["viewer"])[0] == 200
    # A Viewer may not change task state either.
    status, _ = http(
        "PATCH", f"{base}/api/v2/dags/{DAG_ID}/dagRuns/op_run", token=tokens["viewer"], body={"state": "failed"}
    )
    assert status == 403


def test_a_user_without_dag_access_gets_403_from_every_dashboard_route(fab):
    base, token = fab["base"], fab["tokens"]["nodag"]
    for path in ("/uniad/api/runs", "/uniad/api/runs/op_run", "/uniad/", "/uniad/runs/op_run", "/uniad/dashboard.js"):
        status, answer = http("GET", base + path, token=token)
        assert status == 403, (path, status, answer)
    assert "Your role may not read the runs of uniad_e2e_training" in http("GET", f"{base}/uniad/", token=token)[1]


def test_without_a_session_pages_go_to_the_login_and_the_api_says_401(fab):
    base = fab["base"]
    status, location = http("GET", f"{base}/uniad/runs/op_run")
    assert status == 303 and "/auth/login" in location
    assert f"{base}/uniad/runs/op_run" in unquote(location)
    assert http("GET", f"{base}/uniad/api/runs")[0] == 401
    assert http("GET", f"{base}/uniad/api/runs", token="not-a-token")[0] == 403


def test_a_viewer_logs_in_through_the_form_and_sees_the_dashboard(fab):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(window="1400,900")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        driver.get(f"{fab['base']}/uniad/")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.NAME, "username"))
        assert "/auth/login" in driver.current_url  # FAB's own login form
        driver.find_element(By.NAME, "username").send_keys("viewer")
        driver.find_element(By.NAME, "password").send_keys(fab["users"]["viewer"])
        driver.find_element(By.CSS_SELECTOR, "input[type=submit], button[type=submit]").click()
        # Looked up afresh on every poll: an element held across the post-login redirect goes stale.
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.LINK_TEXT, "op_run"))
        assert driver.current_url == f"{fab['base']}/uniad/"
        link = driver.find_element(By.LINK_TEXT, "op_run")
        assert link.get_attribute("href").endswith(f"/uniad/runs/{quote('op_run')}")
        driver.save_screenshot(str(ARTIFACTS / "dashboard_viewer_fab.png"))
    finally:
        driver.quit()
