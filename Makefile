# Two entry points: `make demo` (the main job on built-in data) and `make test` (the default suite).
# Both create .venv on first use and reinstall only when the dependency files change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := dev,wordpiece,tpu
# Force host CPU for the demo and tests even when libtpu (the `tpu` extra) is installed.
CPU_ENV := JAX_PLATFORMS=cpu

.PHONY: install test test-slow test-all demo lint clean tokenizers

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

lint: $(STAMP)
	$(BIN)/ruff check fourm_jax tools tests configs

clean:
	rm -rf $(VENV) runs
