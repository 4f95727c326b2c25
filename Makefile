# fastcot — the two commands a fresh machine needs:
#   make demo   the main job: generation on the tiny-random preset, then the kernel microbenchmarks
#   make test   install what the tests need, then run them
# On a GPU machine with its own torch/triton and no network: make gpu-check OUT_DIR=...

# bash with pipefail, so `cmd | tee log` fails when cmd does
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# A CPU build of torch when none is installed (a bare `pip install torch` pulls CUDA wheels).
TORCH_CPU ?= torch==2.13.0
OUT_DIR ?= gpu-report

.PHONY: demo test install install-dev gpu-check gpu-install gpu-test gpu-bench aot-report csrc-report clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU)"
	$(PIP) install -e ".[models]"

install-dev:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU)"
	$(PIP) install -e ".[dev]"

demo: install
	$(PYTHON) -m fastcot info
	$(PYTHON) -m fastcot generate --model tiny-random --prompt "Think step by step:" --max-tokens 48 --ignore-eos
	$(PYTHON) benchmarks/bench_int4_matmul.py
	$(PYTHON) benchmarks/bench_paged_attention.py

test: install-dev
	$(PYTHON) -m fastcot info
	$(PYTHON) -m pytest -q

# Registers, spills and shared memory of every shipped Triton configuration (sm_80, sm_90)
aot-report: install-dev
	env -u TRITON_INTERPRET $(PYTHON) -m fastcot.kernels.aot

# The same for the compiled CUDA extension (from ptxas -v and cuobjdump)
csrc-report: install-dev
	$(PYTHON) tools/csrc_report.py

# GPU machine: the image's own torch and triton, no network, so no dependency resolution.
# Each part fits one 10-minute command; a failing part does not stop the ones after it
# (the logs in OUT_DIR say what failed).
gpu-check: gpu-install gpu-test gpu-bench

gpu-install:
	mkdir -p $(OUT_DIR)
	FASTCOT_BUILD_CUDA=1 $(PIP) install --no-build-isolation --no-deps -e . 2>&1 | tee $(OUT_DIR)/install.log
	$(PYTHON) -m fastcot info --json | tee $(OUT_DIR)/info.json
	$(PYTHON) tools/csrc_report.py --json > $(OUT_DIR)/csrc_report.json

# Autotuning off: correctness does not need it, and tuning every test shape would not fit
# the 10 minutes (the benchmarks exercise the autotuner).
gpu-test:
	mkdir -p $(OUT_DIR)
	-FASTCOT_AUTOTUNE=0 $(PYTHON) -m pytest -q -p no:cacheprovider --junitxml=$(OUT_DIR)/tests.xml 2>&1 | tee $(OUT_DIR)/tests.log

gpu-bench:
	mkdir -p $(OUT_DIR)
	-$(PYTHON) benchmarks/bench_int4_matmul.py --out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_int4_matmul.log
	-$(PYTHON) benchmarks/bench_paged_attention.py --prefill --out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_paged_attention.log

clean:
	rm -rf build dist *.egg-info .pytest_cache fastcot/_C*.so fastcot/_C.ptxas.log
