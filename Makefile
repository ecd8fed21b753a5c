# Two commands for a fresh machine: `make demo` (the main job) and `make test`.
# Both set up .venv on first run (scripts/setup_env.sh; later runs skip it).
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test test-fast test-slow demo bench miniature clean

setup:
	@bash scripts/setup_env.sh

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The inner loop: everything but the server, training, command-line and heavy tests
# (markers in pyproject.toml); `make test` runs them all.
test-fast: setup
	$(PY) -m pytest -q -m "not slow and not server and not training and not cli and not heavy" $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

demo: setup
	$(PY) -m scripts.demo $(DEMO_ARGS)

bench: setup
	$(PY) -m benchmarks.run $(BENCH_ARGS)

miniature: setup
	$(PY) -m miniature.pipeline $(MINIATURE_ARGS)

clean:
	rm -rf .venv build .pytest_cache
