"""`vllm serve MODEL --scheduler medha` on loopback, driven by real clients:
the OpenAI Python SDK (streaming and not), `vllm bench serve`, Prometheus
`/metrics` and the Grafana dashboard's queries against it, a client that
disconnects mid-prefill, a prompt that is too long, invalid per-request
deadlines refused at the door."""

from __future__ import annotations

import json
import math
import re
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from openai import BadRequestError, OpenAI

from exactness_common import metric_sum as gauge

from benchmarks.harness.launch import VllmServer, vllm_executable

pytestmark = pytest.mark.e2e
MODEL = "smollm2"


@pytest.fixture(scope="module")
def server(smollm2_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("logs") / "medha-server.log"
    # A profile directory of its own: this server always profiles at start-up
    # (test_ready_means_the_profile_is_done).
    profile_dir = str(tmp_path_factory.mktemp("fresh-profiles"))
    srv = VllmServer(smollm2_path, [
        # Eager: compilation is not this module's subject (make demo serves compiled).
        "--scheduler", "medha", "--dtype", "float32", "--max-model-len", "4096", "--enforce-eager",
        "--medha-profile-dir", profile_dir, "--medha-profile-max-context", "2048",
        # 15 s of profiling, not the default 45: the profile must be done before
        # the server is ready (tested below), not be a fine one.
        "--medha-profile-time-budget-s", "15",
        # The budget pinned: a derived one follows each fresh (noisy) profile,
        # and with a 2 s solo budget the disconnect test's prefill can end
        # between two /metrics polls.
        "--medha-target-batch-time-s", "0.15",
    ], served_name=MODEL, log_path=str(log))
    with srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.base_url + "/v1", api_key="none", max_retries=0)


def metrics(server) -> str:
    return urllib.request.urlopen(server.base_url + "/metrics", timeout=10).read().decode()


def ttft(client, prompt: str) -> float:
    t0 = time.perf_counter()
    stream = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0,
                                       stream=True)
    first = None
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].text:
            first = time.perf_counter() - t0
    assert first is not None
    return first


def test_ready_means_the_profile_is_done(server, client):
    # First in this module: the server has just answered /v1/models, with no
    # profile cached. The first request is served as fast as later ones, not
    # queued behind the start-up profile.
    # ~600 tokens, each prompt with its own first word (no prefix-cache hit).
    def prompt(k):
        return f"r{k} " + " ".join(f"w{i}" for i in range(300))

    first = ttft(client, prompt(0))
    idle = sorted(ttft(client, prompt(k)) for k in (1, 2, 3))[1]
    assert first <= 2 * idle, f"first request TTFT {first:.3f} s vs idle {idle:.3f} s"
    log = Path(server.log_path).read_text()
    assert "Medha: profiling before the engine reports ready" in log, log[-3000:]
    done = log.index("Medha: start-up profile done")
    # The profile ran (and was saved) before the API server started listening.
    assert log.index("Medha: profiled ") < done < log.index("Starting vLLM server on"), log[-3000:]


def test_chat_answer_from_real_model(client):
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24, temperature=0)
    assert "Paris" in r.choices[0].message.content


def test_streaming_completion(client):
    chunks = list(client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=12,
                                            temperature=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert len(chunks) >= 2 and text.strip()
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")


def test_per_request_slo_fields_and_priority(client):
    r = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0,
                                  extra_body={"vllm_xargs": {"ttft_deadline_s": 30, "tbt_deadline_s": 5},
                                              "priority": 1})
    assert r.choices[0].text is not None and r.usage.completion_tokens == 4


@pytest.mark.parametrize("field,value", [
    ("ttft_deadline_s", -1), ("ttft_deadline_s", 0), ("ttft_deadline_s", "soon"),
    ("ttft_deadline_s", math.nan), ("ttft_deadline_s", math.inf), ("tbt_deadline_s", -0.5),
    ("tbt_deadline_s", "fast")])
