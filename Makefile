# The two commands of the README. Both set up everything they need first (scripts/setup.sh).
.PHONY: setup run test lint proto

setup:
	@bash scripts/setup.sh

# Main job: a local federation of 4 daemons training the default task (digits), then a summary.
run: setup
	@.venv/bin/fednode launch --nodes 4 --rounds 30

# Full test suite: lint, then every test (CI runs exactly this: .ci/run).
test: setup
	@.venv/bin/ruff check .
	@.venv/bin/python -m pytest -q

proto: setup
	@.venv/bin/python -m fednode.proto.generate
