# The assistant streaming service. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: help install lock run test lint format typecheck demo chat docs docs-serve bench bench-smoke \
        assistant-create assistant-delete thread-create clean hub hub-stop test-cluster \
        bench-cancel

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-18s %s\n", $$1, $$2}'

# requirements.lock pins every package (dev tools and uvloop included) to what was measured.
LOCK := requirements.lock

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the service with its dev tools

run: $(STAMP)  ## run the service (settings from settings.toml, .env, environment)
	$(VENV)/bin/faststream run service.app:app

lint: $(STAMP)  ## ruff (lint + format check) and mypy --strict on service/
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy service

format: $(STAMP)  ## apply ruff's formatting and fixes
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP)  ## lint, type-check, then the whole suite against the real RabbitMQ (and Redis)
	scripts/ensure-rabbitmq.sh
	scripts/hub.sh install
	scripts/ensure-redis.sh
	scripts/ensure-chromium.sh
	$(MAKE) --no-print-directory lint
	$(VENV)/bin/pytest -q -p no:cacheprovider --ignore=tests/test_replicas.py --ignore=tests/test_cluster.py \
		--ignore=tests/test_replica_cancel.py
	$(MAKE) --no-print-directory test-cluster
	$(MAKE) --no-print-directory bench-smoke

test-cluster: $(STAMP)  ## replicas: 3 processes on the machine's broker, then on a 3-node cluster behind HAProxy
	scripts/ensure-rabbitmq.sh
	scripts/ensure-redis.sh
	$(VENV)/bin/pytest -q -p no:cacheprovider tests/test_replicas.py tests/test_replica_cancel.py tests/test_cluster.py

demo: $(STAMP)  ## offline demo: fakes + service + one request that uses a tool
	scripts/ensure-rabbitmq.sh
	$(PY) -m scripts.demo

.PHONY: demo-web
demo-web: $(STAMP)  ## the web chat offline: stand-ins, hub, service with WEB_CHAT=true; prints the URL
	scripts/ensure-rabbitmq.sh
	$(PY) -m scripts.demo_web

chat: $(STAMP)  ## terminal chat with the running service; THREAD=conv_... to reuse one (see README)
	$(PY) -m service chat $(if $(THREAD),--thread $(THREAD))

docs: $(STAMP)  ## write docs/asyncapi.yaml and the hub payload JSON Schema
	$(PY) -m scripts.gen_docs

docs-serve: $(STAMP)  ## serve docs/asyncapi.yaml on http://localhost:8000 (DOCS_PORT=...)
	$(VENV)/bin/faststream docs serve docs/asyncapi.yaml --port $(or $(DOCS_PORT),8000)

$(VENV)/.bench: $(STAMP)
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev,bench]"
	touch $(VENV)/.bench

lock:  ## re-resolve the dependencies into requirements.lock (after editing pyproject.toml)
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q ".[dev,bench]"
	{ echo "# Every package CI installs (make install / make bench), exact versions: pip's constraints."; \
	  echo "# Regenerate after changing dependencies in pyproject.toml: make lock"; \
	  .lock-venv/bin/pip freeze | grep -v '^assistant-streaming-service'; } > $(LOCK)
	rm -rf .lock-venv

bench: $(VENV)/.bench  ## the benchmark (see README "Performance")
	scripts/ensure-rabbitmq.sh
	scripts/ensure-redis.sh
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.replicas  # README "Running replicas": spread, SIGKILL takeover, latency
	$(PY) -m benchmarks.cancel  # README "Stop and double texting": cancel latency under load
	$(PY) -m benchmarks.background  # contract §12: a crash's cost, and recording state's

bench-cancel: $(VENV)/.bench  ## cancel under load only (README "Stop and double texting")
	scripts/ensure-rabbitmq.sh
	$(PY) -m benchmarks.cancel

hub:  ## run the nchan hub (nginx + nchan, HUB_PROTOCOL=nchan) on HUB_PORT (8090); prints its URLs
	scripts/hub.sh

hub-stop:  ## stop the hub started by `make hub`
	scripts/hub.sh stop

bench-smoke: $(STAMP)  ## a few seconds of every benchmark path, no thresholds (part of make test)
	scripts/ensure-rabbitmq.sh
	$(PY) -m benchmarks.run --smoke

assistant-create: $(STAMP)  ## create the remote assistant (assistants backend) / show the local one
	$(PY) -m service assistant create

assistant-delete: $(STAMP)  ## delete a remote assistant: make assistant-delete ID=asst_...
	@test -n "$(ID)" || (echo "usage: make assistant-delete ID=asst_..." >&2; exit 2)
	$(PY) -m service assistant delete "$(ID)"

thread-create: $(STAMP)  ## create a thread (assistants) or conversation (responses)
	$(PY) -m service thread create

clean:  ## remove the virtual environment and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
