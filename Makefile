# The two Quickstart commands (each does all set-up first): `make generate` and `make test`.
PY := .venv/bin/python
PROMPT ?= def fibonacci(n):

.PHONY: setup generate test bench bench-quick bench-setup clean
setup:
	@scripts/setup_env.sh

generate: setup
	@$(PY) -m mpt_lite.cli generate "$(PROMPT)"

test: setup
	@$(PY) -m pytest -q tests

# Benchmarks against llama.cpp and transformers (docs/benchmarks.md). The bench extra builds
# llama-cpp-python from source (CPU only) the first time: a few minutes.
bench-setup: setup
	@PY=$(PY) scripts/install_llama_cpp.sh
	@MPT_LITE_CUDA=$${MPT_LITE_CUDA:-off} $(PY) -m pip install --quiet --disable-pip-version-check -e ".[bench]" --no-build-isolation

bench: bench-setup
	@$(PY) benchmarks/bench_compare.py $(BENCH_ARGS)

bench-quick: bench-setup
	@$(PY) benchmarks/bench_compare.py --quick $(BENCH_ARGS)

clean:
	rm -rf build mpt_lite/_C*.so
