# ganpaint: `make help` lists the targets. `make demo` and `make test` do all set-up themselves.
PYTHON     ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
# This machine's pip takes these from local disk; on a GPU node with torch already installed, use
# `make setup TORCH_SPEC=` (empty) to keep the torch you have (>= 2.4).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# What tests/test_remote_shards.py needs (s3:// against moto's S3 server), installed in a pip call
# of its own: resolved together with the dev and deepspeed extras, pip backtracks for ever.
REMOTE_TEST_SPEC ?= 's3fs>=2023.1' 'aiohttp>=3.8' 'moto[server]>=5'
CELEBA_DIR ?=
COCO_DIR   ?=
SHARD_SIZE ?= 256
WORKERS    ?= 2
SERVE_RUN  ?= runs/demo
PHOTOS     ?=
STEPS      ?= 650

.DEFAULT_GOAL := help
.PHONY: help setup test test-all test-slurm test-browser lint format demo quality shards bench serve screenshot clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(if $(strip $(TORCH_SPEC)),$(PY) -m pip install --no-cache-dir $(TORCH_SPEC))
	$(PY) -m pip install --no-cache-dir -e '.[dev,deepspeed]'
	$(PY) -m pip install --no-cache-dir $(REMOTE_TEST_SPEC)
	touch $@

setup: $(VENV)/.installed  ## build .venv and install ganpaint with its dev extras

test: setup  ## the default test suite (a few minutes on 2 CPU cores)
	$(PY) -m pytest -q

test-all: setup  ## every test but the Slurm and browser ones, slow included (GPU tests skip without a GPU)
	$(PY) -m pytest -q -m "not slurm and not browser"

test-slurm: setup  ## real Slurm jobs on a local cluster (root: installs slurm-wlm + munge; ~8 min)
	$(PY) tests/slurm_cluster.py install
	$(PY) -m pytest -q -m slurm -rP

test-browser: setup  ## the page in headless Chromium (root: installs chromium + chromium-driver; ~1 min)
	$(PY) tests/system_packages.py browser
	GANPAINT_REQUIRE_BROWSER=1 $(PY) -m pytest -q -m browser -rs

lint: setup  ## ruff lint + format check
	$(VENV)/bin/ruff check ganpaint tests train.py
	$(VENV)/bin/ruff format --check ganpaint tests train.py

format: setup  ## ruff format in place
	$(VENV)/bin/ruff format ganpaint tests train.py

shards/synthetic/manifest.json: | setup
	$(VENV)/bin/ganpaint shards --source synthetic --count 2400 --size 64 --output shards/synthetic --split-max-count 400 --workers $(WORKERS)

demo: setup shards/synthetic/manifest.json  ## pack synthetic shards, train GLCIC through all 3 phases on the CPU
	$(VENV)/bin/ganpaint train --config configs/demo.yaml

quality: setup  ## real-photo benchmark: PHOTOS=DIR [STEPS=650]: hold out whole photos, train the demo recipe, compare
	@test -n "$(PHOTOS)" || { echo "make quality: set PHOTOS=DIR (a folder of photos)"; exit 2; }
	$(VENV)/bin/ganpaint quality --photos $(PHOTOS) --steps $(STEPS) --output runs/quality-$(STEPS) --workers $(WORKERS)

shards: setup  ## pack CELEBA_DIR and/or COCO_DIR into shards/celeba, shards/coco
	@test -n "$(CELEBA_DIR)$(COCO_DIR)" || { echo "make shards: set CELEBA_DIR=... and/or COCO_DIR=..."; exit 2; }
	$(if $(CELEBA_DIR),$(VENV)/bin/ganpaint shards --source celeba --input $(CELEBA_DIR) --output shards/celeba --size $(SHARD_SIZE) --workers $(WORKERS))
	$(if $(COCO_DIR),$(VENV)/bin/ganpaint shards --source coco --input $(COCO_DIR) --output shards/coco --size $(SHARD_SIZE) --workers $(WORKERS))

bench: setup  ## step throughput of the demo config on this machine
	$(VENV)/bin/ganpaint bench --config configs/demo.yaml --steps 10

serve: setup  ## the try-a-model page on http://127.0.0.1:7860 (SERVE_RUN=runs/demo; ganpaint[serve])
	$(VENV)/bin/ganpaint serve --run $(SERVE_RUN)

screenshot: setup  ## docs/serve.jpg: the page after one fill in headless chromium (trains the demo if absent)
	test -f $(SERVE_RUN)/export/generator.safetensors || $(MAKE) demo
	$(PY) tests/scripts/serve_page.py --run $(SERVE_RUN) --output docs/serve.jpg

clean:  ## remove runs/ and packed shards (keeps .venv)
	rm -rf runs shards/*/
