# `make run` and `make test` create .venv and install the project into it when missing.
VENV   ?= .venv
PYTHON ?= python3
# The CPU build of torch; on a GPU machine use e.g. TORCH="torch==2.13.0" from the CUDA index.
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: install run tune test compile ui clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	touch $@

run: install
	$(VENV)/bin/lifecycle run $(ARGS)

tune: install
	$(VENV)/bin/lifecycle tune $(ARGS)

test: install
	$(VENV)/bin/python -m pytest $(ARGS)

compile: install
	$(VENV)/bin/lifecycle compile $(ARGS)

ui: install
	$(VENV)/bin/lifecycle ui $(ARGS)

clean:
	rm -rf work
