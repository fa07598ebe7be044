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

.PHONY: help venv toy toy-seeds toy-ablations toy-worlds toy-world bench test clean
help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# The venv is (re)installed when requirements.txt changes: the stamp file name carries its checksum.
$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@rm -f $(VENV)/.installed-*; touch $@

venv: $(STAMP)  ## create .venv and install requirements.txt

BENCH := $(PY) -m regionclip_min.toy_benchmark $(if $(FORCE),--force)

toy: $(STAMP)  ## the whole toy pipeline, one seed: results/toy/summary.md (FORCE=1 redoes finished steps)
	$(BENCH) run

toy-seeds: $(STAMP)  ## RegionCLIP + transfer for seeds 0, 1, 2: mean +- std in results/toy/summary.md (ROW=<ablation>: that row)
	$(BENCH) seeds $(if $(ROW),--row $(ROW))

toy-ablations: $(STAMP)  ## the paper's ablations on the toy world: results/toy/ablations.md
	$(BENCH) ablations

toy-worlds: $(STAMP)  ## stage 0 on world C, the variants that led to this world, and 4 seeds: results/toy/stage0-worlds.md
	$(PY) -m regionclip_min.toy_worlds $(if $(FORCE),--force)

toy-world: $(STAMP)  ## only generate the toy world (data/toy)
	$(PY) -m regionclip_min.toyworld --out $(DATA) --seed $(SEED) --num-train $(TOY_NUM_TRAIN) --num-val $(TOY_NUM_VAL)

bench: $(STAMP)  ## speed and memory against their bounds: results/bench.md / .json (CPU; DEVICE=cuda on a GPU)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/run.py --device $(or $(DEVICE),cpu)

test: $(STAMP)  ## run the test suite (CPU, offline)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

clean:  ## remove generated data and run outputs (keeps .venv and the committed results/toy tables and pictures)
	rm -rf data runs results/demo results/zeroshot results/toy/logs results/toy/zeroshot results/toy/worlds results/toy/timings.json
