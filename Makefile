# Two entry points: `make demo` and `make test` (both install into .venv when needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.hugnc-installed
DEBIAN_FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: demo test install fashion-mnist lint bench clean-logs gpu-check gpu-carry

install: $(STAMP)

# Reinstalls when pyproject.toml changes. torch/torchvision come from the machine's pip config.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -e ".[dev,ray]"
# hydra/launcher=ray: the plugin without its pins (pyproject.toml, extra "ray", says why).
	$(BIN)/python -m pip install --no-deps "hydra-ray-launcher>=1.2.2,<1.3"
	touch $(STAMP)

# Offline Fashion-MNIST: Debian's package, when apt is there and the files are missing.
fashion-mnist:
	@if [ -f $(DEBIAN_FASHION_MNIST)/train-images-idx3-ubyte.gz ] || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ]; then \
		echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist); \
	elif command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then \
		sudo apt-get install -y -q dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST not installed and no apt: hugnc will try torchvision's download."; \
	fi

demo: install fashion-mnist
	$(BIN)/python -m hugnc experiment=quickstart

# Lint first: a style, import or type error fails in seconds, before the suite's minutes.
test: lint fashion-mnist
	$(BIN)/python -m pytest -q

LINTED := src tests benchmarks experiments
lint: install
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy  # files and settings: [tool.mypy] in pyproject.toml

bench: install
	$(BIN)/python benchmarks/bench_losses.py
	$(BIN)/python benchmarks/bench_metrics.py
	$(BIN)/python benchmarks/bench_data.py
	$(BIN)/python benchmarks/bench_training.py

# The GPU paths in one table (syncs per step, TF32, img/s, losses, a quickstart epoch): a few
# minutes on one GPU (README "GPU check"); GPU_CHECK_ARGS="--device cpu --quick" smoke-runs it.
GPU_CHECK_ARGS ?=
gpu-check: install fashion-mnist
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# On a lent GPU machine that has torch and lightning but no package index: `make gpu-carry` here
# puts the wheels it lacks (at this .venv's versions, for its python GPU_CARRY_PYTHON) and
# Fashion-MNIST's .gz files in .gpu_carry/ (git-ignored, ~3 MB of wheels); carried there,
# benchmarks/gpu_machine.sh installs them and runs the check (README "GPU check").
GPU_CARRY := hydra-core omegaconf antlr4-python3-runtime pydantic pydantic-core annotated-types \
	typing-inspection typing-extensions
GPU_CARRY_PYTHON ?= 3.12
gpu-carry: install fashion-mnist
	rm -rf .gpu_carry && mkdir -p .gpu_carry/wheels .gpu_carry/fashion-mnist
	@for name in $(GPU_CARRY); do \
		pin="$$name==$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('$$name'))")"; \
		$(BIN)/python -m pip download -q --no-deps --only-binary=:all: -d .gpu_carry/wheels \
			--python-version $(GPU_CARRY_PYTHON) --implementation cp --platform manylinux_2_28_x86_64 \
			--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 "$$pin" 2>/dev/null \
		|| $(BIN)/python -m pip wheel -q --no-deps -w .gpu_carry/wheels "$$pin" \
		|| { echo "gpu-carry: no wheel of $$pin for python $(GPU_CARRY_PYTHON)"; exit 1; }; \
	done
# pip wheel (the fallback, for sdist-only packages) builds for this python: only pure ones may pass.
	@if ls .gpu_carry/wheels | grep -v -e '-none-any\.whl$$' -e '-cp$(subst .,,$(GPU_CARRY_PYTHON))-'; then \
		echo "gpu-carry: the wheels above are not for python $(GPU_CARRY_PYTHON)"; exit 1; fi
	@for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do \
		if [ -f $(DEBIAN_FASHION_MNIST)/$$name.gz ]; then cp $(DEBIAN_FASHION_MNIST)/$$name.gz .gpu_carry/fashion-mnist/; \
		else gzip -c data/FashionMNIST/raw/$$name > .gpu_carry/fashion-mnist/$$name.gz; fi; \
	done
	@ls .gpu_carry/wheels && du -sh .gpu_carry

# The README's Fashion-MNIST results table (~90 min on 2 CPU cores), in the background; not part of
# `make test`. The pipeline is experiments/ (not installed; run from the repository root). A new
# results/<date>_<time>/ each time; continue a killed run with
# `make results RESULTS_ARGS="--resume --out results/<date>_<time>"`.
RESULTS_ARGS ?=
.PHONY: results
results: install fashion-mnist
	mkdir -p results
	nohup $(BIN)/python -m experiments.results $(RESULTS_ARGS) >> results/results.log 2>&1 &
	@echo "experiments.results started in the background; follow it with: tail -f results/results.log"

# The paper-budget stage (README "Does HUG match CE?"): 12 runs of ~19,800 SGD steps, ~4-5 h on 2
# CPU cores, in the background. Resumable per job: finished jobs (their records in
# results/paper_budget/, committed) never run again, a killed one continues from its checkpoint.
# PAPER_BUDGET_ARGS=--commit commits each finished job's record as it finishes.
PAPER_BUDGET_ARGS ?=
.PHONY: paper-budget
paper-budget: install fashion-mnist
	mkdir -p results
	nohup $(BIN)/python -m experiments.results --stages paper_budget --resume $(PAPER_BUDGET_ARGS) >> results/paper_budget.log 2>&1 &
	@echo "paper_budget started in the background; follow it with: tail -f results/paper_budget.log"
