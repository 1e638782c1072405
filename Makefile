# The two Quickstart commands (each does all set-up first): `make generate` and `make test`.
PY := .venv/bin/python
PROMPT ?= def fibonacci(n):

.PHONY: setup generate test bench clean
setup:
	@scripts/setup_env.sh

generate: setup
	@$(PY) -m mpt_lite.cli generate "$(PROMPT)"

test: setup
	@$(PY) -m pytest -q tests

clean:
	rm -rf build mpt_lite/_C*.so
