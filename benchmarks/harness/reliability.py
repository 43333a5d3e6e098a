"""A bad day for a server, case by case (used by tests/e2e/test_reliability.py
and benchmarks/bench_reliability.py). Each case drives a real `vllm serve` on
loopback with bounded request loops and returns its figures as a dict; the
callers decide the sizes and assert. Clients are plain httpx (no vllm import).

- disconnect_storm: streaming clients cancel at random points of their prefill
  or decode; afterwards KV usage is back at its idle value and later requests
  are served.
- kv_exhaustion: a burst several times what the KV cache holds; every request
  completes with the same tokens as when sent alone, by recompute evictions.
- soak: many requests at a fixed rate; nothing lost, resident memory flat.
- worker_death: SIGKILL a worker (or the engine core) mid-run; every in-flight
  client gets an error within a bound and nothing hangs.
- starvation: a long prompt under a continuous stream of short requests at the
  server's measured capacity rate; its TTFT against its length-aware deadline.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import signal
import time
import urllib.request

import httpx
import psutil

from benchmarks.harness.loadgen import http_limits


# ------------------------------------------------------------------ /metrics
def scrape(base_url: str) -> str:
    return urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """Sum of series `name` whose label set contains `labels` (0 if absent)."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", text, re.M):
        if labels in (m.group(1) or ""):
            total += float(m.group(2))
    return total


def num_kv_blocks(text: str) -> int:
    m = re.search(r'vllm:cache_config_info\{[^}]*num_gpu_blocks="(\d+)"', text)
    return int(m.group(1)) if m else 0


def recompute_evictions(text: str) -> float:
    """Requests freed for recompute: Medha's count, or vLLM's own."""
    return max(metric(text, "medha:preemptions_total", 'kind="recompute"'),
               metric(text, "vllm:num_preemptions_total"))


