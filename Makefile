# Two commands (README): `make demo` sets everything up on a fresh machine and runs the whole
# pipeline through the Prefect deployment; `make test` runs the whole test suite.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_HOME := $(CURDIR)/.prefect
PREFECT_PORT ?= 4200
export PREFECT_API_URL := http://127.0.0.1:$(PREFECT_PORT)/api
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export RAY_USAGE_STATS_ENABLED := 0
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: install demo test test-fast repro server serve stop lint lock bench bench-scale clean mlflow-server mlflow-stop worker worker-stop

install: $(STAMP)

# torch first (the CPU wheel on local disk: letting pip pick it pulls a CUDA build), then
# deepspeed without build isolation (its setup imports torch), then the project.
$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip setuptools wheel
	$(BIN)/pip install -q torch==2.13.0
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation -c requirements/constraints.txt deepspeed==0.19.8
	$(BIN)/pip install -q -c requirements/constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: install
	@bash scripts/demo.sh

test: install
	$(BIN)/python -m pytest tests -q --durations=15

test-fast: install
	$(BIN)/python -m pytest tests -q -m "not integration"

repro: install
	$(BIN)/dvc repro

server: install
	@bash scripts/prefect_server.sh start

stop:
	@bash scripts/prefect_server.sh stop

# MLflow tracking server backed by PostgreSQL, both on 127.0.0.1 (docs/cluster.md).
mlflow-server: install
	@bash scripts/mlflow_server.sh start

mlflow-stop:
	@bash scripts/mlflow_server.sh stop

# Work pool hpe-pool + process worker running deployment hpe/full: the alternative to serve.
worker: install
	@bash scripts/prefect_worker.sh start

worker-stop:
	@bash scripts/prefect_worker.sh stop

lint: install
	$(BIN)/ruff check pipeline flows tests bench
	$(BIN)/ruff format --check pipeline flows tests bench

# Benchmarks print ratios against a plain baseline measured in the same run (README, Benchmarks).
bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/train.py
	$(BIN)/python bench/merge.py
	$(BIN)/python bench/pose2d.py

bench-scale: install
	$(BIN)/python bench/scale.py

lock:
	$(BIN)/pip freeze --exclude-editable | sed 's/^torch==2.13.0+cpu/torch==2.13.0/' > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt

clean: stop
	rm -rf data metrics reports/pipeline_run.json mlflow.db .prefect .run
