# Two commands on a fresh machine with only python3: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall when the package metadata changes; the stamp records the last install.
STAMP := $(VENV)/.installed
WORKDIR ?= runs/g2p_attention

.PHONY: train test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The default experiment: an attention RNN on CMUdict G2P. Rerunning resumes (or reports).
train: $(STAMP)
	$(PY) -m attention_jax.main --config=experiments/g2p_attention.py --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
