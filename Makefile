# `make demo` and `make test` each do all set-up on a fresh Debian machine (as root):
# Debian packages, then a virtualenv in .venv with vaultpolicy installed in editable mode.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: setup vmkernel demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/install-host-deps.sh
	bash scripts/install-host-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# the Debian kernel tests/enforcer/test_quota_vm.py boots under qemu (the host's has no quota support):
# downloaded and unpacked into .cache/vmkernel/ once, never installed into the host system
vmkernel: $(STAMP)
	$(VENV)/bin/python tests/vm/harness.py fetch

test: $(STAMP) vmkernel
	$(VENV)/bin/pytest

bench: $(STAMP)
	$(VENV)/bin/python bench/compile.py
	$(VENV)/bin/python bench/unlock.py

clean:
	rm -rf $(VENV) *.egg-info .cache
