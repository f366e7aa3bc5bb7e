# The two quickstart commands, and the chores around them. Each target sets up what it needs (idempotently).
PROMPT ?= What is the capital of France?

.PHONY: run test lint bench clean

run:  ## set up, then stream an answer from the embedded default model
	@scripts/setup.sh runtime
	@.venv/bin/aipc run "$(PROMPT)"

test:  ## set up with the test tools, lint, then run the test suite
	@scripts/setup.sh dev
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks
	.venv/bin/python -m pytest -q

lint:
	@scripts/setup.sh dev
	.venv/bin/ruff check --fix src tests benchmarks
	.venv/bin/ruff format src tests benchmarks

bench:  ## aipc vs the raw OpenVINO GenAI pipeline, JSON to benchmarks/results/
	@scripts/setup.sh dev
	.venv/bin/python benchmarks/openvino_overhead.py --json benchmarks/results/openvino_overhead.json

clean:
	rm -rf .venv .pytest_cache build src/*.egg-info
