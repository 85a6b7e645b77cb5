# Each target creates .venv when it is missing and installs the project into it first,
# so `make run` and `make test` are each one command on a fresh machine. Install output goes to
# stderr and recipes are not echoed, so `make bench > file.json` writes pure JSON.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint bench bench-structured bench-accelerator bench-sparse bench-llm clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) >&2
	@$(PY) -m pip install -q --upgrade pip >&2
	@$(PY) -m pip install -q -e '.[dev]' >&2
	@touch $(STAMP)

run: $(STAMP)
	$(PY) -m experiments.deconstructing

lint: $(STAMP)
	$(PY) -m ruff check jaxprune experiments benchmarks tests
	$(PY) -m mypy

# The suite runs in two pytest worker processes (pytest-xdist, whole files per worker): every XLA
# program compiled for the CPU keeps its code mapped, and one process running all of it reaches
# Linux's limit of 65,530 memory maps (vm.max_map_count) and segfaults inside the compiler; two
# workers each compile about half, and use both cores while one of them compiles.
PYTEST := $(PY) -m pytest -n 2 --dist loadfile

test: lint
	$(PYTEST) tests

# Checks marked `slow` (left out of `make test` to keep it near 10 minutes on 2 cores).
test-slow: $(STAMP)
	$(PYTEST) -m slow tests

# The engine benchmark (docs/benchmarks.md); the PyTorch peer is installed when missing and skipped
# (reported as null) when it cannot be.
bench: $(STAMP)
	@$(PY) -c 'import torch' 2>/dev/null || $(PY) -m pip install -q torch==2.13.0 >&2 || true
	@$(PY) -m benchmarks.engine

# Masked vs compacted VGG-16 inference (docs/structured.md), about a minute.
bench-structured: $(STAMP)
	@$(PY) -m benchmarks.structured

# Many tickets on whatever accelerator is present (GPU/TPU; CPU works too, slowly): JSON on stdout,
# at most about 5 minutes on an H200 (docs/benchmarks.md). `--smoke` runs it at toy sizes.
bench-accelerator: $(STAMP)
	@$(PY) -m benchmarks.accelerator

# Sparse training (docs/sparse_training.md): RigL steps against dense optax steps, and 32 RigL
# tickets vmapped / sharded against one after another; JSON on stdout, a few minutes on 2 cores.
bench-sparse: $(STAMP)
	@$(PY) -m benchmarks.sparse_training

# Post-training pruning of the small language model (docs/llm_pruning.md): seconds to prune the
# whole model per method at the study's two shapes; 2:4 sparse matmul on a GPU. JSON on stdout.
bench-llm: $(STAMP)
	@$(PY) -m benchmarks.llm_pruning

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
