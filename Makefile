# ganpaint: `make help` lists the targets. `make demo` and `make test` do all set-up themselves.
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# This machine's pip takes these from local disk; on a GPU node with torch already installed, use
# `make setup TORCH_SPEC=` (empty) to keep the torch you have (>= 2.4).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CELEBA_DIR ?=
COCO_DIR   ?=
SHARD_SIZE ?= 256
WORKERS    ?= 2
PHOTOS     ?=
STEPS      ?= 650
MINUTES    ?=

.DEFAULT_GOAL := help
.PHONY: help setup test test-all lint format demo quality shards bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install --no-cache-dir $(TORCH_SPEC))
	$(PY) -m pip install --no-cache-dir -e '.[dev,deepspeed]'
	touch $@

setup: $(VENV)/.installed  ## build .venv and install ganpaint with its dev extras

test: setup  ## the default test suite (a few minutes on 2 CPU cores)
	$(PY) -m pytest -q

test-all: setup  ## every test, slow ones included (GPU tests skip without a GPU)
	$(PY) -m pytest -q -m "slow or not slow"

lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check ganpaint tests train.py
	$(VENV)/bin/ruff format --check ganpaint tests train.py

format: setup  ## ruff format in place
	$(VENV)/bin/ruff format ganpaint tests train.py

shards/synthetic/manifest.json: | setup
	$(VENV)/bin/ganpaint shards --source synthetic --count 2400 --size 64 --output shards/synthetic --split-max-count 400 --workers $(WORKERS)

demo: setup shards/synthetic/manifest.json  ## pack synthetic shards, train GLCIC through all 3 phases on the CPU
	$(VENV)/bin/ganpaint train --config configs/demo.yaml

quality: setup  ## real-photo benchmark: PHOTOS=DIR [STEPS=650 | MINUTES=M]; add QUALITY_ARGS=--skimage
	@test -n "$(PHOTOS)" || { echo "make quality: set PHOTOS=DIR (a folder of photos)"; exit 2; }
	$(VENV)/bin/ganpaint quality --photos $(PHOTOS) $(if $(MINUTES),--minutes $(MINUTES),--steps $(STEPS)) --workers $(WORKERS) $(QUALITY_ARGS)

shards: setup  ## pack CELEBA_DIR and/or COCO_DIR into shards/celeba, shards/coco
	@test -n "$(CELEBA_DIR)$(COCO_DIR)" || { echo "make shards: set CELEBA_DIR=... and/or COCO_DIR=..."; exit 2; }
	$(if $(CELEBA_DIR),$(VENV)/bin/ganpaint shards --source celeba --input $(CELEBA_DIR) --output shards/celeba --size $(SHARD_SIZE) --workers $(WORKERS))
	$(if $(COCO_DIR),$(VENV)/bin/ganpaint shards --source coco --input $(COCO_DIR) --output shards/coco --size $(SHARD_SIZE) --workers $(WORKERS))

bench: setup  ## step throughput of the demo config on this machine
	$(VENV)/bin/ganpaint bench --config configs/demo.yaml --steps 10

clean:  ## remove runs/ and packed shards (keeps .venv)
	rm -rf runs shards/*/
