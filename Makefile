# synthkit: the two quick-start commands are `make casestudy` and `make test`.
# Both create .venv and install what they need; a second run re-installs nothing unless
# settings.ini, setup.py or constraints.txt changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip install --disable-pip-version-check -q -c constraints.txt
OUT    ?= results/casestudy
PRESET ?= quick
export HF_HUB_OFFLINE=1
export YOLO_OFFLINE=true

.PHONY: casestudy test install install-dev sync readme clean-venv

casestudy: install
	$(BIN)/synthkit case-study --preset $(PRESET) --out $(OUT)

test: install-dev
	$(BIN)/python -m pytest -q tests
	$(BIN)/nbdev_test --n_workers 2

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q --upgrade pip setuptools wheel

$(VENV)/.installed: $(VENV)/bin/python setup.py settings.ini constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

# Keep the library, the clean notebooks and the README in step with nbs/ (run before committing).
sync: install-dev
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean
	$(BIN)/python tools/make_readme.py

clean-venv:
	rm -rf $(VENV)
