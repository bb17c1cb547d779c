# Two commands on a fresh machine with only python3: `make train` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstall when the package metadata changes; the stamp records the last install.
STAMP := $(VENV)/.installed
WORKDIR ?= runs/g2p_attention
SWEEP_ROOT ?= runs/g2p_small

.PHONY: train test sweep report bench clean constraints

# constraints.txt pins every package to the versions the suite last passed with.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev,peers]'
	touch $(STAMP)

# Newest versions within pyproject.toml's ranges, resolved in a scratch venv, written to
# constraints.txt; then run `make test` (it reinstalls from the new pins) and commit both.
constraints:
	rm -rf .venv-refresh && $(PYTHON) -m venv .venv-refresh
	.venv-refresh/bin/python -m pip install --quiet --upgrade pip
	.venv-refresh/bin/python -m pip install --quiet -e '.[dev,peers]'
	{ head -n 2 constraints.txt; .venv-refresh/bin/python -m pip freeze --exclude-editable \
	  | grep -v '^# Editable'; } \
	  > constraints.txt.new && mv constraints.txt.new constraints.txt
	rm -rf .venv-refresh

# The default experiment: an attention RNN on CMUdict G2P. Rerunning resumes (or reports).
train: $(STAMP)
	$(PY) -m attention_jax.main --config=experiments/g2p_attention.py --workdir=$(WORKDIR)

# A small ablation of the default experiment (3 attention kinds x 2 seeds, 1,000 steps each),
# two trials at a time on their own cores; rerunning skips finished trials.
sweep: $(STAMP)
	$(PY) -m launch.sweep --config=experiments/g2p_attention.py:steps=1000 --sweep=small \
	  --seeds=2 --max-parallel=2 --root=$(SWEEP_ROOT)

# The sweep's table (markdown, CSV) and plots, in $(SWEEP_ROOT)/report/.
report: $(STAMP)
	$(PY) -m launch.report --root=$(SWEEP_ROOT)

# Speed against PyTorch (BENCHMARKS.md): adds the `bench` extra (torch CPU) to .venv once.
bench: $(STAMP)
	test -f $(VENV)/.installed-bench || { $(PY) -m pip install --quiet -c constraints.txt -e '.[dev,bench]' && touch $(VENV)/.installed-bench; }
	$(PY) -m bench.run $(BENCH_ARGS)

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
