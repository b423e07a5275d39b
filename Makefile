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

.PHONY: setup run test clean-results

setup:
	@bash scripts/setup_venv.sh

run: setup
	$(PY) -m seg4seg_utils run --preset $(PRESET) --data $(DATA) --results $(RESULTS) --runs $(RUNS)

test: setup
	$(PY) -m pytest -q

clean-results:
	rm -rf $(RESULTS)
