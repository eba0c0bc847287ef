PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

setup: $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps -e .

# The test suite (one local[2] Spark session with Delta, real data from ../shared/corpus).
test: setup
	$(PY) -m pytest

# A demo selection on the small real sample shipped in examples/data.
demo: setup
	rm -rf demo-out demo-export
	$(VENV)/bin/dsel run --raw examples/data/raw.jsonl.gz --target examples/data/target.jsonl.gz \
	    --out demo-out --num-samples 150 --seed 0 --conf spark.sql.shuffle.partitions=4 \
	    --export demo-export --export-format jsonl
	$(PY) examples/show_selection.py demo-export

bench: setup
	$(PY) benchmarks/bench.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache build dist *.egg-info
