.PHONY: setup demo ui test test-fast lint bench clean

setup:  ## .venv, Airflow home (SQLite) and the gpu pool
	bash scripts/setup.sh

demo:  ## setup, then the whole pipeline on the mini UniAD under Airflow
	bash scripts/demo.sh

ui: setup  ## Airflow's UI and API on http://localhost:8080 (SQLite home of make demo); the dashboard is at /uniad/
	AIRFLOW_HOME=$(CURDIR)/airflow_home PATH=$(CURDIR)/.venv/bin:$$PATH .venv/bin/airflow api-server --port 8080

test:  ## the full suite, slow end-to-end runs included (what CI runs); installs chromium and docker-compose for tests
	bash scripts/setup.sh --test-tools
	.venv/bin/python -m pytest

test-fast: setup  ## unit tests only
	.venv/bin/python -m pytest -m "not slow"

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: setup  ## log analysis vs json.loads, polling cost; checkpoint gate vs sha256sum + cp on 2 GB
	.venv/bin/python benchmarks/bench_logs.py
	.venv/bin/python benchmarks/bench_checkpoint_gate.py

clean:
	rm -rf airflow_home runs .pytest_cache
