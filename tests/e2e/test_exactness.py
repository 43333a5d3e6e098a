"""Exactness: Medha changes the schedule, never the math. Greedy token ids
and their log-probabilities through Medha (chunks forced small, preemptions
happening) equal those of plain vLLM, in float32.

Tolerance: token ids must be identical. Log-probabilities may differ by float
reduction order only (chunked prefill sums attention over the context in other
blocks than one-shot prefill), so they must agree to 2e-4 absolute.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from exactness_common import assert_same, words

from medha_vllm.launch import VllmServer

pytestmark = pytest.mark.e2e
MODEL = "smollm2"


# Mixed batch: long prompts (many chunks) and short ones, sent together.
PROMPTS = [words(i, n) for i, n in enumerate([300, 12, 150, 30, 400, 5, 90, 200])]


async def run_all(base_url: str) -> list[dict]:
    """Long prompts first; 2 s later the short ones, with tight per-request
    TTFT deadlines (vllm_xargs; plain vLLM ignores them), so that under Medha
    they outrank the long prefills that hold the KV cache."""
    client = AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)

    async def one(p):
        short = len(p) < 1000
        if short:
            await asyncio.sleep(2.0)
        r = await client.completions.create(
            model=MODEL, prompt=p, max_tokens=16, temperature=0, logprobs=1, seed=0,
            extra_body={"vllm_xargs": {"ttft_deadline_s": 0.05 if short else 600.0}})
        lp = r.choices[0].logprobs
        return {"tokens": lp.tokens, "logprobs": lp.token_logprobs}

    return await asyncio.gather(*(one(p) for p in PROMPTS))


def test_server_exactness_with_small_chunks_and_preemption(smollm2_path, tmp_path):
    common = ["--dtype", "float32", "--max-model-len", "1760", "--seed", "0"]
    with VllmServer(smollm2_path, common, served_name=MODEL,
                    log_path=str(tmp_path / "plain.log")) as plain:
        ref = asyncio.run(run_all(plain.base_url))
    # Medha: 32-token chunks, a budget that fits a few chunks per iteration
    # (so LARS pauses the other prefills between chunks; no profile, so the
    # generic predictor: ~8 ms a chunk), and a KV cache too small for the
    # prefills that progress together (56 blocks x 32 = 1,792 tokens for
    # ~4,700 tokens of prompts), so some requests are evicted and recomputed.
    medha_args = common + [
        "--scheduler", "medha", "--medha-min-chunk-size", "32", "--medha-max-chunk-size", "32",
        "--medha-target-batch-time-s", "0.03",
        "--medha-profile", "false", "--block-size", "32", "--num-gpu-blocks-override", "56"]
    with VllmServer(smollm2_path, medha_args, served_name=MODEL,
                    log_path=str(tmp_path / "medha.log")) as medha:
        got = asyncio.run(run_all(medha.base_url))
        time.sleep(1.5)  # metrics snapshots are published about once a second
        text = urllib.request.urlopen(medha.base_url + "/metrics").read().decode()
    assert_same(ref, got)
    def count(kind):
        return float(re.search(rf'medha:preemptions_total{{engine="0",kind="{kind}"}} (\S+)', text).group(1))

    assert count("pause") > 0, "no request was paused between chunks"
    assert count("recompute") > 0, "no request was evicted and recomputed"


def test_python_api_exactness_long_prompts(synthetic_path):
    script = Path(__file__).with_name("llm_api_exactness_run.py")
    results = {}
    for which in ("plain", "medha"):
        out = subprocess.run([sys.executable, str(script), synthetic_path, which],
                             capture_output=True, text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
        line = next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))
        results[which] = json.loads(line[len("RESULT "):])
    assert_same(results["plain"], results["medha"])
