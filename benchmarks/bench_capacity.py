"""Capacity (`make bench-capacity`): the highest request rate at which at
least 90 % of requests meet their deadlines, for plain vLLM, plain vLLM with
--long-prefill-token-threshold 512, and Medha, on the same seeded workload.

Workload: short requests with lengths from the Azure trace (capped) plus 5 %
long requests, Poisson arrivals at each rate of a sweep (same seed for every
server). One deadline definition for all servers (written in the JSON):
TTFT deadline = max(floor, multiplier x idle prefill time of the prompt), with
the idle prefill time measured once on the idle plain server and fitted as
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, machine, write_json  # noqa: E402

from medha_vllm.launch import VllmServer  # noqa: E402
from medha_vllm.loadgen import replay  # noqa: E402
from medha_vllm.models import build_synthetic  # noqa: E402
from medha_vllm.workload import WorkItem, default_trace_path, read_trace  # noqa: E402


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


def met_fraction(results, ttft_deadline, tbt_slo) -> float:
    ok = 0
    for r in results:
        if r.error or not r.token_times:
            continue
        deadline = r.arrival_s + ttft_deadline(r.prompt_tokens)
        good = True
        for tt in r.token_times:
            if tt > deadline:
                good = False
                break
            deadline += tbt_slo
        ok += good
    return ok / max(1, len(results))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="0.25,0.5,1,2,3,4,6")
    ap.add_argument("--duration-s", type=float, default=40.0)
    ap.add_argument("--long-frac", type=float, default=0.05)
    ap.add_argument("--long-tokens", type=int, default=24000)
    ap.add_argument("--max-prompt-tokens", type=int, default=512)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--ttft-multiplier", type=float, default=3.0)
    ap.add_argument("--ttft-floor-s", type=float, default=1.0)
    ap.add_argument("--tbt-slo-s", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--servers", default="plain,plain-chunked,medha")
    a = ap.parse_args(argv)
    model = str(build_synthetic())
    rates = [float(x) for x in a.rates.split(",")]
    common = ["--max-model-len", str(a.long_tokens + 1024), "--seed", str(a.seed)]
    servers = {"plain": common, "plain-chunked": common + ["--long-prefill-token-threshold", "512"],
               "medha": common + ["--scheduler", "medha"]}
    logs = RESULTS / "logs" / "capacity"
    logs.mkdir(parents=True, exist_ok=True)
    out = {"rates": rates, "servers": {}, "machine": machine(), "deadline": {}}
    coef = None
    for name in a.servers.split(","):
        with VllmServer(model, servers[name], served_name="model", log_path=str(logs / f"{name}.log")) as srv:
            if coef is None:
                # Idle prefill time vs prompt length, measured once, on the first (plain) server.
                tok = random.Random(int(time.time()))
                ns, ts = [], []
                for n in (64, 512, 2048, 8192, a.long_tokens):
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

            per_rate = {}
            for rate in rates:
                items = workload(rate, a.duration_s, a.seed, int(time.time() * 1000) % 10**9,
                                 a.long_frac, a.long_tokens, a.max_prompt_tokens, a.max_output_tokens)
                res = asyncio.run(replay(srv.base_url, "model", items, label=f"{name} {rate}/s"))
                frac = met_fraction(res, ttft_deadline, a.tbt_slo_s)
                per_rate[str(rate)] = {"met_fraction": frac, "num_requests": len(items),
                                       "num_long": sum(w.kind == "long" for w in items)}
                print(f"  {name:14s} rate {rate:5.2f}/s: {100 * frac:5.1f}% met ({len(items)} requests)",
                      flush=True)
                if frac < 0.9 and rate > rates[0]:
                    break  # higher rates only get worse
        cap = max([r for r in rates if per_rate.get(str(r), {}).get("met_fraction", 0) >= 0.9], default=0.0)
        out["servers"][name] = {"capacity_rps": cap, "per_rate": per_rate}
    base = max(out["servers"].get(n, {}).get("capacity_rps", 0.0) for n in ("plain", "plain-chunked"))
    med = out["servers"].get("medha", {}).get("capacity_rps", math.nan)
    out["medha_capacity_over_best_baseline"] = (med / base) if base else math.inf
    out["targets"] = {"medha_capacity_over_best_baseline": ">= 5"}
    out["workload"] = {k: getattr(a, k) for k in ("duration_s", "long_frac", "long_tokens", "max_prompt_tokens",
                                                 "max_output_tokens", "seed")}
    out["command"] = "python benchmarks/bench_capacity.py " + " ".join(argv or sys.argv[1:])
    for n, s in out["servers"].items():
        print(f"{n:14s} capacity {s['capacity_rps']} req/s")
    print(f"medha / best baseline: {out['medha_capacity_over_best_baseline']}")
    print(f"wrote {write_json('capacity.json', out)}")


if __name__ == "__main__":
    main()
