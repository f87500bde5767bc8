# `make demo` and `make test` each do all set-up on a fresh Debian machine (as root):
# Debian packages, then a virtualenv in .venv with vaultpolicy installed in editable mode.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-host-deps.sh
	bash scripts/install-host-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

test: $(STAMP)
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/compile.py
	$(VENV)/bin/python bench/unlock.py

clean:
	rm -rf $(VENV) *.egg-info
