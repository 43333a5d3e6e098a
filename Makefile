# medha-vllm: the two commands a newcomer needs are `make demo` and `make test`.
# Each does its own idempotent set-up (virtual env in .venv, built-in models in
# ~/.cache/medha-vllm, override with MEDHA_CACHE_DIR).
PY := .venv/bin/python
export VLLM_CPU_KVCACHE_SPACE ?= 4
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup models demo test test-all bench-hol bench-hol-async bench-capacity bench-sched bench-predictor bench-kernels bench-attention-kernel bench-attention bench-spp bench-kvp bench-reliability bench-starvation bench clean

setup:
	@bash scripts/setup.sh

models: setup
	@$(PY) -m benchmarks.harness.models

demo: models
	@$(PY) examples/demo.py

# --durations: CI's output lists the slowest tests. 1 GiB of KV cache per
# engine (the tests' engines need far less, and touching 4 GiB costs each of
# the suite's ~30 engine start-ups about 7 s).
test: models
	@VLLM_CPU_KVCACHE_SPACE=1 $(PY) -m pytest -q tests --durations=15

test-all: models
	@$(PY) -m pytest -q -m "" tests

bench-hol: models
	@$(PY) benchmarks/bench_hol.py

# Medha with and without --async-scheduling on the bench-hol workload.
bench-hol-async: models
	@$(PY) benchmarks/bench_hol.py --servers plain,medha,medha-async --output hol_async.json

bench-capacity: models
	@$(PY) benchmarks/bench_capacity.py

bench-sched: setup
	@$(PY) benchmarks/bench_sched.py

bench-predictor: models
	@$(PY) benchmarks/bench_predictor.py

bench-kernels: setup
	@$(PY) benchmarks/bench_kernels.py

bench-attention-kernel: setup
	@$(PY) benchmarks/bench_attention_kernel.py

bench-attention: models
	@$(PY) benchmarks/bench_attention.py

bench-spp: models
	@$(PY) benchmarks/bench_spp.py

bench-kvp: models
	@$(PY) benchmarks/bench_kvp.py

bench-reliability: models
	@$(PY) benchmarks/bench_reliability.py

bench-starvation: models
	@$(PY) benchmarks/bench_reliability.py --cases starvation --output starvation.json

clean:
	rm -rf .venv build *.egg-info
