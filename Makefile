# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv clean bench search_quality
venv: $(STAMP)

$(STAMP): setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m lbt_tf.main --flagfile=configs/demo.flags

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --timeout=600 tests

bench: $(STAMP)
	$(PY) bench/search_step.py --flagfile=configs/demo.flags

# Found vs random architectures at equal latency (about 1-1.5 h on 2 idle CPU cores; resumable).
search_quality: $(STAMP)
	$(PY) bench/search_quality.py --flagfile=configs/search_quality.flags

clean:
	rm -rf runs .pytest_cache
