# The two commands of the README: `make demo` (main job) and `make test` (tests).
# Both run the idempotent set-up first.
.PHONY: setup demo test lint docs bench clean lab binder-check wheel hub

PY := .venv/bin/python

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m pktlab.cli demo

lint: setup
	.venv/bin/ruff check pktlab tests bench scripts notebooks classroom

# the documentation site in build/site (strict: broken links, missing references, undocumented public names fail it)
docs: setup
	bash scripts/docs.sh

# the whole suite as root (root mode), then the live suite again as an ordinary user (user-namespace mode);
# the browser and notebook runs take that user's place themselves (they start Jupyter as an ordinary user); the
# soak runs two minutes as root and one as the user
test: setup lint docs
	$(PY) -m pytest -q -p no:cacheprovider --durations=15
	PKTLAB_SOAK_SECONDS=60 bash scripts/test_as_user.sh pktlab-student -rs --durations=10 tests --ignore=tests/browser --ignore=tests/notebooks

# a JupyterHub for a class on this machine (root): STUDENTS accounts, their passwords in /var/lib/pktlab-hub/passwords
hub:
	STUDENTS=$(or $(STUDENTS),3) bash scripts/hub.sh

bench: setup
	$(PY) bench/bench_queue.py
	$(PY) bench/bench_offload.py
	$(PY) bench/bench_filters.py
	$(PY) bench/bench_copy.py
	$(PY) bench/bench_netpipe.py
	$(PY) bench/bench_netpipe.py kernel-nat
	$(PY) bench/bench_dpi.py
	$(PY) bench/bench_dashboard.py
	$(PY) bench/bench_replay.py
	$(PY) bench/bench_tracing.py
	$(PY) bench/bench_userns.py
	$(PY) bench/bench_failing_handler.py
	$(PY) bench/bench_packet_path.py
	$(PY) bench/bench_record_rewrites.py
	$(PY) bench/bench_grading.py
	$(PY) bench/bench_hub_scale.py

# JupyterLab from the project's venv on the notebooks, as an ordinary user (live through user namespaces;
# root runs it as pktlab-student on a copy in that user's home); it prints the URL with its token
lab: setup
	bash scripts/lab.sh

# manylinux wheels of pktlab and NetfilterQueue in dist/, carrying their C libraries (pip install dist/*.whl)
wheel: setup
	bash scripts/wheel.sh dist

# the Binder path as far as this machine can check it (also run by make test)
binder-check:
	bash scripts/binder_check.sh

clean:
	-$(PY) -m pktlab.cli doctor --clean
