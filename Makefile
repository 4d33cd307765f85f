# RT-DETR-Seg: `make check` runs the quick tests (unit, parity, API: no training runs), `make test`
# the whole suite (what CI runs), `make demo` the main pipeline. Each creates .venv on first use
# (tools/ensure_venv.sh) and re-installs only when the requirement files change.

PYTHON_VENV := .venv/bin/python
# Offline-safe runtime settings (no model hub, no W&B account, no display).
export HF_HUB_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export WANDB_MODE ?= offline
export WANDB_SILENT := true
export MPLBACKEND := Agg
# Let Python cache byte-code in the venv (imports of torch are 2x slower without it).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv lint check test demo bench clean

venv:
	@bash tools/ensure_venv.sh

check: lint
	$(PYTHON_VENV) -m pytest -q -m "not slow" tests

lint: venv
	$(PYTHON_VENV) -m ruff check .

test: lint
	$(PYTHON_VENV) -m pytest -q tests

demo: venv
	$(PYTHON_VENV) -m rfdetr.demo

bench: venv
	$(PYTHON_VENV) benchmarks/bench_inference.py

clean:
	rm -rf .venv .pytest_cache demo_output