def wait_idle(base_url: str, timeout_s: float = 120.0) -> str:
    """Wait until no request is running or waiting; the last /metrics text."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = scrape(base_url)
        busy = metric(text, "vllm:num_requests_running") + metric(text, "vllm:num_requests_waiting")
        if busy == 0 or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def kv_used_blocks(text: str) -> int:
    return round(metric(text, "vllm:kv_cache_usage_perc") * num_kv_blocks(text))


# ------------------------------------------------------------------ clients
def prompt_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(100, 20000) for _ in range(n)]


async def complete(client: httpx.AsyncClient, base_url: str, model: str, ids: list[int],
                   max_tokens: int, vllm_xargs: dict | None = None) -> list[int]:
    """Greedy completion of token ids; the generated token ids."""
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "return_token_ids": True}
    if vllm_xargs:
        body["vllm_xargs"] = vllm_xargs
    r = await client.post(base_url + "/v1/completions", json=body)
    r.raise_for_status()
    return list(r.json()["choices"][0]["token_ids"])


async def _cancelling_client(client, base_url, model, ids, max_tokens, mode, after, log):
    """Stream one request and disconnect: in prefill (after `after` s, if no
    token came yet) or in decode (after `after` tokens)."""
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True}
    tokens, started = 0, time.monotonic()
    phase = "completed"
    try:
        async with client.stream("POST", base_url + "/v1/completions", json=body) as r:
            lines = r.aiter_lines()
            while True:
                timeout = None if mode == "decode" or tokens else \
                    max(0.0, after - (time.monotonic() - started))
                try:
                    line = await asyncio.wait_for(anext(lines), timeout)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    phase = "prefill"
                    break
                if line.startswith("data: {"):
                    tokens += 1
                    if mode == "decode" and tokens >= after:
                        phase = "decode"
                        break
                    if mode == "prefill":
                        phase = "decode"  # the first token beat the timer
                        break
    except httpx.HTTPError as e:
        phase = f"error: {type(e).__name__}"
    log.append(phase)


def disconnect_storm(base_url: str, model: str, clients: int = 100, seed: int = 0,
                     prompt_range: tuple[int, int] = (32, 1500), max_tokens: int = 24,
                     later_requests: int = 10) -> dict:
    rng = random.Random(seed)
    idle = wait_idle(base_url)
    aborts0 = metric(idle, "medha:aborted_requests_total")
    phases: list[str] = []

    async def run():
        limits = http_limits(max_connections=clients + 4)
        async with httpx.AsyncClient(limits=limits, timeout=300) as client:
            tasks = []
            for i in range(clients):
                ids = prompt_ids(rng, rng.randint(*prompt_range))
                mode = "prefill" if rng.random() < 0.5 else "decode"
                after = rng.uniform(0.05, 3.0) if mode == "prefill" else rng.randint(1, max_tokens - 1)
                tasks.append(_cancelling_client(client, base_url, model, ids, max_tokens, mode,
                                                after, phases))
                await asyncio.sleep(rng.uniform(0.0, 0.05))
            await asyncio.gather(*tasks)
            after_text = wait_idle(base_url)
            later = await asyncio.gather(*(complete(client, base_url, model,
                                                    prompt_ids(rng, 64), 8)
                                           for _ in range(later_requests)),
                                         return_exceptions=True)
            return after_text, later

    after_text, later = asyncio.run(run())
    served = sum(1 for x in later if isinstance(x, list) and len(x) == 8)
    return {
        "clients": clients,
        "cancelled_in_prefill": phases.count("prefill"),
        "cancelled_in_decode": phases.count("decode"),
        "completed_before_cancel": phases.count("completed"),
        "client_errors": sum(1 for p in phases if p.startswith("error")),
        "engine_aborts": metric(after_text, "medha:aborted_requests_total") - aborts0,
        "kv_blocks_idle": kv_used_blocks(idle),
        "kv_blocks_after": kv_used_blocks(after_text),
        "leaked_blocks": kv_used_blocks(after_text) - kv_used_blocks(idle),
        "running_after": metric(after_text, "vllm:num_requests_running"),
        "later_requests": later_requests,
        "later_served": served,
    }


def kv_exhaustion(base_url: str, model: str, load_factor: float = 3.0, prompt_tokens: int = 400,
                  max_tokens: int = 16, seed: int = 0, batch_share: float = 0.75,
                  interactive_after_s: float = 0.3) -> dict:
    """`load_factor` x the tokens the KV cache holds, in two waves: first
    `batch_share` of the requests as batch jobs (a relaxed TTFT deadline of
    600 s in vllm_xargs), then, `interactive_after_s` later, the rest with the
    default deadlines, so that the interactive ones are more urgent than batch
    prefills holding the KV cache (what recompute eviction is for). Then the
    same requests one at a time (unloaded) for the reference outputs."""
    rng = random.Random(seed)
    text0 = wait_idle(base_url)
    blocks = num_kv_blocks(text0)
    block_size = int(re.search(r'vllm:cache_config_info\{[^}]*block_size="(\d+)"', text0).group(1))
    capacity = blocks * block_size
    n = max(2, math.ceil(load_factor * capacity / (prompt_tokens + max_tokens)))
    prompts = [prompt_ids(rng, prompt_tokens) for _ in range(n)]
    n_batch = int(batch_share * n)
    evict0 = recompute_evictions(text0)

    async def run():
        async with httpx.AsyncClient(limits=http_limits(max_connections=n + 4),
                                     timeout=900) as client:

            async def one(i, p):
                if i >= n_batch:
                    await asyncio.sleep(interactive_after_s)
                xargs = {"ttft_deadline_s": 600.0} if i < n_batch else None
                return await complete(client, base_url, model, p, max_tokens, xargs)

            loaded = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)),
                                          return_exceptions=True)
            evictions = recompute_evictions(wait_idle(base_url)) - evict0
            alone = []
            for p in prompts:
                alone.append(await complete(client, base_url, model, p, max_tokens))
            return loaded, evictions, alone

    t0 = time.monotonic()
    loaded, evictions, alone = asyncio.run(run())
    ok = [x for x in loaded if isinstance(x, list)]
    return {
        "kv_capacity_tokens": capacity,
        "requests": n,
        "offered_tokens": n * (prompt_tokens + max_tokens),
        "load_factor": round(n * (prompt_tokens + max_tokens) / capacity, 2),
        "batch_requests": n_batch,
        "lost_requests": n - len(ok),
        "errors": [repr(x)[:200] for x in loaded if not isinstance(x, list)][:5],
        "recompute_evictions": evictions,
        "outputs_identical": all(isinstance(a, list) and a == b for a, b in zip(loaded, alone)),
        "differing_requests": sum(1 for a, b in zip(loaded, alone) if a != b),
        "seconds": round(time.monotonic() - t0, 1),
    }


# ------------------------------------------------------------------ processes
def process_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    total = 0
    for p in process_tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def find_victim(pid: int) -> psutil.Process | None:
    """The process to kill: a worker of the multiprocessing executor if there
    is one, else the engine core (which runs the model with one worker)."""
    procs = process_tree(pid)[1:]

    def named(p, words):
        try:
            text = " ".join([p.name()] + p.cmdline())
        except psutil.Error:
            return False
        return any(w in text for w in words)

    workers = [p for p in procs if named(p, ("VLLM::Worker", "VllmWorker"))]
    if workers:
        return workers[-1]
    cores = [p for p in procs if named(p, ("VLLM::EngineCore", "EngineCore"))]
    return cores[0] if cores else None


def worker_death(base_url: str, model: str, server_proc, clients: int = 6,
                 prompt_tokens: int = 1500, max_tokens: int = 64, bound_s: float = 30.0,
                 seed: int = 0) -> dict:
    """Start `clients` streams, SIGKILL a worker once tokens flow, and time how
    long each in-flight client takes to end (an error, or a cut stream)."""
    rng = random.Random(seed)
    outcome: dict[int, dict] = {}
    killed: dict = {}

    async def one(client, i):
        body = {"model": model, "prompt": prompt_ids(rng, prompt_tokens), "max_tokens": max_tokens,
                "temperature": 0.0, "ignore_eos": True, "stream": True}
        tokens, done_ok, error = 0, False, None
        try:
            async with client.stream("POST", base_url + "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    error = f"HTTP {r.status_code}"
                else:
                    async for line in r.aiter_lines():
                        if line == "data: [DONE]":
                            done_ok = True
                        elif line.startswith("data: {"):
                            chunk = json.loads(line[6:])
                            if "error" in chunk:
                                error = f"error chunk: {str(chunk['error'])[:120]}"
                            else:
                                tokens += 1
        except (httpx.HTTPError, asyncio.TimeoutError) as e:
            error = f"{type(e).__name__}"
        outcome[i] = {"tokens": tokens, "completed": done_ok and error is None and
                      tokens >= max_tokens, "error": error, "ended": time.monotonic()}

    async def killer():
        while not any(v for v in outcome.values()) and time.monotonic() - t0 < 300:
            text = scrape(base_url)
            if metric(text, "vllm:generation_tokens_total") > 0 or \
                    metric(text, "vllm:num_requests_running") >= 1 and time.monotonic() - t0 > 3:
                break
            await asyncio.sleep(0.2)
        victim = find_victim(server_proc.pid)
        if victim is None:
            return
        try:
            title = " ".join(victim.cmdline())[:80] or victim.name()
        except psutil.Error:
            title = "?"
        killed.update(pid=victim.pid, name=title, at=time.monotonic())
        os.kill(victim.pid, signal.SIGKILL)

    async def run():
        timeout = httpx.Timeout(bound_s * 4, connect=10)
        async with httpx.AsyncClient(limits=http_limits(max_connections=clients + 4),
                                     timeout=timeout) as client:
            await asyncio.gather(killer(), *(one(client, i) for i in range(clients)))

    t0 = time.monotonic()
    asyncio.run(run())
    at = killed.get("at", math.nan)
    in_flight = [o for o in outcome.values() if not (o["completed"] and o["ended"] < at)]
    ends = [o["ended"] - at for o in in_flight]
    # The server afterwards: exited (with its code), or still answering.
    exit_code = None
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline and (exit_code := server_proc.poll()) is None:
        time.sleep(0.5)
    healthy = False
    if exit_code is None:
        try:
            healthy = urllib.request.urlopen(base_url + "/health", timeout=5).status == 200
        except OSError:
            healthy = False
    return {
        "killed": killed.get("name"),
        "in_flight_clients": len(in_flight),
        "clients_with_error": sum(1 for o in in_flight if not o["completed"]),
        "max_seconds_to_client_error": round(max(ends), 2) if ends else math.nan,
        "server_exit_code": exit_code,
        "server_healthy_after": healthy and exit_code is None,
    }


def soak(base_url: str, model: str, server_pid: int, items: list, max_s: float,
         sample_every_s: float = 2.0) -> dict:
    """Replay `items` (benchmarks.harness.workload.WorkItem) open-loop,
    cut at `max_s`; sample the server's resident memory (its whole process
    tree) meanwhile. Growth compares the mean of the last quarter of the run
    with the first quarter's."""
    import threading

    from benchmarks.harness.loadgen import percentile, replay

    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sampler():
        while not stop.is_set():
            samples.append((time.monotonic() - t0, tree_rss(server_pid)))
            stop.wait(sample_every_s)

    text0 = scrape(base_url)
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    results = asyncio.run(replay(base_url, model, items, progress=False, stop_after_s=max_s))
    stop.set()
    th.join()
    wall = time.monotonic() - t0
    text1 = wait_idle(base_url, 60)
    lost = [r for r in results if r.error or len(r.token_times) == 0]
    cut = [r for r in lost if (r.error or "").startswith("cut:")]
    q = max(1, len(samples) // 4)
    first = sum(v for _, v in samples[:q]) / q
    last = sum(v for _, v in samples[-q:]) / q
    success = metric(text1, "vllm:request_success_total") - metric(text0, "vllm:request_success_total")
    return {
        "requests": len(items),
        "offered_rate_rps": round(len(items) / max(items[-1].arrival_s, 1e-9), 3),
        "wall_s": round(wall, 1),
        "completed": len(results) - len(lost),
        "lost_requests": len(lost) - len(cut),
        "cut_by_time_bound": len(cut),
        "errors": [f"{r.req_id}: {r.error}" for r in lost if r not in cut][:5],
        "engine_successes": success,
        "ttft_p50_s": round(percentile([r.ttft_s for r in results if r.token_times], 50), 3),
        "ttft_p99_s": round(percentile([r.ttft_s for r in results if r.token_times], 99), 3),
        "rss_first_quarter_mib": round(first / 2**20, 1),
        "rss_last_quarter_mib": round(last / 2**20, 1),
        "rss_growth": round(last / first - 1.0, 4) if first else math.nan,
        "rss_samples": len(samples),
    }


# ------------------------------------------------------------------ starvation
async def _ttft(client, base_url, model, ids, max_tokens, errors: list | None = None) -> float:
    """Seconds to the first streamed token of one greedy request (-1: error,
    described in ``errors`` when given)."""
    body = {"model": model, "prompt": ids, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True}
    t0 = time.monotonic()
    first = -1.0
    try:
        async with client.stream("POST", base_url + "/v1/completions", json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: {") and first < 0:
                    first = time.monotonic() - t0
    except httpx.HTTPError as e:
        first, why = -1.0, f"{type(e).__name__}: {e}"
    else:
        why = f"HTTP {r.status_code}" if r.status_code != 200 else "no token streamed"
    if first < 0 and errors is not None:
        errors.append(why)
    return first


def starvation(base_url: str, model: str, long_tokens: int = 900, short_tokens: int = 64,
               short_max_tokens: int = 8, capacity_burst: int = 32, lead_s: float = 2.0,
               deadline_multiplier: float = 1.5, deadline_floor_s: float = 0.5,
               seed: int = 0) -> dict:
    """1. The long prompt alone: its standalone TTFT T0.
    2. Capacity: `capacity_burst` short requests at once; completions per
       second at saturation.
    3. A Poisson stream of short requests at that rate; `lead_s` later the
       long prompt (other token ids, so no prefix-cache hit), the stream going
       on until it has its first token. Its deadline is Medha's length-aware
       rule on the measured standalone time, max(multiplier x T0, floor)."""
    from benchmarks.harness.loadgen import percentile

    rng = random.Random(seed)

    async def run() -> dict:
        limits = http_limits(max_connections=100, max_keepalive_connections=20)
        async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(600.0)) as client:
            await _ttft(client, base_url, model, prompt_ids(rng, 16), 2)  # warm
            alone = await _ttft(client, base_url, model, prompt_ids(rng, long_tokens), 2)
            t0 = time.monotonic()
            await asyncio.gather(*(complete(client, base_url, model,
                                            prompt_ids(rng, short_tokens), short_max_tokens)
                                   for _ in range(capacity_burst)))
            rate = capacity_burst / (time.monotonic() - t0)
            shorts: list[asyncio.Task] = []
            short_errors: list[str] = []
            done = asyncio.Event()

            async def stream():
                while not done.is_set():
                    shorts.append(asyncio.create_task(_ttft(
                        client, base_url, model, prompt_ids(rng, short_tokens),
                        short_max_tokens, short_errors)))
                    try:
                        await asyncio.wait_for(done.wait(), rng.expovariate(rate))
                    except asyncio.TimeoutError:
                        pass

            feeder = asyncio.create_task(stream())
            await asyncio.sleep(lead_s)
            loaded = await _ttft(client, base_url, model, prompt_ids(rng, long_tokens), 2)
            done.set()
            await feeder
            short_ttfts = await asyncio.gather(*shorts)
        deadline = max(deadline_multiplier * alone, deadline_floor_s)
        ok = [t for t in short_ttfts if t >= 0]
        return {"long_tokens": long_tokens, "long_ttft_alone_s": round(alone, 3),
                "long_deadline_s": round(deadline, 3), "capacity_rps": round(rate, 2),
                "long_ttft_loaded_s": round(loaded, 3),
                "long_ttft_over_deadline": round(loaded / deadline, 3) if loaded >= 0 else math.nan,
                "shorts_during": len(short_ttfts), "short_errors": len(short_ttfts) - len(ok),
                "short_ttft_p50_s": round(percentile(ok, 50), 3),
                "short_ttft_p99_s": round(percentile(ok, 99), 3),
                "short_error_kinds": sorted(set(short_errors))}

    return asyncio.run(run())
