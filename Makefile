# The two front-door commands: `make demo` and `make test`. Each builds .venv on a fresh machine first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test test-fast lint bench browser clean-venv image manifests gpu-check

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/sbir demo

# Serve the ZSE-SBIR champion of `make demo` with the gallery the demo built for it, until Ctrl-C.
serve: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/sbir serve --model models:/sbir-zse-synthetic@champion run.dir=demo_out/runs

# The browser test drives Debian's chromium + chromium-driver; install them where we can (root, as in CI).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium and chromium-driver (apt-get)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else \
	    echo "note: chromium/chromedriver missing and not root: the browser test will be skipped (sudo apt-get install chromium chromium-driver)"; \
	  fi; \
	fi

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q --durations=15

test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests/unit

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python bench/bench_metrics.py --write docs/benchmarks.md

# The cluster image (infra/Dockerfile) where Docker or Podman runs: VARIANT=cpu (PyTorch CPU wheels) or gpu/cu128.
VARIANT ?= cpu
IMAGE ?= sbir:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)-$(VARIANT)
TORCH_INDEX_URL ?= $(if $(filter cpu,$(VARIANT)),https://download.pytorch.org/whl/cpu,)
image:
	@engine=$$(command -v docker || command -v podman); \
	if [ -z "$$engine" ]; then echo "make image: neither docker nor podman is installed" >&2; exit 1; fi; \
	if ! $$engine info >/dev/null 2>&1; then echo "make image: $$engine is installed but no engine answers ($$engine info failed)" >&2; exit 1; fi; \
	$$engine build -f infra/Dockerfile --build-arg VARIANT=$(VARIANT) --build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL) -t $(IMAGE) . && \
	echo "built $(IMAGE)"

# Render every file under infra/kuberay and infra/launcher from infra/cluster.yaml, then check them offline.
manifests: $(STAMP)
	$(BIN)/sbir infra render --out infra
	$(BIN)/sbir infra validate

# Train, evaluate, index and serve each method at base size on every visible GPU (not part of make test).
gpu-check: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/gpu_check.py --out gpu-check.json

clean-venv:
	rm -rf $(VENV)
