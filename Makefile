# Every target sets itself up: the first use creates .venv and installs the project.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 90

.PHONY: demo test test-all lint bench demo-model clean

# setuptools notes every editable install of a mapped layout ("Editable installation. Please
# be careful with folders ... same name as your package"): ours maps the layers into
# wsi_segment on purpose, so that one note is silenced; other warnings still show.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/wsi-segment tests/data/CMU-1-Small-Region.svs --out wsi-segment-out --overwrite

# The fast suite in two processes (pytest-xdist), one test file at a time each, so that a
# module's shared fixtures (clusters, segmented slides) are made once: a group per file, and
# one group for the files that use the Prefect test server (tests/conftest.py), so that one
# worker starts it. OMP_WAIT_POLICY=PASSIVE:
# torch's idle OpenMP threads sleep instead of spinning, so one worker's small forward
# passes do not burn the core the other worker needs (outputs are the same: thread counts
# do not change); measured in benchmarks/RESULTS.md, "The test suite's time".
TEST_ENV := OMP_WAIT_POLICY=PASSIVE

test: $(STAMP)
	@$(BIN)/python -m tests.cpu_line
	$(TEST_ENV) $(BIN)/python -m pytest -m "not slow" -q -n 2 --dist loadgroup

test-all: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python .ci/typecheck.py

bench: $(STAMP)
	$(BIN)/python benchmarks/throughput.py

demo-model: $(STAMP)
	$(BIN)/python -m wsi_segment.pipeline.training.demo_model

clean:
	rm -rf $(VENV) wsi-segment-out .pytest_cache
