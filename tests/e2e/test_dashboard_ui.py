"""The dashboard in a real Airflow api-server: its API behind Airflow's auth, and the page in headless Chromium.

Runs come from `airflow dags test` on the mini profile. The browser test saves screenshots in test-artifacts/.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote, unquote

import pytest

from services import admin_credentials, api_healthy, api_token, http, service_group, stop_group
from support import BIN, PYTHON, REPO, chromium, processes_mentioning, run
from uniad.train.launch import find_free_port
from uniad.workdir import provenance_path

DAG_ID = "uniad_e2e_training"
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def finished_run(reference_run) -> dict:
    """The session's reference run (6 + 20 epochs of the mini through dags test), finished."""
    return reference_run


@pytest.fixture(scope="module")
def server(airflow_home, finished_run):
    port = find_free_port()
    argv = [str(BIN / "airflow"), "api-server", "--port", str(port)]
    with service_group(argv, airflow_home / "api-server.log", dict(os.environ), api_healthy(port)):
        base = f"http://127.0.0.1:{port}"
        token = api_token(airflow_home, port)
        status, runs = http("GET", f"{base}/uniad/api/runs", token=token)
        assert status == 200, runs
        run_id = next(r["run_id"] for r in runs if r["conf"].get("uniad_root") == str(finished_run["root"]))
        yield {"base": base, "token": token, "run_id": run_id, "port": port}


def test_the_api_shows_a_finished_run(server, finished_run):
    base, token, run_id = server["base"], server["token"], server["run_id"]
    status, detail = http("GET", f"{base}/uniad/api/runs/{quote(run_id, safe='')}", token=token)
    assert status == 200, detail
    assert detail["run"]["state"] == "success" and detail["message"] is None
    view = detail["view"]
    first, second = view["stages"]
    for stage in (first, second):
        assert stage["task_state"] == "success" and stage["gate"]["verdict"] == "healthy"
    for stage, epochs in ((first, 6), (second, 20)):
        assert (stage["epoch"], stage["iter"], stage["progress"]) == (epochs, 40, 1.0)
        assert stage["gpu_hours"] > 0 and len(stage["series"]["x"]) == 4 * epochs  # a record every 10 iterations
        assert stage["checkpoint"]["file"] == f"epoch_{epochs}.pth" and stage["checkpoint"]["at_risk_iters"] == 0
    assert view["handoff_x"] == 240 and second["x_offset"] == 240
    assert "zero_by_design" in {f["code"] for f in first["findings"]}
    sidecar = json.loads(provenance_path(finished_run["root"] / "ckpts/full_track_map.pth").read_text())
    assert {k: view["promoted"][k] for k in ("path", "sha256", "epoch")} == {
        k: sidecar[k] for k in ("path", "sha256", "epoch")
    }
    # The training tasks link to the page.
    status, links = http(
        "GET",
        f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id, safe='')}/taskInstances/stage1_train/links",
        token=token,
    )
    assert status == 200 and links["extra_links"]["Training dashboard"] == f"/uniad/runs/{quote(run_id, safe='')}"


def test_everything_is_behind_airflows_auth(server):
    base, run_id = server["base"], quote(server["run_id"], safe="")
    for path in ("/uniad/api/runs", f"/uniad/api/runs/{run_id}"):
        assert http("GET", base + path)[0] == 401
        assert http("GET", base + path, token="not-a-token")[0] == 403
    # A page sends a person without a session to Airflow's login, which brings them back.
    status, location = http("GET", f"{base}/uniad/runs/{run_id}")
    assert status == 303 and location.startswith("/auth/login?next=")
    assert f"{base}/uniad/runs/{server['run_id']}" in unquote(location)
    assert http("GET", f"{base}/uniad/api/runs/no-such-run", token=server["token"])[0] == 404


