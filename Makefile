# The two README commands:  `make run`  (main job on the embedded default)  and  `make test`.
# Both set up .venv themselves (scripts/setup_venv.sh, idempotent) and are safe to re-run.
SHELL := /bin/bash
PY := .venv/bin/python
export HF_HUB_OFFLINE ?= 1
export PYTHONHASHSEED ?= 0
export MPLBACKEND ?= Agg
PRESET ?= cpu
DATA ?= data
RESULTS ?= results
RUNS ?= runs

NBVAL := $(CURDIR)/.nbval

.PHONY: setup run test clean-results

setup:
	@bash scripts/setup_venv.sh

# make run times its stages (seg4seg_utils.timing): the breakdown is printed at the end and kept in timing.md
run: export SEG4SEG_RUN_STARTED := $(shell date +%s.%N)
run: export SEG4SEG_TIMING := $(RESULTS)/$(PRESET)/timing.csv
run: setup
	$(PY) -m seg4seg_utils run --preset $(PRESET) --data $(DATA) --results $(RESULTS) --runs $(RUNS)
	$(PY) -m seg4seg_utils notebooks --preset $(PRESET) --out book/executed \
	  --set DATA_DIR=$(DATA) RESULTS_DIR=$(RESULTS) RUNS_DIR=$(RUNS)
	$(PY) -m seg4seg_utils book
	$(PY) -m seg4seg_utils timing

# unit tests, then nbval on smoke-parameterised copies of every notebook (papermill prepares, nbval runs)
test: setup
	rm -rf $(NBVAL)/notebooks
	$(PY) -m seg4seg_utils notebooks --preset smoke --prepare-only --out $(NBVAL)/notebooks \
	  --set DATA_DIR=$(NBVAL)/data RESULTS_DIR=$(NBVAL)/results RUNS_DIR=$(NBVAL)/runs CACHE_DIR=$(NBVAL)/cache
	$(PY) -m pytest -q tests $(NBVAL)/notebooks --nbval-lax

clean-results:
	rm -rf $(RESULTS)
