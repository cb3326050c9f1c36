# The two commands of the project: `make demo` runs the quickstart, `make test` the tests.
# Both create .venv and install prodml with every backend on first use.
# `make s3` / `make azure` run a local S3 (SeaweedFS) / Azure Blob (Azurite) server for
# config/minio.yaml / config/azure.yaml, until Ctrl-C.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.prodml-installed
AZURITE := tools/node_modules/.bin/azurite-blob
CONFIG ?= config/local.yaml
PYTEST_ARGS ?=
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test install lint format bench clean browser s3 azure

$(STAMP): pyproject.toml
	@echo "installing prodml with every backend into $(VENV) (TensorFlow, Feast, KServe, Kubeflow"
	@echo "Pipelines, boto3, Azure: about 3 GB; 3-5 minutes the first time, quiet until done) ..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all,dev]'
	touch $(STAMP)
	@echo "installed: $(BIN)/prodml (or: . $(VENV)/bin/activate, then prodml ...)"

install: $(STAMP)

# Azurite (Microsoft's Azure Storage emulator) is installed into the project, not globally.
$(AZURITE): tools/package.json
	cd tools && npm install --no-audit --no-fund --loglevel=error
	touch $(AZURITE)

demo: $(STAMP)
	$(BIN)/prodml run -c $(CONFIG) $(if $(KEEP),--keep-serving,)

# S3 on http://127.0.0.1:9000 and Azure Blob on http://127.0.0.1:10000, data under .prodml/;
# each prints the `export ...` line config/minio.yaml or config/azure.yaml reads
s3: $(STAMP)
	$(BIN)/python -m prodml.testing.dev_servers s3

azure: $(STAMP) $(AZURITE)
	$(BIN)/python -m prodml.testing.dev_servers azure

# The dashboard's browser tests drive the system's chromium through Playwright (never a
# downloaded browser): install Debian's package when we may (root), else say what is missing.
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium (apt-get) for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: no $(CHROMIUM): the browser tests skip (CI=true: fail); apt-get install chromium"; fi; }

test: $(STAMP) $(AZURITE) browser
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