def test_the_page_in_chromium(server):
    """Log in through Airflow's form, open the run's page, check the curves and findings, keep a screenshot."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(window="1400,2100")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        page = f"{server['base']}/uniad/runs/{quote(server['run_id'], safe='')}"
        driver.get(page)
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.NAME, "username"))
        user, password = admin_credentials(Path(os.environ["AIRFLOW_HOME"]))
        driver.find_element(By.NAME, "username").send_keys(user)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "path.series")) >= 4)
        charts = [c.get_attribute("data-chart") for c in driver.find_elements(By.CSS_SELECTOR, ".chart")]
        assert charts[:4] == [
            "total loss",
            "loss by task group",
            "grad_norm (before clipping)",
            "learning rate (log scale)",
        ]
        # Model quality: a metrics table per stage and a curve of each headline metric over the evaluations.
        assert "stage1: pts_bbox_NuScenes/amota" in charts and "stage2: planning/L2_avg" in charts, charts
        assert driver.find_elements(By.CSS_SELECTOR, ".chart circle.marker")  # one marker per evaluation
        tables = driver.find_elements(By.CSS_SELECTOR, "table.metrics")
        assert [t.get_attribute("data-stage") for t in tables] == ["stage1", "stage2"]
        assert "pts_bbox_NuScenes/amota" in tables[0].text and "epoch 6" in tables[0].text
        published = driver.find_element(By.ID, "published").text
        assert "no champion at" in published and "publishing the first model" in published, published
        curves = driver.find_elements(By.CSS_SELECTOR, ".chart")[:4]
        paths = [p for chart in curves for p in chart.find_elements(By.CSS_SELECTOR, "path.series")]
        assert all(len(p.get_attribute("d")) > 20 for p in paths), "a curve has no points"
        assert len(driver.find_elements(By.CSS_SELECTOR, "line.handoff")) == 4  # the stage hand-off on each chart
        assert driver.find_elements(By.CSS_SELECTOR, "line.epoch-boundary")
        findings = driver.find_elements(By.CSS_SELECTOR, "#findings tr.finding")
        assert findings and "zero_by_design" in findings[0].text
        progress = [p.text for p in driver.find_elements(By.CSS_SELECTOR, ".card .progress")]
        assert progress == ["epoch 6/6, iter 40/40 (100%)", "epoch 20/20, iter 40/40 (100%)"]
        checkpoints = [c.text for c in driver.find_elements(By.CSS_SELECTOR, ".card .checkpoint")]
        assert checkpoints == [f"epoch_{n}.pth; a crash now loses 0 iteration(s) (~0s)" for n in (6, 20)], checkpoints
        assert len(driver.find_element(By.CSS_SELECTOR, "#promoted .sha256").text) == 64
        driver.save_screenshot(str(ARTIFACTS / "dashboard_run.png"))
        # The same page as the run's "Training curves" tab inside Airflow's UI.
        driver.get(f"{server['base']}/dags/{DAG_ID}/runs/{quote(server['run_id'], safe='')}/plugin/uniad-training-run")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.TAG_NAME, "iframe"))
        driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "path.series")) >= 4)
        driver.switch_to.default_content()
        driver.save_screenshot(str(ARTIFACTS / "dashboard_in_airflow.png"))
        # The run list compares runs: the run's headline metric (its final evaluation's champion metric) and its
        # champion mark (its model is the one at its publish path).
        driver.get(f"{server['base']}/uniad/")
        row = f"tr.run[data-run='{server['run_id']}']"
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, row))
        cells = driver.find_element(By.CSS_SELECTOR, row)
        headline = cells.find_element(By.CSS_SELECTOR, ".headline").text
        assert headline.startswith("pts_bbox_NuScenes/amota 0.") and float(headline.split()[1]) > 0, headline
        assert cells.find_element(By.CSS_SELECTOR, ".champion").text == "★"
        assert driver.find_element(By.ID, "compare").get_attribute("disabled") is not None  # until two are picked
        driver.save_screenshot(str(ARTIFACTS / "dashboard_runs.png"))
    finally:
        driver.quit()
    assert (ARTIFACTS / "dashboard_run.png").stat().st_size > 50_000


def compare_in_chromium(server, finished: str, training: str) -> None:
    """Pick both runs in the run list and compare them: each chart has a line per run."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium(window="1400,1400")
    try:
        driver.get(f"{server['base']}/uniad/")
        WebDriverWait(driver, 60).until(lambda d: d.find_elements(By.NAME, "username"))
        user, password = admin_credentials(Path(os.environ["AIRFLOW_HOME"]))
        driver.find_element(By.NAME, "username").send_keys(user)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        for run_id in (finished, training):
            box = f"input.pick[data-run='{run_id}']"
            WebDriverWait(driver, 60).until(lambda d, b=box: d.find_elements(By.CSS_SELECTOR, b))
            driver.find_element(By.CSS_SELECTOR, box).click()
        driver.find_element(By.ID, "compare").click()
        WebDriverWait(driver, 60).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "path.series")) >= 6)
        assert "/uniad/compare?a=" in driver.current_url
        for chart in driver.find_elements(By.CSS_SELECTOR, ".chart"):
            legend = chart.find_element(By.CSS_SELECTOR, ".legend").text
            assert finished in legend and training in legend, legend
            assert all(len(p.get_attribute("d")) > 5 for p in chart.find_elements(By.CSS_SELECTOR, "path.series"))
        driver.save_screenshot(str(ARTIFACTS / "dashboard_compare.png"))
    finally:
        driver.quit()


