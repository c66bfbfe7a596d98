# The README's two commands: `make demo` and `make test`. Both create or reuse .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Outside this project's build hosts, point this at PyTorch's CPU index so pip does not pull
# a multi-GB CUDA build, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: venv browser test test-fast demo bench lint lock clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# Headless Chromium + its driver for the front-end's browser tests (Debian packages). Never fails
# the build: without root or apt-get those tests skip and say why.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing chromium and chromium-driver (browser tests)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	    || echo "could not install chromium: the browser tests will skip"; \
	else echo "chromium/chromedriver missing and not installable here (needs root and apt-get): the browser tests will skip"; fi

test: venv browser
	$(PY) -m pytest

test-fast: venv
	$(PY) -m pytest -m "not e2e and not slow"

demo: venv
	$(PY) -m scripts.demo

bench: venv
	$(PY) -m bench

# The Lambda image's dependency locks (locks/*.txt), resolved from PyPI for the image's platform
# (scripts/locks.py). Run after changing requirements*.txt; UPGRADE=1 moves every pin forward.
lock: venv
	$(PY) -m scripts.locks $(if $(UPGRADE),--upgrade)

lint: venv
	$(VENV)/bin/cfn-lint infra/template.yaml

clean:
	rm -rf $(VENV) .pytest_cache
