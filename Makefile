# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
BUNDLE := dist/edgetx-gpt
CHECKPOINT := models/checkpoint

.PHONY: demo test test-fast venv train clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[export,dev]'
	@touch $@

venv: $(STAMP)

# Build the reference model's bundle (export, golden I/O, parity) and generate from it.
demo: $(BUNDLE)/manifest.json
	$(BIN)/edgetx generate $(BUNDLE) --prompt 'def fibonacci(n):' --max-tokens 200

$(BUNDLE)/manifest.json: $(STAMP) $(CHECKPOINT)/model.safetensors $(CHECKPOINT)/config.json
	$(BIN)/edgetx build --out $(BUNDLE) --force

# Everything, slow tests included (this is what CI runs). pytest's exit status 5 (no tests
# collected) is a failure here like any other non-zero status.
test: $(STAMP)
	$(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

# Re-train the reference checkpoint (about 25 minutes on 2 cores).
train: $(STAMP)
	$(BIN)/python -m edgetx.models.train --out $(CHECKPOINT)

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache
