# qudag: every target sets up what it needs on a fresh Debian machine (root) first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Debian packages the build, the tests and the interop peers need.
DEB_PACKAGES := build-essential libssl-dev pkg-config iproute2 nftables iptables \
                python3-libtorrent coturn miniupnpd prometheus
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all deps venv install test test-pure demo demo-link bench clean

all: test

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@# coturn and miniupnpd are started by the tests that need them, never as services.
	@-systemctl disable --now coturn miniupnpd prometheus >/dev/null 2>&1 || true
	@-pkill -x turnserver >/dev/null 2>&1 || true

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel "Cython>=3.0"

$(STAMP): $(PY) pyproject.toml setup.py $(wildcard csrc/*.c csrc/*.h) $(shell find qudag_core -name '*.py' -o -name '*.pxd' 2>/dev/null)
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	@touch $(STAMP)

install: deps $(STAMP)

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

test-pure: install
	QUDAG_NO_EXTENSIONS=1 $(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/qudag testnet --nodes 20

demo-link: install
	$(PY) -m qudag_io.demo

bench: install
	$(PY) -m pytest benches --benchmark-only --benchmark-columns=min,median,mean,ops,rounds $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
	find qudag_core -name '*.so' -delete
	find qudag_core -name '*.c' -delete
