# The two commands of the project: `make demo` runs the quickstart, `make test` the tests.
# Both create .venv and install prodml with every backend on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.prodml-installed
AZURITE := tools/node_modules/.bin/azurite-blob
CONFIG ?= config/local.yaml
PYTEST_ARGS ?=

.PHONY: demo test install lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# Azurite (Microsoft's Azure Storage emulator) is installed into the project, not globally.
$(AZURITE): tools/package.json
	cd tools && npm install --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: $(STAMP)
	$(BIN)/prodml run -c $(CONFIG) $(if $(KEEP),--keep-serving,)

test: $(STAMP) $(AZURITE)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	for b in bench/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) tools/node_modules .prodml .pytest_cache
