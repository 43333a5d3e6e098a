"""Capacity (`make bench-capacity`): the request rate at which 90 % of
requests meet their deadlines, for plain vLLM, plain vLLM with
--long-prefill-token-threshold 512, and Medha, on the same seeded workloads.

Every server runs every rate of one grid (geometric, each step 25 % of the
rate; no early stop), for each of 3 seeds. A run offers `--duration-s` of
Poisson arrivals. The client gives a request up the moment one of its tokens
misses its deadline (like a user with a timeout; the server aborts it), so a
request is cut only once it has certainly missed, and an overloaded run still
ends about one deadline after its last arrival. The next run waits for the
server to be idle. Capacity is interpolated linearly between the last grid
rate that meets the 90 % and the first that does not; it is reported per
seed with its spread, and marked censored when the 90 % line is not crossed
inside the grid.

Workload: short requests with lengths from the Azure trace (capped) plus 5 %
long requests (same seed -> same arrivals and lengths for every server). The
long length is sized for this 2-core host: a 24K-token prompt takes ~88 s to
prefill on an idle plain server, so at 5 % of even 0.25 req/s the long
requests alone would offer more work than the machine has, and every rate of
the grid would measure an overloaded server; 2-4K-token prompts take 3-6 s
idle, far beyond a short request's deadline (so they block plain vLLM), while
their share of the work stays below the machine's capacity over most of the
grid. One deadline definition for all servers (written in the JSON): TTFT
deadline = max(floor, multiplier x idle prefill time of the prompt), with the
idle prefill time measured once on the idle plain server and fitted as
a + b*n + c*n^2; each later token is due `tbt_slo_s` after the previous
token's deadline (slack carried forward). A request meets its deadlines if
every token does. Writes benchmarks/results/capacity.json."""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import RESULTS, machine, write_json  # noqa: E402

from benchmarks.harness.launch import VllmServer  # noqa: E402
from benchmarks.harness.loadgen import replay  # noqa: E402
from benchmarks.harness.models import build_synthetic  # noqa: E402
from benchmarks.harness.workload import WorkItem, default_trace_path, read_trace  # noqa: E402