def training_processes(root: Path) -> list[str]:
    return [p for p in processes_mentioning(str(root)) if "dags test" not in p]


def test_a_run_still_in_stage1(server, airflow_home, tmp_path):
    """While stage 1 trains: progress below 100 %, an ETA for the pipeline, stage 2 and the promotion pending."""
    root = tmp_path / "uniad-mini-live"
    conf = {"profile": "mini", "uniad_root": str(root), "stage1_epochs": 40, "stage2_epochs": 1}
    base, token = server["base"], server["token"]
    live: list[dict] = []
    out = open(tmp_path / "dags-test.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "airflow"), "dags", "test", DAG_ID, "-c", json.dumps(conf)],
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        view = None
        while time.monotonic() < deadline:
            status, runs = http("GET", f"{base}/uniad/api/runs", token=token)
            live = [r for r in runs if r["conf"].get("uniad_root") == str(root)]
            if live:
                status, detail = http("GET", f"{base}/uniad/api/runs/{quote(live[0]['run_id'], safe='')}", token=token)
                view = detail["view"]
                if view and view["stages"][0].get("records", 0) >= 2:
                    break
            assert proc.poll() is None, (tmp_path / "dags-test.log").read_text()[-3000:]
            time.sleep(2)
        assert view is not None and view["stages"][0]["records"] >= 2, "stage 1 never logged"
        first, second = view["stages"]
        # The training task defers to its stage's job; `dags test` shows a task QUEUED while it runs its trigger.
        assert detail["run"]["state"] == "running" and first["task_state"] in ("deferred", "queued"), first
        assert 0 < first["progress"] < 1 and first["eta_s"] > 0 and view["eta_s"] > first["eta_s"]
        assert first["gate"] is None and not second["started"] and view["promoted"] is None
        compare_in_chromium(server, server["run_id"], live[0]["run_id"])
    finally:
        # The stage's job is detached from `dags test`, whose inline trigger has no on_kill: stopped as by hand.
        # `dags test` itself would go on to retry the task, so once the training processes are gone its group is
        # killed.
        os.killpg(proc.pid, signal.SIGTERM)
        work_dir = root / "projects/work_dirs/stage1_track_map/full_track_map"
        if work_dir.exists():
            run([PYTHON, "-m", "uniad", "stop", str(work_dir)], check=False, timeout=60)
        deadline = time.monotonic() + 60
        while training_processes(root) and time.monotonic() < deadline:
            time.sleep(0.5)
        stop_group(proc, grace_s=0)
        out.close()
        if live:  # the killed run would stay "running" in the DB and, with max_active_runs=1, block later runs
            run_path = f"{base}/api/v2/dags/{DAG_ID}/dagRuns/{quote(live[0]['run_id'], safe='')}"
            assert http("PATCH", run_path, token=token, body={"state": "failed"})[0] == 200
    assert processes_mentioning(str(root)) == []
    shutil.rmtree(root, ignore_errors=True)
