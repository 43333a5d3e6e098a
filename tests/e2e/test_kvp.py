"""KV-cache parallelism end to end, on CPU, float32 greedy (kvp_run.py runs
each engine in a subprocess through the Python API).

- Exactness: Medha with PP = 2 x KVP = 2 (four workers) and 512-token shards
  gives the token ids and log-probabilities of plain vLLM for prompts that
  cross group boundaries, decodes long after the second group was onboarded,
  and a mixed batch of long and short requests, with 32-token chunks, pauses
  and recompute evictions forced by a small KV cache per worker.
- Ray: PP = 2 x KVP = 2 with --distributed-executor-backend ray on a Ray
  cluster of two nodes on loopback, one KVP group (two stages) on each node.
- Capacity: at the same KV memory per worker (40 blocks of 32 tokens), a
  2,048-token --max-model-len that one worker cannot hold is refused at
  start-up without KVP and served with KVP = 2.
The server path (`vllm serve --medha-kv-parallel-size 2`) is in
test_exactness.py, against the same plain vLLM reference as the rest.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from exactness_common import assert_same

pytestmark = pytest.mark.e2e
SCRIPT = Path(__file__).with_name("kvp_run.py")

# Three prompts cross the 512-token boundary (950, 700, 600 tokens), three
# stay in the first group; 40 output tokens each (all runs).
MIXED = [950, 37, 700, 400, 5, 600]
LONG = [2000]


def run(model: str, spec: dict, check: bool = True) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, str(SCRIPT), model, json.dumps(spec)],
                          capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    # Ray prints its actors' log lines on the driver's stdout or stderr.
    return proc.returncode, json.loads(line[len("RESULT "):]) if line else None, \
        proc.stderr + proc.stdout


@pytest.fixture(scope="module")
def runs(synthetic_path):
    """Plain vLLM (ample KV cache), Medha PP 2 x KVP 2, and the capacity pair,
    two at a time (engine start-up is mostly single-threaded)."""
    specs = {
        # One plain engine for every reference: the mixed batch, then the long
        # prompt alone, as the runs below (its max_model_len changes no output).
        "plain": {"plain": True, "max_model_len": 2048, "prompts": [MIXED, LONG], "max_tokens": 40},
        # 24 blocks a worker: 23 usable = 736 tokens a group, so the first
        # group cannot hold the first 512 tokens of every request at once.
        "pp2_kvp2": {"kvp": 2, "pp": 2, "shard": 512, "blocks": 24, "max_model_len": 1024,
                     "prompts": MIXED, "max_tokens": 40},
        # The same on Ray: a cluster of two nodes (two CPUs each) on
        # loopback, one KVP group (two pipeline stages) per node.
        "ray_pp2_kvp2": {"kvp": 2, "pp": 2, "shard": 512, "blocks": 24, "max_model_len": 1024,
                         "prompts": MIXED, "max_tokens": 40, "ray_nodes": 2},
        "kvp1_small": {"kvp": 1, "blocks": 40, "max_model_len": 2048, "prompts": LONG,
                       "max_tokens": 40},
        "kvp2_small": {"kvp": 2, "blocks": 40, "max_model_len": 2048, "prompts": LONG,
                       "max_tokens": 40},
    }
    with ThreadPoolExecutor(2) as pool:
        futs = {k: pool.submit(run, synthetic_path, v, k != "kvp1_small") for k, v in specs.items()}
        return {k: f.result() for k, f in futs.items()}


def test_pp2_kvp2_equals_plain_vllm(runs):
    _, plain, _ = runs["plain"]
    _, kvp, _ = runs["pp2_kvp2"]
    assert_same(plain["outputs"][:len(MIXED)], kvp["outputs"])
    e = kvp["engine"]
    assert e["scheduler_cls"] == "medha_vllm.scheduler.MedhaScheduler"
    assert e["executor_cls"] == "KVPExecutor"
    assert (e["kvp_groups"], e["shard_tokens"], e["blocks_per_group"]) == (2, 512, 24)
    # Finished requests by groups spanned (buckets 1, 2, 4, ...): the three
    # short ones in one group, the three long ones in two.
    assert e["groups_per_request"][:2] == [3, 3], e
    assert e["pauses"] > 0, "no prefill was paused between chunks"
    assert e["recomputes"] > 0, "no request was freed for recompute"


def test_kvp2_serves_a_context_one_worker_cannot_hold(runs):
    rc, _, err = runs["kvp1_small"]
    assert rc != 0, "2,048 tokens must not fit 40 blocks x 32 tokens of one worker"
    assert "max_model_len" in err or "max model len" in err.lower(), err[-3000:]
    _, plain, _ = runs["plain"]
    _, kvp, _ = runs["kvp2_small"]
    assert_same(plain["outputs"][len(MIXED):], kvp["outputs"])
    e = kvp["engine"]
    # 40 blocks a worker, the scheduler's pool holds both groups'; the
    # default shard is one worker's usable cache (39 x 32 tokens).
    assert (e["scheduler_blocks"], e["blocks_per_group"], e["shard_tokens"]) == (80, 40, 1248)
    assert e["groups_per_request"][:2] == [0, 1], e


@pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                    reason="ray is not installed (scripts/setup.sh installs it with the test extra)")
def test_pp2_kvp2_on_a_two_node_ray_cluster_equals_plain_vllm(runs):
    _, plain, _ = runs["plain"]
    _, kvp, err = runs["ray_pp2_kvp2"]
    assert_same(plain["outputs"][:len(MIXED)], kvp["outputs"])
    e = kvp["engine"]
    assert e["executor_cls"] == "KVPRayExecutor" and e["kvp_groups"] == 2
    assert len(e["nodes"]) == 2
    workers = sorted(e["workers"], key=lambda w: w["rank"])
    assert [w["group"] for w in workers] == [0, 0, 1, 1] and all(w["actor"] for w in workers)
    # Each KVP group (both its stages) on its own Ray node, and the log says where.
    node_of = {g: {w["node"] for w in workers if w["group"] == g} for g in (0, 1)}
    assert all(len(n) == 1 for n in node_of.values()) and node_of[0] != node_of[1], e
    for w in workers:
        assert f"rank {w['rank']} is KV-cache parallel group {w['group']} of 2 (pp {w['rank'] % 2}, " \
               f"tp 0) on Ray node {w['node'][:12]}" in err, err[-3000:]
    assert e["groups_per_request"][:2] == [3, 3], e
