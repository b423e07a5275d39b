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

# the notebooks run two side by side (reading the main job's results; no number changes, see report/book.py)
NOTEBOOK_JOBS ?= 2
# make run times its stages (seg4seg_utils.timing): the breakdown is printed at the end and kept in timing.md
run: export SEG4SEG_RUN_STARTED := $(shell date +%s.%N)
run: export SEG4SEG_TIMING := $(RESULTS)/$(PRESET)/timing.csv
run: setup
	$(PY) -m seg4seg_utils run --preset $(PRESET) --data $(DATA) --results $(RESULTS) --runs $(RUNS)
	$(PY) -m seg4seg_utils notebooks --preset $(PRESET) --out book/executed --jobs $(NOTEBOOK_JOBS) \
	  --set DATA_DIR=$(DATA) RESULTS_DIR=$(RESULTS) RUNS_DIR=$(RUNS)
	$(PY) -m seg4seg_utils book
	$(PY) -m seg4seg_utils timing

# unit tests and nbval on smoke-parameterised copies of every notebook (papermill prepares, nbval runs), on
# TEST_JOBS workers (pytest-xdist; tests/conftest.py keeps each notebook, file and the shared smoke job on one
# worker). The smoke main job runs once, in the background beside pytest, in two steps: its data stage (exit
# status in data.rc, output in data.log), then the rest (job.rc, job.log). The tests that need its data or all
# of it, and the notebooks, which read a copy of it (book/) as make run's notebooks read the main job's, wait
# for those files; every other test runs meanwhile. The tests read the original (job/, SEG4SEG_SMOKE_JOB) untouched.
# OMP_WAIT_POLICY=PASSIVE: two workers each running torch on 2 threads thrash when idle OpenMP threads spin
# (measured, 2-core AMD EPYC: two concurrent runs of tests/test_train_gap.py took 192 s spinning, 59 s passive);
# passive waiting changes no number.
TEST_JOBS ?= 2
SMOKE_JOB = SEG4SEG_RUN_STARTED= $(PY) -m seg4seg_utils run --preset smoke --data $(NBVAL)/job/data \
  --results $(NBVAL)/job/results --runs $(NBVAL)/job/runs --cache $(NBVAL)/job/cache --no-progress
test: export OMP_WAIT_POLICY := PASSIVE
test: setup
	rm -rf $(NBVAL)
	mkdir -p $(NBVAL)
	( SEG4SEG_TIMING=$(NBVAL)/data-timing.csv $(SMOKE_JOB) --until data > $(NBVAL)/data.log 2>&1; \
	  echo $$? > $(NBVAL)/data.rc; [ "$$(cat $(NBVAL)/data.rc)" = 0 ] \
	  && SEG4SEG_TIMING=$(NBVAL)/job/timing.csv $(SMOKE_JOB) > $(NBVAL)/job.log 2>&1 && cp -r $(NBVAL)/job $(NBVAL)/book; \
	  echo $$? > $(NBVAL)/job.rc ) & \
	$(PY) -m seg4seg_utils notebooks --preset smoke --prepare-only --out $(NBVAL)/notebooks \
	  --set DATA_DIR=$(NBVAL)/book/data RESULTS_DIR=$(NBVAL)/book/results RUNS_DIR=$(NBVAL)/book/runs \
	  CACHE_DIR=$(NBVAL)/book/cache \
	&& SEG4SEG_SMOKE_JOB=$(NBVAL)/job SEG4SEG_SMOKE_DATA_DONE=$(NBVAL)/data.rc SEG4SEG_SMOKE_JOB_DONE=$(NBVAL)/job.rc \
	  $(PY) -m pytest -q -n $(TEST_JOBS) --dist loadgroup tests $(NBVAL)/notebooks --nbval-lax; \
	status=$$?; wait; exit $$status

clean-results:
	rm -rf $(RESULTS)
