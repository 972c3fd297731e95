# Two commands on a fresh clone: `make demo` and `make test`. Each creates and reuses .venv.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Nothing here reaches the internet at run time; the same variables are set by promptloop itself.
export DO_NOT_TRACK := 1
export MLFLOW_DISABLE_TELEMETRY := true
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export LITELLM_LOCAL_MODEL_COST_MAP := True
export GX_ANALYTICS_ENABLED := False
export DVC_NO_ANALYTICS := 1

.PHONY: install demo test test-fast lint bench lock clean help serve screenshots

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the dependency spec changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml requirements.lock
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install promptloop with its test extras

demo: install  ## run the loop offline on the sample app, in .demo/
	$(BIN)/promptloop demo --dir .demo

serve: install  ## Prefect server + worker (deployments of prefect.yaml) and MLflow UI on loopback, for WORKSPACE (default .demo)
	$(BIN)/promptloop serve --workspace $(or $(WORKSPACE),.demo)

test: lint  ## lint and type-check, then the whole test suite (unit, integration, end-to-end)
	$(BIN)/python -m pytest

test-fast: install  ## unit tests only: no workspace, no service (about a minute)
	$(BIN)/python -m pytest tests/unit

lint: install  ## ruff (style, imports, bugs) and mypy (types of src/promptloop)
	$(BIN)/ruff check src flows tests benchmarks docs
	$(BIN)/mypy

bench: install  ## run every benchmark in benchmarks/ 3 times; one table in benchmarks/results/suite.md
	$(BIN)/python benchmarks/suite.py --rows 1000000 --cases 1000 --mlflow-cases 200 --interactions 2000 \
		--repeats 3 --out benchmarks/results/suite.md

screenshots: demo  ## PNGs of the Prefect UI (a cycle run) and the MLflow UI (per-case table) in docs/images/
	command -v chromium >/dev/null || apt-get install -y chromium
	fc-list :lang=ko | grep -q . || apt-get install -y fonts-noto-cjk
	$(BIN)/pip install -q 'playwright>=1.50'
	$(BIN)/python docs/screenshots.py --workspace .demo --out docs/images

lock:  ## re-resolve requirements.lock from pyproject.toml in a scratch venv
	rm -rf /tmp/promptloop-lock && $(PYTHON) -m venv /tmp/promptloop-lock
	/tmp/promptloop-lock/bin/pip install --quiet -e '.[test]'
	/tmp/promptloop-lock/bin/pip freeze --exclude-editable | grep -v '^promptloop' > requirements.lock.new
	mv requirements.lock.new requirements.lock

clean:  ## remove the venv and the demo workspace
	rm -rf $(VENV) .demo
