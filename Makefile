# The two commands of the README. Both set up everything they need first (scripts/setup.sh).
.PHONY: setup run test lint proto

setup:
	@bash scripts/setup.sh

# Main job: train the built-in default task (digits) and print a summary.
run: setup
	@.venv/bin/fednode start --state-dir runs/solo-$$(date +%Y%m%d-%H%M%S) --rounds 50 --target-accuracy 0.95

# Full test suite: lint, then every test (CI runs exactly this: .ci/run).
test: setup
	@.venv/bin/ruff check .
	@.venv/bin/python -m pytest -q

proto: setup
	@.venv/bin/python -m fednode.proto.generate
