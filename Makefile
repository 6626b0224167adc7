# Two commands on a fresh machine with Python 3.11, pip and make:  make demo  /  make test
# uv is bootstrapped into .tools/ when it is not on PATH; .venv is built from uv.lock with
# bytecode compiled at install (import tensorflow: ~3 s instead of ~13 s).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
UV_VERSION := 0.13.9
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
VENV := .venv
STAMP := $(VENV)/.tfpipe-synced
PRODUCTION_STAMP := $(VENV)/.tfpipe-production-synced
GPU_STAMP := $(VENV)/.tfpipe-gpu-synced
export UV_PYTHON_DOWNLOADS := never
export UV_COMPILE_BYTECODE := 1

.PHONY: help venv demo test test-slow test-production test-fast bench-gpu corpus browser-deps production-deps airflow mlflow lock clean

help:
	@echo "make demo     run the penguins pipeline through Airflow and print a summary"
	@echo "make test     run the test suite but the slow suites (about 25 minutes on 2 cores)"
	@echo "make test-slow  the slow suites: faults, the real-table corpus, the Airflow scheduler path,"
	@echo "              the benchmarks that train models (about 35)"
	@echo "make test-production  the production profile started natively: PostgreSQL, Redis, Celery with"
	@echo "              two workers, FAB auth, an MLflow server, S3 (installs the production extra; about 15)"
	@echo "make bench-gpu  every GPU branch (mirrored GPUs, mixed_float16, XLA, TF-TRT) run and measured; installs"
	@echo "              the gpu extra (TensorFlow 2.16 with CUDA 12); without a GPU each check is a recorded skip"
	@echo "make corpus   run real public tables through the whole pipeline with the minimal YAML"
	@echo "              (ARGS=\"--small\" for those under 2,000 rows, ARGS=\"--out corpus.json\", ARGS=\"--list\")"
	@echo "make airflow  Airflow standalone on http://127.0.0.1:8080 with this project's DAGs"
	@echo "make mlflow   MLflow UI on http://127.0.0.1:5000 over the embedded store"
	@echo "make lock     re-resolve uv.lock after editing pyproject.toml"
	@echo "make browser-deps  Debian's Chromium, for the browser tests (apt; sudo when not root)"
	@echo "make production-deps  Debian's PostgreSQL and Redis, for make test-production (apt)"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --python "$(PYTHON)"
	@rm -f $(PRODUCTION_STAMP) $(GPU_STAMP)
	@touch $@

# The same environment with the production extra (Celery, FAB, Amazon providers; psycopg2).
$(PRODUCTION_STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra production --python "$(PYTHON)"
	@rm -f $(STAMP) $(GPU_STAMP)
	@touch $@

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tfpipe demo penguins

test: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow and not production"

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m "slow and not production"

test-production: $(PRODUCTION_STAMP) production-deps
	$(VENV)/bin/python -m pytest -m production

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not integration"

# The same environment with CUDA 12's libraries (the gpu extra) for TensorFlow's GPU kernels.
$(GPU_STAMP): pyproject.toml uv.lock | $(UV)
	$(UV) sync --locked --extra gpu --python "$(PYTHON)"
	@rm -f $(STAMP) $(PRODUCTION_STAMP)
	@touch $@

bench-gpu: $(GPU_STAMP)
	$(VENV)/bin/tfpipe bench gpu $(ARGS)

corpus: $(STAMP)
	$(VENV)/bin/python -m tasks.bench.corpus $(ARGS)

airflow: $(STAMP)
	$(VENV)/bin/tfpipe airflow standalone

mlflow: $(STAMP)
	$(VENV)/bin/tfpipe mlflow ui --host 127.0.0.1 --port 5000

# The browser tests drive Debian's Chromium (never a browser downloaded by a test tool); without
# it they are skipped with that reason.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }
	@chromium --version

production-deps:
	@command -v redis-server >/dev/null 2>&1 && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
		--no-install-recommends postgresql redis-server; }
	@redis-server --version

lock: | $(UV)
	$(UV) lock --python "$(PYTHON)"

clean:
	rm -rf .tfpipe
