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

from benchmarks.harness.launch import VllmServer

pytestmark = pytest.mark.e2e
MODEL = "smollm2"


# Mixed batch: four long prompts (600-1,600 tokens, many chunks) at once, and
# eight short ones arriving one by one while the long ones are prefilled.
LONG = [300, 150, 400, 200]
SHORT = [12, 30, 5, 90, 20, 8, 45, 60]
PROMPTS = [words(i, n) for i, n in enumerate(LONG + SHORT)]


async def run_all(base_url: str) -> list[dict]:
    """Long prompts first; from 0.4 s on, a short one every 0.4 s, each with
    a tight per-request TTFT deadline (vllm_xargs; plain vLLM ignores them),
    so that under Medha it outranks the long prefill that holds the KV cache:
    that prefill is paused (KV kept) when the short one fits beside it, and
    freed for recompute when it does not."""
    client = AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)

    async def one(i, p):
        short = i >= len(LONG)
        if short:
            await asyncio.sleep(0.4 * (i - len(LONG) + 1))
        r = await client.completions.create(
            model=MODEL, prompt=p, max_tokens=16, temperature=0, logprobs=1, seed=0,
            extra_body={"vllm_xargs": {"ttft_deadline_s": 0.05 if short else 600.0},
                        "return_tokens_as_token_ids": True})
        lp = r.choices[0].logprobs
        # Tokens come back as "token_id:<id>": compare ids, not strings.
        return {"tokens": [int(t.split(":", 1)[1]) for t in lp.tokens],
                "logprobs": lp.token_logprobs}

    return await asyncio.gather(*(one(i, p) for i, p in enumerate(PROMPTS)))


# Eager on both sides: compilation is not this test's subject, and a compile
# per server costs minutes on 2 cores.
COMMON = ["--dtype", "float32", "--max-model-len", "1760", "--seed", "0", "--enforce-eager"]
# Medha: 32-token chunks, at most 64 tokens an iteration (so at most two
# prefills progress at once and LARS pauses the others between chunks; the
# 0.2 s budget never binds first, so this holds whatever the predictor
# learns), and a KV cache too small for the prefills that progress together
# (56 blocks x 32 = 1,792 tokens for ~3,760 tokens of long prompts), so
# requests are freed and recomputed.
MEDHA_ARGS = COMMON + [
    "--scheduler", "medha", "--medha-min-chunk-size", "32", "--medha-max-chunk-size", "32",
    "--medha-target-batch-time-s", "0.2", "--max-num-batched-tokens", "64",
    "--medha-profile", "false", "--block-size", "32", "--num-gpu-blocks-override", "56",
    "--medha-attention-backend", "medha"]


@pytest.fixture(scope="module")
def plain_reference(smollm2_path, tmp_path_factory):
    """Plain vLLM (its own scheduler, synchronous on CPU) on the workload."""
    log = tmp_path_factory.mktemp("plain") / "plain.log"
    with VllmServer(smollm2_path, COMMON, served_name=MODEL, log_path=str(log)) as plain:
        ref = asyncio.run(run_all(plain.base_url))
    assert "medha: attention on Medha" not in log.read_text()
    return ref


def run_medha(smollm2_path, log_path: Path, extra: list[str],
              args: list[str] = MEDHA_ARGS) -> tuple[list[dict], str]:
    with VllmServer(smollm2_path, args + extra, served_name=MODEL,
                    log_path=str(log_path)) as medha:
        got = asyncio.run(run_all(medha.base_url))
        time.sleep(1.5)  # metrics snapshots are published about once a second
        text = urllib.request.urlopen(medha.base_url + "/metrics").read().decode()
    return got, text


def counter(text: str, name: str, kind: str | None = None) -> float:
    labels = 'engine="0"' + (f',kind="{kind}"' if kind else "")
    return float(re.search(rf'medha:{name}_total{{{labels}}} (\S+)', text).group(1))


def test_server_exactness_with_small_chunks_and_preemption(smollm2_path, plain_reference,
                                                           tmp_path):
    got, text = run_medha(smollm2_path, tmp_path / "medha.log", [])
    assert_same(plain_reference, got)
    # Medha's attention kernel served this engine (the worker says so at start-up).
    log = (tmp_path / "medha.log").read_text()
    assert "medha: attention on Medha's native KV-split kernel" in log, log[-3000:]
    assert counter(text, "preemptions", "pause") > 0, "no request was paused between chunks"
    assert counter(text, "preemptions", "recompute") > 0, "no request was evicted and recomputed"
    # Synchronous on CPU: no batch is dispatched while another is in flight.
    assert counter(text, "overlapped_batches") == 0


