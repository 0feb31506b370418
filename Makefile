# The two commands of the README: `make demo` (main job) and `make test` (tests).
# Both run the idempotent set-up first.
.PHONY: setup demo test lint bench clean

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m pktlab.cli demo

lint: setup
	.venv/bin/ruff check pktlab tests bench scripts notebooks

test: setup lint
	$(PY) -m pytest -q -p no:cacheprovider

bench: setup
	$(PY) bench/bench_queue.py
	$(PY) bench/bench_offload.py
	$(PY) bench/bench_netpipe.py
	$(PY) bench/bench_dashboard.py

clean:
	-$(PY) -m pktlab.cli doctor --clean
