# regionclip-min: every set-up step lives here, so a fresh machine needs only `make toy` or `make test`.
# No GPU and no network beyond the package registries are assumed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum < requirements.txt | cut -d' ' -f1)
DATA   ?= data/toy
SEED   ?= 0
TOY_NUM_TRAIN ?= 8000
TOY_NUM_VAL   ?= 500

.PHONY: help venv toy toy-seeds toy-seeds-worlds toy-ablations toy-transfers toy-worlds toy-world bench test clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# The venv is (re)installed when requirements.txt changes: the stamp file name carries its checksum.
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)  ## create .venv and install requirements.txt

# runs write their tables to runs/toy-bench/results (untracked); RESULTS=results/toy refreshes the committed reference
BENCH := $(PY) -m benchmarks.toy.benchmark $(if $(FORCE),--force) $(if $(RESULTS),--results $(RESULTS))

toy: $(STAMP)  ## the whole toy pipeline, one seed: runs/toy-bench/results/summary.md (FORCE=1 redoes finished steps)
	$(BENCH) run

toy-seeds: $(STAMP)  ## RegionCLIP + transfer for seeds 0, 1, 2: mean +- std in summary.md (ROW=<ablation>: that row)
	$(BENCH) seeds $(if $(ROW),--row $(ROW))

toy-seeds-worlds: $(STAMP)  ## toy-seeds on the default world and worlds w1, w2 (WORLDS=...): summary-worlds.md
	$(BENCH) seeds --worlds $(or $(WORLDS),default,w1,w2) $(if $(ROW),--row $(ROW))

toy-ablations: $(STAMP)  ## the paper's ablations on the toy world: ablations.md
	$(BENCH) ablations

toy-transfers: $(STAMP)  ## fully supervised and RoI-sampling transfers, seeds 0-2 (STUDIES=...): transfers.md
	$(BENCH) transfers $(if $(STUDIES),--studies $(STUDIES))

toy-worlds: $(STAMP)  ## stage 0 on world C, the variants that led to this world, and 4 seeds: stage0-worlds.md
	$(PY) -m benchmarks.toy.worlds $(if $(FORCE),--force) $(if $(RESULTS),--results $(RESULTS))

toy-world: $(STAMP)  ## only generate the toy world (data/toy)
	$(PY) -m regionclip_min.toyworld --out $(DATA) --seed $(SEED) --num-train $(TOY_NUM_TRAIN) --num-val $(TOY_NUM_VAL)

bench: $(STAMP)  ## speed and memory against their bounds: runs/bench/results/bench.md (CPU; DEVICE=cuda on a GPU)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py --device $(or $(DEVICE),cpu) $(if $(RESULTS),--out $(RESULTS))

test: $(STAMP)  ## run the test suite (CPU, offline)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:  ## remove generated data and run outputs (keeps .venv and the committed results/)
	rm -rf data runs results/demo results/zeroshot
