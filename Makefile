# The entry points people type. Everything installs what it needs first, so a fresh clone works.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CLIPPER := $(VENV)/bin/clipper
DEV_REDIS_URL ?= redis://127.0.0.1:6379/0
ENV ?= dev
LOCAL_S3_URL ?= http://127.0.0.1:8333
LOCAL_S3_BUCKET ?= clips
PYTEST_ARGS ?=

.PHONY: help system-deps install run test test-fast soak lint bench demo redis-dev s3-local clean

help:
	@echo "make install  - system packages (ffmpeg, redis-server, wget), .venv, the package"
	@echo "make run      - clipper run dev in the foreground (starts a local Redis under var/ if needed)"
	@echo "make run ENV=local - the same with outputs in a local S3 (SeaweedFS under var/ if none answers)"
	@echo "make test     - the whole test suite (real Redis, SeaweedFS S3, HTTP server, ffmpeg)"
	@echo "make lint     - ruff"
	@echo "make bench    - media benchmarks (smart vs accurate vs copy; job throughput vs a bare loop), ratios printed"
	@echo "make demo     - sample media, a multi-output job, the daemon until done, a summary"

system-deps:
	@missing=""; \
	for tool in ffmpeg:ffmpeg ffprobe:ffmpeg redis-server:redis-server redis-cli:redis-tools wget:wget openssl:openssl \
	           systemd-analyze:systemd logrotate:logrotate; do \
	  command -v $${tool%%:*} >/dev/null 2>&1 || missing="$$missing $${tool##*:}"; \
	done; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: system-deps $(VENV)/.installed

redis-dev: install
	@if $(VENV)/bin/python -c "import redis,sys; redis.Redis.from_url('$(DEV_REDIS_URL)', socket_connect_timeout=1).ping()" 2>/dev/null; then \
	  echo "Redis answers at $(DEV_REDIS_URL)"; \
	else \
	  echo "starting redis-server under var/redis for $(DEV_REDIS_URL)"; \
	  mkdir -p var/redis var/log var/run; \
	  port=$$(echo '$(DEV_REDIS_URL)' | sed -E 's#.*:([0-9]+)(/.*)?$$#\1#'); \
	  redis-server --port $$port --bind 127.0.0.1 --dir var/redis --appendonly yes --daemonize yes \
	    --pidfile $(CURDIR)/var/run/redis-dev.pid --logfile $(CURDIR)/var/log/redis-dev.log; \
	  for i in $$(seq 50); do redis-cli -p $$port ping >/dev/null 2>&1 && break; sleep 0.1; done; \
	  redis-cli -p $$port ping >/dev/null 2>&1 || { echo "redis-server did not start: see var/log/redis-dev.log"; exit 1; }; \
	fi

# a local S3 for ENV=local: SeaweedFS (from the test extras) under var/ unless one answers, with its bucket
s3-local: install
	@$(PY) scripts/local_s3.py --endpoint $(LOCAL_S3_URL) --bucket $(LOCAL_S3_BUCKET)

# the daemon uses the same Redis URL (and for ENV=local the same S3) that was checked or started
# above; SeaweedFS takes any access key, so ENV=local has one unless the environment gives one
LOCAL_S3_ENV = CLIPPER_OUTPUT__ENDPOINT_URL=$(LOCAL_S3_URL) CLIPPER_OUTPUT__BUCKET=$(LOCAL_S3_BUCKET) \
  AWS_ACCESS_KEY_ID=$${AWS_ACCESS_KEY_ID:-local} AWS_SECRET_ACCESS_KEY=$${AWS_SECRET_ACCESS_KEY:-local}
run: redis-dev $(if $(filter local,$(ENV)),s3-local)
	CLIPPER_REDIS__URL=$(DEV_REDIS_URL) $(if $(filter local,$(ENV)),$(LOCAL_S3_ENV)) $(CLIPPER) run $(ENV)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q tests/unit $(PYTEST_ARGS)

soak: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check clipper tests scripts

bench: install
	$(PY) scripts/bench.py
	$(PY) scripts/bench_throughput.py

demo: redis-dev
	CLIPPER_REDIS__URL=$(DEV_REDIS_URL) $(PY) scripts/demo.py

# the var/ Redis saves on SIGTERM and will not exit if its directory is gone: wait for it first
clean:
	@if [ -f var/run/seaweed.pid ]; then kill "$$(cat var/run/seaweed.pid)" 2>/dev/null || true; fi
	@if [ -f var/run/redis-dev.pid ]; then \
	  pid=$$(cat var/run/redis-dev.pid); kill "$$pid" 2>/dev/null || true; \
	  for i in $$(seq 50); do kill -0 "$$pid" 2>/dev/null || break; sleep 0.1; done; \
	fi
	rm -rf var .pytest_cache build *.egg-info
