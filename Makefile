# The two commands of the README: `make demo` (arrives with the reference workload) and `make test`.
# Each creates .venv on a fresh machine and installs the pinned dependencies (constraints.txt) itself.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo incident drill-hosts test lint unit stress crash-states bench bench-dcp bench-frameworks bench-ray clean

# The main job: a EUR/USD agent trained under every guard (about two minutes on two cores).
demo: $(STAMP)
	$(BIN)/python -m examples.swt.demo

# The incident drill: a rogue trainer with a stale token and changed features, and every defence.
incident: $(STAMP)
	$(BIN)/python -m examples.swt.incident_drill

# Two hosts (network namespaces, root), a PostgreSQL registry of its own, host A partitioned (issue 13).
drill-hosts: $(STAMP)
	$(BIN)/python stress/hosts_drill.py

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,torch,postgres,report,signing,sb3,lightning,hf,ray,s3,demo]'
	touch $(STAMP)

test: lint unit

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks stress examples
	$(BIN)/ruff format --check src tests benchmarks stress examples
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

stress: $(STAMP)
	$(BIN)/python stress/crash_consistency.py --kills 2000

crash-states: $(STAMP)
	$(BIN)/python stress/crash_states.py --scenario full

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_store.py
	$(BIN)/python benchmarks/bench_leases.py

bench-dcp: $(STAMP)
	$(BIN)/python -m torch.distributed.run --standalone --nproc-per-node 4 benchmarks/bench_dcp.py

bench-frameworks: $(STAMP)
	$(BIN)/python benchmarks/bench_frameworks.py --framework lightning --rounds 9 --every 10
	$(BIN)/python benchmarks/bench_frameworks.py --framework hf --rounds 9 --steps 1000 --every 500

# Ray in a network namespace with only loopback: it binds 127.0.0.1 and reaches nothing outside.
bench-ray: $(STAMP)
	unshare -n sh -c 'ip link set lo up && exec "$$@"' sh $(BIN)/python benchmarks/bench_ray.py --rounds 5

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
