"""A light open-loop load client for an OpenAI-compatible server.

One process, asyncio + httpx streaming (the machine has 2 cores shared with
the server: the client must stay light). Records, per request, the arrival,
the first-token time and every later token's time, and the generated text.
Pure Python apart from httpx: no vllm import.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from benchmarks.harness.workload import WorkItem

# NOTE(medha): a client must drop an idle keep-alive connection before the
# server does. uvicorn under `vllm serve` closes one after
# VLLM_HTTP_TIMEOUT_KEEP_ALIVE (5 s), and httpx keeps one for 5 s by default.
# With equal timeouts a request sent on a connection the server is closing at
# that moment fails in the client with "Server disconnected without sending
# a response" and never reaches the server (once in a clean-clone test run:
# one request of 17 "failed" while the server logged every request 200).
KEEPALIVE_EXPIRY_S = 2.0


def http_limits(**limits) -> httpx.Limits:
    """``httpx.Limits(**limits)`` with the keep-alive expiry above; every harness client uses it."""
    return httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S, **limits)


@dataclass
class RequestResult:
    req_id: str
    kind: str
    arrival_s: float
    prompt_tokens: int
    token_times: list[float] = field(default_factory=list)  # absolute, per streamed token
    text: str = ""
    error: str | None = None

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.arrival_s if self.token_times else math.nan

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.token_times, self.token_times[1:])]


async def _one(client: httpx.AsyncClient, url: str, model: str, item: WorkItem, start: float,
               extra: dict, res: RequestResult, timeout_s: float,
               deadlines: Callable[[WorkItem], tuple[float, float]] | None) -> None:
    await asyncio.sleep(max(0.0, start + item.arrival_s - time.monotonic()))
    res.arrival_s = time.monotonic() - start
    body = {"model": model, "prompt": item.prompt_token_ids, "max_tokens": item.output_tokens,
            "temperature": 0.0, "stream": True, "ignore_eos": True, **extra}
    first_s, tbt_s = deadlines(item) if deadlines else (math.inf, math.inf)
    due = res.arrival_s + first_s  # the next token's deadline (slack carried forward)
    try:
        async with client.stream("POST", url, json=body, timeout=timeout_s) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:300]!r}"
                return
            lines = r.aiter_lines()
            while True:
                wait = due - (time.monotonic() - start)
                try:
                    line = await (asyncio.wait_for(anext(lines), max(0.0, wait))
                                  if math.isfinite(wait) else anext(lines))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    # Missed for certain: stop waiting (the server aborts it).
                    res.error = f"missed: token {len(res.token_times)} not there at its deadline"
                    return
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                now = time.monotonic() - start
                chunk = json.loads(line[6:])
                text = "".join(c.get("text", "") for c in chunk.get("choices", []))
                if text or chunk.get("choices"):
                    if now > due:
                        res.error = f"missed: token {len(res.token_times)} {now - due:.2f} s late"
                        return
                    res.token_times.append(now)
                    res.text += text
                    due += tbt_s
    except (httpx.HTTPError, asyncio.TimeoutError) as e:
        res.error = f"{type(e).__name__}: {e}"


async def replay(base_url: str, model: str, items: list[WorkItem], extra: dict | None = None,
                 timeout_s: float = 1800.0, progress: bool = True, label: str = "",
                 stop_after_s: float | None = None,
                 deadlines: Callable[[WorkItem], tuple[float, float]] | None = None
                 ) -> list[RequestResult]:
    """Send `items` at their arrival offsets and stream every answer. With
    `stop_after_s`, requests still open that long after the start are
    cancelled (the client disconnects; the server aborts them) and marked
    with an error, so an overloaded run ends in bounded time. With
    `deadlines` (item -> (first-token deadline after arrival, TBT SLO)), a
    request is given up, like a user with a timeout, the moment one of its
    tokens misses its deadline (each later token is due one SLO after the
    previous token's deadline); its error then starts with "missed"."""
    url = base_url + "/v1/completions"
    limits = http_limits(max_connections=len(items) + 4, max_keepalive_connections=8)
    results = [RequestResult(w.req_id, w.kind, w.arrival_s, len(w.prompt_token_ids)) for w in items]
    async with httpx.AsyncClient(limits=limits, timeout=timeout_s) as client:
        start = time.monotonic()
        tasks = [asyncio.create_task(_one(client, url, model, w, start, extra or {}, r, timeout_s,
                                                 deadlines))
                 for w, r in zip(items, results)]
        if progress or stop_after_s is not None:
            while not all(t.done() for t in tasks):
                await asyncio.sleep(0.5 if not progress else 2.0)
                if stop_after_s is not None and time.monotonic() - start > stop_after_s:
                    for t, r in zip(tasks, results):
                        if not t.done():
                            t.cancel()
                            r.error = f"cut: still open {stop_after_s:.0f} s after the start"
                    break
                if not progress:
                    continue
                done = sum(t.done() for t in tasks)
                first = sum(1 for r in results if r.token_times)
                sys.stderr.write(f"\r  [{label}] t={time.monotonic() - start:6.1f}s  "
                                 f"first tokens {first}/{len(items)}  finished {done}/{len(items)}   ")
                sys.stderr.flush()
            if progress:
                sys.stderr.write("\n")
        await asyncio.gather(*tasks, return_exceptions=True)
    return results


def percentile(values: list[float], q: float) -> float:
    v = sorted(x for x in values if not math.isnan(x))
    if not v:
        return math.nan
    k = (len(v) - 1) * q / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def summarize(results: list[RequestResult]) -> dict:
    short = [r for r in results if r.kind == "short"]
    long = [r for r in results if r.kind == "long"]
    gaps = [g for r in results for g in r.gaps_s]
    return {
        "num_requests": len(results),
        "errors": [f"{r.req_id}: {r.error}" for r in results if r.error],
        "short_ttft_p50_s": percentile([r.ttft_s for r in short], 50),
        "short_ttft_p90_s": percentile([r.ttft_s for r in short], 90),
        "short_ttft_p99_s": percentile([r.ttft_s for r in short], 99),
        "long_ttft_s": [r.ttft_s for r in long],
        "long_ttft_mean_s": (sum(r.ttft_s for r in long) / len(long)) if long else math.nan,
        "tbt_p50_ms": 1000 * percentile(gaps, 50),
        "tbt_p99_ms": 1000 * percentile(gaps, 99),
        "tbt_max_ms": 1000 * max(gaps) if gaps else math.nan,
        "num_decode_gaps": len(gaps),
    }