def test_invalid_deadline_is_http_400_naming_the_field(server, field, value):
    # Raw JSON (Python's json writes NaN and Infinity, which the server parses).
    body = json.dumps({"model": MODEL, "prompt": "Hello", "max_tokens": 2,
                       "vllm_xargs": {field: value}})
    r = httpx.post(server.base_url + "/v1/completions", content=body,
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    assert f"vllm_xargs.{field}" in r.json()["error"]["message"], r.text
    # Refused at the door: the engine's own check (which would log and serve
    # the request with the default deadline) never saw it.
    assert f"vllm_xargs {field}=" not in Path(server.log_path).read_text()


def test_tiny_client_deadline_is_raised_to_the_floor(server, client):
    text = metrics(server)
    before = gauge(text, "medha:floored_deadlines_total")
    r = client.completions.create(model=MODEL, prompt="Hello there", max_tokens=2, temperature=0,
                                  extra_body={"vllm_xargs": {"ttft_deadline_s": 0.001}})
    assert r.usage.completion_tokens == 2
    deadline = time.time() + 10
    while time.time() < deadline and gauge(metrics(server), "medha:floored_deadlines_total") == before:
        time.sleep(0.3)
    assert gauge(metrics(server), "medha:floored_deadlines_total") == before + 1


def test_grafana_dashboard_queries_name_live_series(server, client):
    client.completions.create(model=MODEL, prompt="Count: " * 50, max_tokens=4, temperature=0)
    time.sleep(1.5)
    text = metrics(server)
    dash = json.loads((Path(__file__).parents[2] / "examples/observability/medha-grafana.json")
                      .read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    names = {m for e in exprs for m in re.findall(r"\b((?:medha|vllm):[A-Za-z0-9_:]+)", e)}
    assert {n for n in names if n.startswith("medha:")} >= {
        "medha:chunk_size_tokens_bucket", "medha:relative_slack_bucket",
        "medha:deadline_misses_total", "medha:preemptions_total", "medha:predictor_error_ratio",
        "medha:iteration_time_seconds_bucket", "medha:target_batch_time_seconds",
        "medha:overlapped_batches_total"}
    missing = [n for n in sorted(names) if not re.search(rf"^{re.escape(n)}[{{ ]", text, re.M)]
    assert not missing, f"dashboard queries series absent from /metrics: {missing}"


def test_metrics_has_medha_and_vllm_series(server, client):
    client.completions.create(model=MODEL, prompt="Count: " * 200, max_tokens=4, temperature=0)
    time.sleep(1.5)  # snapshots are published about once a second
    text = metrics(server)
    # (Prometheus omits _count/_sum of histograms with negative buckets.)
    for name in ("medha:chunk_size_tokens_count", "medha:relative_slack_bucket",
                 "medha:iteration_time_seconds_count", "medha:preemptions_total",
                 "medha:deadline_misses_total", "medha:predictor_error_ratio",
                 "medha:target_batch_time_seconds", "medha:aborted_requests_total",
                 "medha:first_token_yields_total", "vllm:time_to_first_token_seconds_count"):
        assert name in text, name
    assert gauge(text, "medha:chunk_size_tokens_count") >= 1
    # The budget exported is the one the scheduler derived from this host's
    # profile and logged (policy/budget.py; 0.15 s at the least on CPU).
    logged = re.findall(r"Medha: iteration budget (\S+) s", Path(server.log_path).read_text())
    assert logged, "no budget line in the server log"
    assert gauge(text, "medha:target_batch_time_seconds") == pytest.approx(float(logged[-1]), abs=1e-3)
    assert float(logged[-1]) >= 0.15


def test_prompt_too_long_is_rejected_and_server_keeps_serving(client):
    with pytest.raises(BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="word " * 6000, max_tokens=4)
    assert "maximum context length" in str(e.value) or "too long" in str(e.value).lower()
    r = client.completions.create(model=MODEL, prompt="Still there?", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3


def abort_count(text: str) -> float:
    """Aborts the engine's scheduler processed (vLLM counts none for client aborts)."""
    return gauge(text, "medha:aborted_requests_total")


def test_disconnect_mid_prefill_frees_kv_blocks(server):
    # ~3,500 prompt tokens: several seconds of chunked prefill on 2 cores.
    body = {"model": MODEL, "prompt": " ".join(f"w{i}" for i in range(900)), "max_tokens": 50,
            "stream": True}
    before = metrics(server)
    aborts0 = abort_count(before)
    outcome: dict = {}

    def stream():
        try:
            with httpx.stream("POST", server.base_url + "/v1/completions", json=body,
                              timeout=httpx.Timeout(10.0, read=2.0)) as r:
                for line in r.iter_lines():
                    outcome.setdefault("lines", []).append(line)
        except httpx.ReadTimeout as e:
            outcome["error"] = e  # the client gives up during prefill and closes

    t = threading.Thread(target=stream)
    t.start()
    # Wait until the request holds KV blocks, i.e. its prefill is under way.
    deadline = time.time() + 30
    seen_kv = False
    while time.time() < deadline and not seen_kv:
        seen_kv = gauge(metrics(server), "vllm:kv_cache_usage_perc") > 0
        time.sleep(0.2)
    t.join()
    assert seen_kv, "the long request never held KV blocks"
    assert isinstance(outcome.get("error"), httpx.ReadTimeout), outcome
    assert not any(l.startswith("data:") for l in outcome.get("lines", [])), \
        "a token arrived before the client disconnected: not a mid-prefill disconnect"
    # The abort reached the engine (vLLM counts the request as finished by
    # abort), and every block came back.
    deadline = time.time() + 30
    while time.time() < deadline:
        text = metrics(server)
        if abort_count(text) > aborts0 and gauge(text, "vllm:num_requests_running") == 0 \
                and gauge(text, "vllm:kv_cache_usage_perc") == 0:
            break
        time.sleep(0.5)
    assert abort_count(text) == aborts0 + 1
    assert gauge(text, "vllm:num_requests_running") == 0
    assert gauge(text, "vllm:kv_cache_usage_perc") == 0


def test_vllm_bench_serve_against_medha(server, smollm2_path, tmp_path):
    cmd = [vllm_executable(), "bench", "serve", "--backend", "openai", "--base-url", server.base_url,
           "--model", MODEL, "--tokenizer", smollm2_path, "--dataset-name", "random",
           "--random-input-len", "64", "--random-output-len", "8", "--num-prompts", "8",
           "--request-rate", "inf", "--seed", "0", "--save-result", "--result-dir", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    m = re.search(r"Successful requests:\s+(\d+)", out.stdout)
    assert m and int(m.group(1)) == 8, out.stdout[-2000:]
    assert list(tmp_path.glob("*.json"))
