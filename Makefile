.PHONY: setup demo test test-fast lint bench clean

setup:  ## .venv, Airflow home (SQLite) and the gpu pool
	bash scripts/setup.sh

demo:  ## setup, then the whole pipeline on the mini UniAD under Airflow
	bash scripts/demo.sh

test: setup  ## the full suite, slow end-to-end runs included (what CI runs)
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