def test_server_exactness_with_async_scheduling(smollm2_path, plain_reference, tmp_path):
    """`--async-scheduling` (vLLM's default on CUDA): Medha schedules the next
    batch while one runs (MedhaAsyncScheduler on vLLM's AsyncScheduler), with
    the same chunks, pauses and evictions as above, and changes no token."""
    got, text = run_medha(smollm2_path, tmp_path / "medha.log", ["--async-scheduling"])
    assert_same(plain_reference, got)
    log = (tmp_path / "medha.log").read_text()
    assert "medha: async scheduling kept on CPU" in log, log[-3000:]
    assert re.search(r"Medha scheduler: .* async scheduling True", log), log[-3000:]
    assert "medha: attention on Medha's native KV-split kernel" in log, log[-3000:]
    assert counter(text, "overlapped_batches") > 0, "no batch overlapped the one in flight"
    assert counter(text, "preemptions", "pause") > 0, "no request was paused between chunks"
    assert counter(text, "preemptions", "recompute") > 0, "no request was evicted and recomputed"


def test_server_exactness_with_kv_parallelism(smollm2_path, plain_reference, tmp_path):
    """`vllm serve --scheduler medha --medha-kv-parallel-size 2`: two worker
    groups of 29 blocks each (the KV memory above, split in two), 896-token
    shards, so the long prompts' KV spans both groups, with the same 32-token
    chunks, pauses and evictions as above: the same tokens as plain vLLM."""
    args = [a if a != "56" else "29" for a in MEDHA_ARGS]  # blocks per worker
    got, text = run_medha(smollm2_path, tmp_path / "medha.log", [
        "--medha-kv-parallel-size", "2", "--medha-kvp-max-tokens-per-group", "896"], args=args)
    assert_same(plain_reference, got)
    log = (tmp_path / "medha.log").read_text()
    assert "Medha KVP: 2 KV-cache parallel groups of 29 blocks x 32 tokens" in log, log[-3000:]
    assert "KV-cache parallelism (2 groups): the native kernel serves every step" in log, log[-3000:]
    # Finished requests by groups spanned: some used the second group.
    spans = {m.group(1): float(m.group(2)) for m in re.finditer(
        r'^medha:kvp_groups_per_request_bucket{engine="0",le="(\S+)"} (\S+)$', text, re.M)}
    assert spans["1"] < spans["2"] == len(PROMPTS), spans
    merges = [float(v) for v in re.findall(r'^medha:kvp_merges_total{[^}]*} (\S+)$', text, re.M)]
    assert len(merges) == 2 and min(merges) > 0, text[-2000:]
    assert counter(text, "preemptions", "pause") > 0, "no request was paused between chunks"
    assert counter(text, "preemptions", "recompute") > 0, "no request was evicted and recomputed"


def test_python_api_exactness_long_prompts(synthetic_path):
    script = Path(__file__).with_name("llm_api_exactness_run.py")
    results = {}
    # Both engines at once: their start-up is mostly single-threaded imports.
    procs = {which: subprocess.Popen([sys.executable, str(script), synthetic_path, which],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for which in ("plain", "medha")}
    for which, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, stderr[-3000:]
        line = next(l for l in stdout.splitlines() if l.startswith("RESULT "))
        results[which] = json.loads(line[len("RESULT "):])
    assert_same(results["plain"]["outputs"], results["medha"]["outputs"])
    # The engines really ran the schedulers and kernels asked for, and Medha
    # chunked: 23,942 prompt tokens in chunks of at most 32 tokens, every
    # attention call of it on the native kernel, none of plain vLLM's.
    plain = results["plain"]["engine"]
    assert plain["scheduler_cls"] == "vllm.v1.core.sched.scheduler.Scheduler"
    assert plain["attention_calls"].get("medha", 0) == 0 and plain["attention_calls"]["vllm"] > 0, plain
    medha = results["medha"]["engine"]
    assert medha["scheduler_cls"] == "medha_vllm.scheduler.MedhaScheduler"
    assert medha["medha_chunks"] >= 23_942 // 32, medha
    # The 15,000-token prompt alone takes one iteration per 32-token chunk,
    # each a forward call of each of the 4 layers.
    assert medha["attention_calls"]["medha"] >= 4 * (15_000 // 32), medha
    assert medha["attention_calls"].get("vllm", 0) == 0, medha
