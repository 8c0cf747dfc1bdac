# The README's two commands: `make demo` (a whole backup window on the local stack) and
# `make test` (ruff, mypy, pytest). Both install what they need: Debian packages when run as
# root, then a virtualenv with the Python dependencies.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SYSTEM_PACKAGES := rsync openssh-server openssh-client gocryptfs fuse3 rdiff-backup iproute2
# bench-wire runs the peers a user would pick instead of Offsite beside it (bench/peers.py)
BENCH_PACKAGES := restic borgbackup
PYTEST_ARGS ?=

.PHONY: demo serve test lint typecheck pytest system venv bench clean \
	bench-window-overhead bench-moto-app bench-sessions bench-wire bench-restore bench-cost

demo: system venv
	$(BIN)/python -m local.demo $(DEMO_ARGS)

# The local stack up until Ctrl-C: prints the export lines and the commands to try (README.md,
# "Try it on `make serve`").
serve: system venv
	$(BIN)/python -m local.serve

test: system venv lint typecheck pytest

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

# Two workers: the tests that act on the machine (accounts, sshd, mounts) stay on one, in order
# (tests/conftest.py); PYTEST_ARGS="-n 0" runs everything in one process.
pytest: system venv
	$(BIN)/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

# Every benchmark, one after the other (bench/README.md). bench-wire and bench-restore need
# root: they add a Unix account for their throwaway sshd (bench-wire also loop devices, and
# installs restic and borg); WIRE_ARGS="--size-mb 20" or "--scaling 200,2000",
# RESTORE_ARGS="--size-mb 20" and MOTO_APP_ARGS=--quick for quick runs.
bench: bench-window-overhead bench-moto-app bench-sessions bench-wire bench-restore bench-cost

bench-window-overhead: system venv
	$(BIN)/python -m bench.window_overhead

bench-moto-app: system venv
	$(BIN)/python -m bench.moto_app $(MOTO_APP_ARGS)

bench-sessions: system venv
	$(BIN)/python -m bench.sessions

bench-wire: system venv
	@$(MAKE) --no-print-directory system SYSTEM_PACKAGES="$(BENCH_PACKAGES)"
	$(BIN)/python -m bench.wire $(WIRE_ARGS)

bench-restore: system venv
	$(BIN)/python -m bench.restore $(RESTORE_ARGS)

bench-cost: venv
	$(BIN)/python -m bench.cost $(COST_ARGS)

# Installs only what is missing, and only as root; otherwise says what to install.
system:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then \
	    echo "system: installing the Debian packages $$missing (apt-get update, then install)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	else \
	    echo "missing system packages: $$missing (run as root, or: sudo apt-get install $$missing)" >&2; exit 1; \
	fi

venv: $(VENV)/.installed

# -e .: the `offsite-admin` command (chalicelib.admin), see pyproject.toml.
$(VENV)/.installed: requirements.txt requirements-dev.txt host_client/pyproject.toml pyproject.toml
	@echo "venv: making $(VENV) and installing the Python dependencies (requirements*.txt, the host client, offsite-admin): a minute or two on a fresh machine"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	set -o pipefail; $(BIN)/pip install --progress-bar off -r requirements-dev.txt -e ./host_client -e . \
	    | { grep -E '^(Collecting|Successfully)' || true; }
	touch $@
	@echo "venv: ready"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache local/.run
