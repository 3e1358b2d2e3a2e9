# Two entry points: `make demo` (the main job on built-in data) and `make test` (the default suite).
# Both create .venv on first use and reinstall only when the dependency files change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := dev,wordpiece,tpu
# Force host CPU for the demo and tests even when libtpu (the `tpu` extra) is installed.
CPU_ENV := JAX_PLATFORMS=cpu

.PHONY: install test test-slow test-all demo lint clean tokenizers scaling-study

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade 'pip>=24'
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
	touch $@

test: $(STAMP)
	$(CPU_ENV) $(BIN)/python -m pytest -n 2 --dist loadgroup

test-slow: $(STAMP)
	$(CPU_ENV) $(BIN)/python -m pytest -n 2 --dist loadgroup -m slow

test-all: $(STAMP)
	$(CPU_ENV) $(BIN)/python -m pytest -n 2 --dist loadgroup -m "slow or not slow"

demo: $(STAMP)
	$(CPU_ENV) $(BIN)/python tools/demo.py --workdir runs/demo

# Trains the four scenes tokenizers shipped in tokenizers/scenes_64/ (builds data/scenes/64px first
# if missing; a rerun resumes each from runs/tokenizers/). normal and semseg ship their live weights:
# after their 250 steps the model EMA (decay 0.99) still lags the live weights by far.
SCENES_TOKENIZERS := rgb:ema depth:ema normal:live semseg:live
tokenizers: $(STAMP)
	for mw in $(SCENES_TOKENIZERS); do m=$${mw%:*}; \
	  $(CPU_ENV) $(BIN)/python tools/train_tokenizer.py --config=tokenizers/scenes_$$m.py \
	    --workdir runs/tokenizers/scenes_$$m --export tokenizers/scenes_64/$$m --export_weights $${mw#*:} \
	    || exit 1; \
	done

# The first scaling study (configs/scaling/scenes_64.py, about an hour on 2 CPU cores): builds
# scenes/64px under data/scaling, pretokenizes it with the shipped tokenizers, trains the sweep's 12 runs in
# runs/scaling_scenes (a rerun skips finished runs and resumes an interrupted one; ~50 min on a shared
# 2-core CPU), fits and writes
# the report to docs/scaling_scenes/.
scaling-study: $(STAMP)
	$(CPU_ENV) $(BIN)/python tools/build_scenes.py --data_dir data/scaling --image_size 64 \
	  --num_train 4000 --num_validation 256 --no-progress
	$(CPU_ENV) $(BIN)/python tools/pretokenize.py --source scenes/64px --data_dir data/scaling \
	  --tokenizers scenes_64 --out data/scaling/scenes_tok/64px/1.0.0 --n_crops 2 --drop scene --no-progress
	$(CPU_ENV) $(BIN)/python tools/scaling_laws.py sweep --config=configs/scaling/scenes_64.py \
	  --workdir runs/scaling_scenes --report docs/scaling_scenes

lint: $(STAMP)
	$(BIN)/ruff check fourm_jax tools tests configs

clean:
	rm -rf $(VENV) runs
