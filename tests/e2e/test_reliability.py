"""A bad day, short cases (benchmarks/harness/reliability.py; the long
versions and the soak are `make bench-reliability`): `vllm serve --scheduler
medha` on loopback with a small KV cache, float32.

- KV exhaustion: 3x what the KV cache holds (batch jobs, then interactive
  requests that are more urgent); nothing lost, recompute
  evictions happened, every output equal to the request's output alone.
- Disconnect storm: 100 streaming clients cancel at random points of their
  prefill or decode; no KV block leaks, later requests are served.
- Starvation: a 900-token prompt under a stream at the measured capacity rate
  gets its first token within 3 x its deadline.
- Worker death: SIGKILL a model worker process mid-run (the one worker, or
  the last pipeline stage's with `-pp 2`); every in-flight client gets an
  error within 30 s and the server exits non-zero.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.harness import reliability as rel
from benchmarks.harness.launch import VllmServer

pytestmark = pytest.mark.e2e
MODEL = "smollm2"
# 48 blocks x 32 tokens = 1,536 tokens of KV cache.
SMALL_KV = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0",
            "--block-size", "32", "--num-gpu-blocks-override", "48", "--scheduler", "medha",
            "--medha-profile", "false", "--medha-target-batch-time-s", "0.15"]


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("reliability") / "server.log"
    with VllmServer(smollm2_path, SMALL_KV, served_name=MODEL, log_path=str(log)) as srv:
        yield srv


def test_kv_exhaustion_loses_nothing_and_changes_no_output(server):
    r = rel.kv_exhaustion(server.base_url, MODEL, load_factor=3.0, prompt_tokens=400,
                          max_tokens=16)
    assert r["kv_capacity_tokens"] == 1536 and r["load_factor"] >= 3.0, r
    assert r["lost_requests"] == 0, r
    assert r["recompute_evictions"] > 0, r
    assert r["outputs_identical"], r


def test_disconnect_storm_leaks_no_block(server):
    r = rel.disconnect_storm(server.base_url, MODEL, clients=50, prompt_range=(32, 900),
                             max_tokens=24)
    # Both kinds of cancellation happened, and the engine saw the aborts.
    assert r["cancelled_in_prefill"] >= 10 and r["cancelled_in_decode"] >= 10, r
    assert r["engine_aborts"] >= r["cancelled_in_prefill"], r
    assert r["leaked_blocks"] == 0 and r["kv_blocks_after"] == r["kv_blocks_idle"], r
    assert r["running_after"] == 0, r
    assert r["later_served"] == r["later_requests"], r


def test_a_prompt_under_a_stream_at_capacity_is_not_starved(server):
    """A 900-token prompt under a Poisson stream of 64-token requests at the
    capacity rate measured on this server (a burst of 32 at once). Bound:
    3 x its length-aware deadline (1.5 x its standalone TTFT), that is the
    default starvation guard (2 deadlines) plus its own prefill (2/3 of a
    deadline) and the requests that started starving before it. Plain LARS
    (`--medha-starvation-guard 0`) took 7.4 deadlines in `make bench-starvation`."""
    r = rel.starvation(server.base_url, MODEL, long_tokens=900, short_tokens=64,
                       short_max_tokens=8)
    assert r["shorts_during"] >= 5 and r["short_errors"] == 0, r
    assert 0 < r["long_ttft_over_deadline"] <= 3.0, r


def assert_clients_failed_fast(r: dict) -> None:
    """A model worker was killed; every in-flight client got an error within
    30 s; the server exited non-zero (nothing hangs)."""
    assert r["killed"] and "Worker" in r["killed"], r
    assert r["in_flight_clients"] >= 1 and r["clients_with_error"] == r["in_flight_clients"], r
    assert r["max_seconds_to_client_error"] <= 30.0, r
    assert r["server_exit_code"] not in (None, 0), r


def test_worker_death_fails_clients_fast(server):
    # Last in the module: it kills the server.
    r = rel.worker_death(server.base_url, MODEL, server.proc, clients=6, prompt_tokens=600,
                         max_tokens=64, bound_s=30.0)
    assert_clients_failed_fast(r)


def test_pipeline_worker_death_fails_clients_fast(smollm2_path, tmp_path):
    args = [a for a in SMALL_KV if a not in ("--num-gpu-blocks-override", "48")] + ["-pp", "2"]
    srv = VllmServer(smollm2_path, args, served_name=MODEL, log_path=str(tmp_path / "pp2.log"))
    # No VLLM_CPU_OMP_THREADS_BIND: patches/parallel_layout.py places the workers.
    srv.env = {k: v for k, v in srv.env.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}
    srv.env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    with srv:
        r = rel.worker_death(srv.base_url, MODEL, srv.proc, clients=6, prompt_tokens=600,
                             max_tokens=64, bound_s=30.0)
    assert_clients_failed_fast(r)
