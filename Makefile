.PHONY: setup demo ui mlflow celery slurm slurm-stop slurm-demo test test-fast lint bench clean

setup:  ## .venv, Airflow home (SQLite) and the gpu pool
	bash scripts/setup.sh

demo:  ## setup, then the whole pipeline on the mini UniAD under Airflow
	bash scripts/demo.sh

ui: setup  ## Airflow's UI and API on http://localhost:8080 (SQLite home of make demo); the dashboard is at /uniad/
	AIRFLOW_HOME=$(CURDIR)/airflow_home PATH=$(CURDIR)/.venv/bin:$$PATH .venv/bin/airflow api-server --port 8080

mlflow: setup  ## MLflow's UI on http://localhost:5000 over make demo's tracking store (runs/mlflow/mlflow.db)
	mkdir -p runs/mlflow
	.venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/runs/mlflow/mlflow.db --host 127.0.0.1 --port 5000

celery: setup  ## the production shape on this machine: CeleryExecutor on PostgreSQL + Redis (scripts/celery_stack.sh)
	bash scripts/celery_stack.sh

slurm:  ## a two-node Slurm cluster on loopback (nodes n1, n2; partition uniad); needs root, slurm-wlm and munge
	bash scripts/slurm_cluster.sh start

slurm-stop:  ## stop it, by the pids in its pid files
	bash scripts/slurm_cluster.sh stop

slurm-demo:  ## the mini pipeline with both stages as 2-node Slurm jobs (2 ranks per node, gloo), end to end
	bash scripts/slurm_demo.sh

test:  ## the full suite, slow end-to-end runs included (what CI runs), on two workers; installs chromium, docker-compose, slurm-wlm and munge for tests
	bash scripts/setup.sh --test-tools
	.venv/bin/python -m pytest -n 2

test-fast: setup  ## tests/unit only: no training, no services
	.venv/bin/python -m pytest -n 2 tests/unit

lint: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

bench: setup  ## log analysis vs json.loads; polling; checkpoint gate vs sha256sum + cp; DAG parse cost; tracking cost; orchestration overhead on Celery (local and Slurm stages)
	.venv/bin/python benchmarks/bench_logs.py
	.venv/bin/python benchmarks/bench_checkpoint_gate.py
	.venv/bin/python benchmarks/bench_parse.py
	.venv/bin/python benchmarks/bench_tracking.py
	.venv/bin/python benchmarks/bench_orchestration.py

clean:
	rm -rf airflow_home runs .pytest_cache .slurm
