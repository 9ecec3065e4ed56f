# Quick start: `make demo` (the objective comparison on the tiny config, with its report) and
# `make test`.
# Both create and fill the virtualenv on first use; later calls reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# torch (the PyTorch peer of the benchmarks and its test): PyPI's Linux wheel is the CUDA build;
# `make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu` adds the index of the CPU build
# (the lock's torch==2.13.0 admits 2.13.0+cpu, which pip then prefers). Empty by default: an
# index that cannot be reached costs retries on every package of an offline install.
TORCH_INDEX ?=
PIP_INSTALL := $(PY) -m pip install -q -c requirements.lock $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
WORKDIR ?= workdirs/demo
# Multi-device code is tested on 8 simulated CPU devices; test files run in 2 workers (most of
# a test's time is a single-threaded subprocess start or compile). The 15 slowest are listed.
# tests/conftest.py adds XLA flags that compile faster unless these name an optimisation level:
# `make test TEST_XLA_FLAGS="--xla_force_host_platform_device_count=8
# --xla_backend_optimization_level=3"` runs the suite with XLA's defaults, as users run.
TEST_XLA_FLAGS ?= --xla_force_host_platform_device_count=8
# The venv holds libtpu (the `test` extra): without these, a process that imports jax lets it ask a
# cloud metadata server what it runs on (learned_loss/core/tpu_env.py). JAX_PLATFORMS=cpu unless
# the caller chose a platform (`make bench JAX_PLATFORMS=cuda` on a GPU, `=tpu` on a TPU VM).
JAX_PLATFORMS ?= cpu
OFFLINE_TPU := TPU_SKIP_MDS_QUERY=1 TPU_WORKER_HOSTNAMES=localhost JAX_PLATFORMS=$(JAX_PLATFORMS)
TEST_ENV := $(OFFLINE_TPU) XLA_FLAGS="$(TEST_XLA_FLAGS)"

.PHONY: setup chromium test demo bench clean

$(STAMP): setup.cfg pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP_INSTALL) -e '.[test]'
	touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PIP_INSTALL) -e '.[bench]'
	touch $(BENCH_STAMP)

setup: $(STAMP)

# tests/test_report_browser.py opens report.html in headless Chromium (Debian's `chromium`);
# installed here when it is not on PATH (as root, as in CI). $CHROMIUM names another binary.
CHROMIUM ?= chromium
chromium:
	@command -v $(CHROMIUM) >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive \
	    apt-get install -y -q --no-install-recommends chromium; } || \
	    { echo "make: chromium is missing and apt-get could not install it" >&2; exit 1; }

# --no-loadscope-reorder: files in tests/conftest.py's order, longest first.
# --max-worker-restart=0: a crashed worker fails the run; a replaced one can hang xdist's
# loadfile scheduler (pytest-xdist issue 784).
test: $(STAMP) chromium
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --max-worker-restart=0 --durations=15 tests

demo: $(STAMP)
	$(OFFLINE_TPU) $(PY) -m experiments.compare_objectives --config=configs/compare.py:tiny --workdir=$(WORKDIR)

# Ours against a minimal haiku step and the same model in PyTorch (eager and torch.compile).
bench: $(BENCH_STAMP)
	$(OFFLINE_TPU) $(PY) benchmarks/train_step.py
	$(OFFLINE_TPU) $(PY) benchmarks/sampling.py

clean:
	rm -rf $(VENV) build *.egg-info
