"""`vllm serve` options of Medha on the synthetic model with every layer made a
sliding-window layer, which vLLM's CPU_ATTN serves and the Medha attention
kernel cannot (test_attention_backend.py and the refused start-up in
conftest.py). Not an fp8 KV cache: vLLM's CPU backend refuses that itself on
hosts without AVX-512 or AMX, so a test built on it failed before Medha ran.

Kept apart from exactness_common.py on purpose: the scripts that tests run in a
subprocess (llm_api_exactness_run.py, ray_pp_run.py, ...) import
exactness_common with only tests/e2e on sys.path, where `benchmarks` is not
importable. Only pytest-collected modules import this one.
"""

from __future__ import annotations

import json

from benchmarks.harness.models import SYNTHETIC_LAYERS

SLIDING_WINDOW_MEDHA = ["--dtype", "float32", "--max-model-len", "2048", "--enforce-eager",
                        "--hf-overrides", json.dumps({"layer_types": ["sliding_attention"] * SYNTHETIC_LAYERS,
                                                      "sliding_window": 256}),
                        "--scheduler", "medha", "--medha-profile", "false"]
