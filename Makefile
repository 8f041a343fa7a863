# Set-up is part of every target: a fresh machine needs only python3.11 and make.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The venv's console scripts (unlearn, dvc, prefect) first on PATH, as in an activated venv.
RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

demo: $(STAMP)
	$(RUN) $(VENV)/bin/unlearn demo

test: $(STAMP)
	$(RUN) $(VENV)/bin/python -m pytest -q
