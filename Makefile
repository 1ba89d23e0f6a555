# Every target creates .venv if missing and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Extras installed with the package; the container images use EXTRAS=monitor (see deploy/).
EXTRAS ?= dev

.PHONY: demo test bench bench-scoring bench-providers flower install install-scoring clean eval bench-load bench-request-memory bench-overhead bench-scale

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Slim install: control, llm and images workers (no torch).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

# Adds the scoring extra (torch, transformers, open_clip) for the gpu workers.
$(VENV)/.installed-scoring: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[$(EXTRAS),scoring]"
	touch $@

# The oldest main-app client the fleet supports (docs/main-app-clients.md), in a virtualenv of its
# own: the tests run a main app's side with it. celery 5.4.0 caps redis-py below 6, and its
# `redis` extra does not pin kombu: left alone pip takes kombu 5.7, which needs redis-py 6.4.
MAINAPP_VENV := .venv-mainapp
MAINAPP_CLIENT := "celery[redis]==5.4.0" "kombu==5.4.2" "redis==5.3.1"

$(MAINAPP_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(MAINAPP_VENV)
	$(MAINAPP_VENV)/bin/pip install --quiet $(MAINAPP_CLIENT)
	touch $@

install: $(VENV)/.installed
install-scoring: $(VENV)/.installed-scoring

demo: $(VENV)/.installed
	$(BIN)/framefleet demo

# The traces' OpenTelemetry packages (the `otel` extra), which the trace tests run.
$(VENV)/.installed-otel: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[$(EXTRAS),otel]"
	touch $@

test: $(VENV)/.installed-scoring $(VENV)/.installed-eval $(VENV)/.installed-otel $(MAINAPP_VENV)/.installed
	$(BIN)/python -m pytest -q

bench: $(VENV)/.installed
	$(BIN)/python -m tests.bench.pipeline_bench

# Needs FRAMEFLEET_BROKER_URL and FRAMEFLEET_FLOWER_BASIC_AUTH=user:password (or ARGS=--local-only).
flower: $(VENV)/.installed
	$(BIN)/framefleet flower $(ARGS)

bench-scoring: $(VENV)/.installed-scoring
	$(BIN)/python -m tests.bench.scoring_bench $(ARGS)

clean:
	rm -rf $(VENV) $(MAINAPP_VENV) output .pytest_cache

# matplotlib, for the evaluation report's plots.
$(VENV)/.installed-eval: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[$(EXTRAS),eval]"
	touch $@

# Every arm on the shipped storyboards; the report lands in output/eval/report.html.
eval: $(VENV)/.installed-eval
	$(BIN)/framefleet eval --arms baseline,enhanced,enhance-only,best-of-4,scores-only,continuity,judge --out output/eval $(ARGS)

# Many jobs at once (FIFO beside priority); ARGS=--realistic, --heavy-tail or --scaling for the other modes.
bench-load: $(VENV)/.installed
	$(BIN)/python -m tests.bench.load_bench $(ARGS)

# The intake worker's memory for a 10,000-clip (80 MB) request (docs/request-limits.md).
bench-request-memory: $(VENV)/.installed
	$(BIN)/python -m tests.bench.request_memory_bench $(ARGS)

# N jobs through the official OpenAI and Replicate clients against stand-ins that enforce one
# account's budgets, in compressed time (ARGS: --jobs, --scale, --rpm, ...; see the file).
bench-providers: $(VENV)/.installed
	$(BIN)/python -m tests.bench.providers_bench $(ARGS)

# framefleet's coordination cost per frame (Redis commands, Redis CPU, control CPU) beside a bare
# Celery app with the same frame shape (docs/benchmarks.md).
bench-overhead: $(VENV)/.installed
	$(BIN)/python -m tests.bench.overhead_bench $(ARGS)

# Flat growth: the per-frame cost with 1,000 jobs in flight and 10,000 finished beside 16 jobs, Redis
# memory per job, and the job list, resume and a watchdog round at N and 4N finished jobs
# (docs/benchmarks.md; ARGS="--jobs 200 --finished 2000" for a quick look).
bench-scale: $(VENV)/.installed
	$(BIN)/python -m tests.bench.scale_bench $(ARGS)
