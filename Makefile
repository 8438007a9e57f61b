# The two commands of the README. Each creates .venv if needed, installs the project
# (a normal, non-editable install, so the packaged YAML is what gets tested), and runs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/python -m pip install --quiet .

install-test: $(BIN)/python
	$(BIN)/python -m pip install --quiet ".[test]"

demo: install
	$(BIN)/edg tour --out runs/tour

test: install-test
	$(BIN)/pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) runs build dist *.egg-info