def workload(rate: float, duration_s: float, seed: int, nonce: int, long_frac: float, long_tokens: int,
             max_prompt: int, max_output: int) -> list[WorkItem]:
    rng = random.Random(seed * 1000 + int(rate * 100))
    tok = random.Random(nonce)
    rows = read_trace(default_trace_path())
    t, items = 0.0, []
    while True:
        t += rng.expovariate(rate)
        if t > duration_s:
            break
        _, p, d = rows[rng.randrange(len(rows))]
        long = rng.random() < long_frac
        n = rng.randint(long_tokens // 2, long_tokens) if long else max(4, min(p, max_prompt))
        items.append(WorkItem(f"r{len(items)}", t, [tok.randrange(100, 49000) for _ in range(n)],
                              max(8, min(d, max_output)), "long" if long else "short"))
    return items


def met(r) -> bool:
    """Every token on time: the client (loadgen `deadlines`) gives a request
    up at its first missed deadline, so one that streamed to the end with no
    error met them all; given up, cut or failed is missed."""
    return not r.error and bool(r.token_times)


def met_fraction(results) -> float:
    return sum(map(met, results)) / max(1, len(results))


def rate_grid(lo: float, hi: float, step: float) -> list[float]:
    """lo, lo x (1 + step), ... up to hi (each step `step` of the rate)."""
    out, r = [], lo
    while r <= hi * (1 + 1e-9):
        out.append(round(r, 3))
        r *= 1 + step
    return out


def capacity(per_rate: dict[float, float], target: float = 0.9) -> dict:
    """Interpolated rate where the met fraction falls through `target`."""
    rates = sorted(per_rate)
    if per_rate[rates[0]] < target:
        return {"rps": rates[0], "censored": "below grid"}
    for lo, hi in zip(rates, rates[1:]):
        if per_rate[hi] < target:
            flo, fhi = per_rate[lo], per_rate[hi]
            return {"rps": lo + (hi - lo) * (flo - target) / (flo - fhi), "censored": None}
    return {"rps": rates[-1], "censored": "above grid"}


def wait_idle(base_url: str, timeout_s: float = 120.0) -> None:
    """Until the server has no request running or waiting (cut requests are
    aborted asynchronously)."""
    import re
    import urllib.request

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        text = urllib.request.urlopen(base_url + "/metrics", timeout=10).read().decode()
        busy = sum(float(m.group(1)) for m in re.finditer(
            r"^vllm:num_requests_(?:running|waiting)\{[^}]*\} (\S+)$", text, re.M))
        if busy == 0:
            return
        time.sleep(1.0)
    raise RuntimeError(f"{base_url} still busy {timeout_s:.0f} s after a run")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate-min", type=float, default=0.5)
    ap.add_argument("--rate-max", type=float, default=9.1)
    ap.add_argument("--rate-step", type=float, default=0.25, help="grid step, fraction of the rate")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--duration-s", type=float, default=20.0)
    ap.add_argument("--drain-s", type=float, default=10.0,
                    help="safety cut, this long after the last deadline could pass")
    ap.add_argument("--long-frac", type=float, default=0.05)
    ap.add_argument("--long-tokens", type=int, default=4096)
    ap.add_argument("--max-prompt-tokens", type=int, default=512)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--ttft-multiplier", type=float, default=3.0)
    ap.add_argument("--ttft-floor-s", type=float, default=1.0)
    ap.add_argument("--tbt-slo-s", type=float, default=0.5)
    ap.add_argument("--servers", default="plain,plain-chunked,medha")
    a = ap.parse_args(argv)
    model = str(build_synthetic())
    rates = rate_grid(a.rate_min, a.rate_max, a.rate_step)
    seeds = [int(x) for x in a.seeds.split(",")]
    common = ["--max-model-len", str(a.long_tokens + 1024), "--seed", "0"]
    servers = {"plain": common, "plain-chunked": common + ["--long-prefill-token-threshold", "512"],
               "medha": common + ["--scheduler", "medha"]}
    logs = RESULTS / "logs" / "capacity"
    logs.mkdir(parents=True, exist_ok=True)
    out = {"rates": rates, "seeds": seeds, "servers": {}, "machine": machine(), "deadline": {}}
    coef = None
    for name in a.servers.split(","):
        with VllmServer(model, servers[name], served_name="model", log_path=str(logs / f"{name}.log")) as srv:
            # Same warm-up on every server (first requests pay one-off costs).
            tok = random.Random(int(time.time()))
            asyncio.run(replay(srv.base_url, "model", [
                WorkItem(f"warm{n}", 0.0, [tok.randrange(100, 49000) for _ in range(n)], 4, "warm")
                for n in (16, 300, a.long_tokens)], progress=False))
            if coef is None:
                # Idle prefill time vs prompt length, measured once, on the first (plain) server.
                ns, ts = [], []
                for n in sorted({64, 256, 512, 1024, 2048, a.long_tokens // 2, a.long_tokens}):
                    res = asyncio.run(replay(srv.base_url, "model", [WorkItem(
                        f"cal{n}", 0.0, [tok.randrange(100, 49000) for _ in range(n)], 2, "cal")],
                        progress=False))
                    ns.append(n)
                    ts.append(res[0].ttft_s)
                coef = np.polyfit(ns, ts, 2).tolist()
                out["deadline"] = {
                    "ttft": f"max({a.ttft_floor_s}, {a.ttft_multiplier} x idle_prefill(n)), "
                            f"idle_prefill(n) = polyval({coef}, n) s (measured on idle plain server)",
                    "tbt_slo_s": a.tbt_slo_s, "calibration": dict(zip(map(str, ns), ts)),
                    "meets": ">= 90 % of requests meet every token deadline"}

            def ttft_deadline(n, c=coef):
                return max(a.ttft_floor_s, a.ttft_multiplier * float(np.polyval(c, n)))

            longest_deadline = ttft_deadline(a.long_tokens) + a.max_output_tokens * a.tbt_slo_s

            per_seed = {}
            for seed in seeds:
                per_rate = {}
                for rate in rates:
                    items = workload(rate, a.duration_s, seed, int(time.time() * 1000) % 10**9,
                                     a.long_frac, a.long_tokens, a.max_prompt_tokens,
                                     a.max_output_tokens)
                    wait_idle(srv.base_url)
                    t0 = time.monotonic()
                    res = asyncio.run(replay(
                        srv.base_url, "model", items, progress=False,
                        stop_after_s=a.duration_s + longest_deadline + a.drain_s,
                        deadlines=lambda w: (ttft_deadline(len(w.prompt_token_ids)), a.tbt_slo_s)))
                    longs = [r for r in res if r.kind == "long"]
                    errors = [r.error for r in res if r.error]
                    row = per_rate[str(rate)] = {
                        "met_fraction": met_fraction(res), "num_requests": len(items),
                        "num_long": len(longs), "num_long_met": sum(map(met, longs)),
                        "num_given_up": sum(e.startswith("missed") for e in errors),
                        "num_cut": sum(e.startswith("cut") for e in errors),
                        "num_failed": sum(not e.startswith(("missed", "cut")) for e in errors),
                        "wall_s": round(time.monotonic() - t0, 1)}
                    print(f"  {name:14s} seed {seed} rate {rate:6.3f}/s: "
                          f"{100 * row['met_fraction']:5.1f}% met ({len(items)} requests, "
                          f"{row['num_long']} long, {row['wall_s']} s)", flush=True)
                cap = capacity({float(r): v["met_fraction"] for r, v in per_rate.items()})
                per_seed[str(seed)] = {"capacity": cap, "per_rate": per_rate}
        caps = [v["capacity"]["rps"] for v in per_seed.values()]
        out["servers"][name] = {
            "capacity_rps_mean": float(np.mean(caps)), "capacity_rps_min": min(caps),
            "capacity_rps_max": max(caps),
            "censored": sorted({v["capacity"]["censored"] for v in per_seed.values()
                                if v["capacity"]["censored"]}),
            "per_seed": per_seed}
    ratios = {}
    for seed in map(str, seeds):
        base = max(out["servers"][n]["per_seed"][seed]["capacity"]["rps"]
                   for n in ("plain", "plain-chunked") if n in out["servers"])
        med = out["servers"]["medha"]["per_seed"][seed]["capacity"]["rps"]
        ratios[seed] = med / base if base else math.inf
    out["medha_capacity_over_best_baseline_per_seed"] = ratios
    out["medha_capacity_over_best_baseline_min"] = min(ratios.values())
    out["targets"] = {"medha_capacity_over_best_baseline_per_seed": ">= 5 at every seed"}
    out["workload"] = {k: getattr(a, k) for k in ("duration_s", "drain_s", "long_frac", "long_tokens",
                                                 "max_prompt_tokens", "max_output_tokens",
                                                 "rate_min", "rate_max", "rate_step")}
    out["command"] = "python benchmarks/bench_capacity.py " + " ".join(argv or sys.argv[1:])
    print(f"{'server':14s} {'capacity mean':>14s} {'min':>7s} {'max':>7s}  censored")
    for n, s_ in out["servers"].items():
        print(f"{n:14s} {s_['capacity_rps_mean']:12.3f}/s {s_['capacity_rps_min']:7.3f} "
              f"{s_['capacity_rps_max']:7.3f}  {s_['censored'] or '-'}")
    print("medha / best baseline per seed: " + ", ".join(f"{k}: {v:.2f}" for k, v in ratios.items()))
    print(f"wrote {write_json('capacity.json', out)}")


if __name__ == "__main__":
    main()
