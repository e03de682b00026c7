# Two commands: `make demo` and `make test`. Both create .venv if missing and install into it.
# torch is pinned first to the CPU wheel: an unpinned torch would pull a multi-GB CUDA build.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN ?= torch==2.13.0
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
LINT_PATHS := signify tests examples bench
# CI has 2 cores; most of the suite's time is single-threaded compilation, so two workers
# nearly halve it (429 -> 242 s cold). loadfile keeps a file's module fixtures (the 7-rank
# vote spawn) in one worker. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: install test lint demo docs clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check $(TORCH_PIN)
	$(BIN)/pip install -q --disable-pip-version-check -e ".[test,cli,docs,integrations]"
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy signify

test: lint
	$(BIN)/python -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

demo: install
	$(BIN)/signify ablate --out runs/ablate/gpt-demo
	@echo "Report: runs/ablate/gpt-demo/summary.md (plots: runs/ablate/gpt-demo/*.png)"

docs: install
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) .cache site
