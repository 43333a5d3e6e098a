"""Reliability (`make bench-reliability`): a bad day for `vllm serve
--scheduler medha` on loopback, case by case (benchmarks/harness/reliability.py),
each a real server with bounded request loops. Writes
benchmarks/results/reliability.json and prints a table.

Cases (SmolLM2, float32 for the ones that compare outputs):
- kv_exhaustion: 3x what a 48-block KV cache holds, three quarters as batch
  jobs (a relaxed vllm_xargs deadline), the rest 0.3 s later with default
  deadlines; then every request alone: lost requests, recompute evictions,
  identical outputs.
- disconnect_storm: 100 streaming clients cancel at random points of prefill
  or decode: KV blocks leaked, later requests served.
- soak: `--soak-requests` short requests with the trace's lengths (prompts
  capped at 256 tokens, outputs at 32), Poisson at `--soak-rate`, cut at
  `--soak-max-s`, against the serving defaults (bfloat16, compiled): lost
  requests, engine errors, resident memory growth of the server's process tree
  (first to last quarter). 3 req/s is about 70 % of what the 2-core machine
  prefills (~1,000 prompt tokens/s measured in the server's own stats line at
  saturation): loaded, with no queue that grows without bound.
- worker_death (one worker, and -pp 2): SIGKILL a model worker mid-run: in-flight
  clients that got an error, the slowest error, the server's exit code.
- starvation (not in the default `--cases`; `make bench-starvation` writes
  starvation.json): a 900-token prompt under a Poisson stream of 64-token
  requests at the capacity rate measured on the same server: its TTFT over its
  length-aware deadline (1.5 x its standalone TTFT), with Medha's starvation
  guard (default 2) and without it (plain LARS, `--medha-starvation-guard 0`).

The short versions of the first, second and fourth run in the default test
suite (tests/e2e/test_reliability.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import RESULTS, machine, write_json  # noqa: E402

from benchmarks.harness import reliability as rel  # noqa: E402
from benchmarks.harness.launch import VllmServer  # noqa: E402
from benchmarks.harness.models import build_smollm2  # noqa: E402
from benchmarks.harness.workload import WorkItem, default_trace_path, read_trace  # noqa: E402

MODEL = "smollm2"
SMALL_KV = ["--dtype", "float32", "--max-model-len", "1024", "--enforce-eager", "--seed", "0",
            "--block-size", "32", "--num-gpu-blocks-override", "48", "--scheduler", "medha",
            "--medha-profile", "false", "--medha-target-batch-time-s", "0.15"]
TARGETS = {"kv_exhaustion.lost_requests": "== 0", "kv_exhaustion.recompute_evictions": "> 0",
           "kv_exhaustion.outputs_identical": "true", "disconnect_storm.leaked_blocks": "== 0",
           "disconnect_storm.later_served": "== later_requests", "soak.requests": ">= 5000",
           "soak.lost_requests": "== 0", "soak.engine_errors": "== 0", "soak.rss_growth": "< 0.05",
           "worker_death*.clients_with_error": "== in_flight_clients",
           "worker_death*.max_seconds_to_client_error": "<= 30",
           "worker_death*.server_exit_code": "non-zero (or recovered)",
           "starvation.long_ttft_over_deadline": "<= 3 (guard 2 + its own prefill)"}


def soak_items(n: int, rate: float, seed: int, max_prompt: int, max_output: int) -> list[WorkItem]:
    """`n` short requests, lengths from the trace in order (capped), Poisson
    arrivals at `rate`, random token ids (no shared prefixes)."""
    rows = read_trace(default_trace_path())
    rng = random.Random(seed)
    items, t = [], 0.0
    for i in range(n):
        _, p, d = rows[i % len(rows)]
        t += rng.expovariate(rate)
        items.append(WorkItem(f"soak-{i}", t, [rng.randrange(100, 20000) for _ in
                                               range(max(4, min(p, max_prompt)))],
                              max(4, min(d, max_output)), "short"))
    return items


def engine_errors(log_path: str) -> int:
    text = Path(log_path).read_text(errors="replace")
    return len(re.findall(r"^\(EngineCore[^)]*\) ERROR", text, re.M))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--soak-requests", type=int, default=5000)
    ap.add_argument("--soak-rate", type=float, default=3.0, help="offered rate (req/s)")
    ap.add_argument("--soak-max-s", type=float, default=2400.0)
    ap.add_argument("--storm-clients", type=int, default=100)
    ap.add_argument("--cases", default="kv_exhaustion,disconnect_storm,soak,worker_death,"
                                       "worker_death_pp2")
    ap.add_argument("--starvation-long-tokens", type=int, default=900)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--output", default="reliability.json")
    ap.add_argument("--update", action="store_true",
                    help="keep the other cases of the existing output file (each case "
                         "records the command and date of its own run)")
    a = ap.parse_args(argv)
    cases = a.cases.split(",")
    model = str(build_smollm2())
    logs = RESULTS / "logs" / "reliability"
    logs.mkdir(parents=True, exist_ok=True)
    out: dict = {"cases": {}}

    if {"kv_exhaustion", "disconnect_storm", "worker_death"} & set(cases):
        with VllmServer(model, SMALL_KV, served_name=MODEL, log_path=str(logs / "small_kv.log"),
                        env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as srv:
            if "kv_exhaustion" in cases:
                out["cases"]["kv_exhaustion"] = rel.kv_exhaustion(
                    srv.base_url, MODEL, 3.0, 400, 16, seed=a.seed)
                print("kv_exhaustion", out["cases"]["kv_exhaustion"], flush=True)
            if "disconnect_storm" in cases:
                out["cases"]["disconnect_storm"] = rel.disconnect_storm(
                    srv.base_url, MODEL, a.storm_clients, seed=a.seed, prompt_range=(32, 900))
                print("disconnect_storm", out["cases"]["disconnect_storm"], flush=True)
            if "worker_death" in cases:
                out["cases"]["worker_death"] = rel.worker_death(
                    srv.base_url, MODEL, srv.proc, 6, 600, 64, 30.0, seed=a.seed)
                print("worker_death", out["cases"]["worker_death"], flush=True)
    if "starvation" in cases:
        # Medha's default (starvation guard 2) and the paper's plain LARS
        # (guard 0), each on its own server, same seed.
        for name, guard in (("starvation", None), ("starvation_plain_lars", 0.0)):
            args = SMALL_KV + ([] if guard is None else ["--medha-starvation-guard", str(guard)])
            with VllmServer(model, args, served_name=MODEL, log_path=str(logs / f"{name}.log"),
                            env={"VLLM_CPU_KVCACHE_SPACE": "1"}) as srv:
                out["cases"][name] = rel.starvation(
                    srv.base_url, MODEL, a.starvation_long_tokens, seed=a.seed)
            print(name, out["cases"][name], flush=True)
    if "worker_death_pp2" in cases:
        args = [x for x in SMALL_KV if x not in ("--num-gpu-blocks-override", "48")] + ["-pp", "2"]
        srv = VllmServer(model, args, served_name=MODEL, log_path=str(logs / "pp2.log"))
        srv.env = {k: v for k, v in srv.env.items() if k != "VLLM_CPU_OMP_THREADS_BIND"}
        srv.env["VLLM_CPU_KVCACHE_SPACE"] = "1"
        with srv:
            out["cases"]["worker_death_pp2"] = rel.worker_death(
                srv.base_url, MODEL, srv.proc, 6, 600, 64, 30.0, seed=a.seed)
        print("worker_death_pp2", out["cases"]["worker_death_pp2"], flush=True)
    if "soak" in cases:
        # The serving defaults (bfloat16, compiled), Medha's budget from its profile.
        log = str(logs / "soak.log")
        with VllmServer(model, ["--max-model-len", "2048", "--scheduler", "medha"],
                        served_name=MODEL, log_path=log) as srv:
            items = soak_items(a.soak_requests, a.soak_rate, a.seed, 256, 32)
            r = rel.soak(srv.base_url, MODEL, srv.proc.pid, items, a.soak_max_s)
        r["engine_errors"] = engine_errors(log)
        out["cases"]["soak"] = r
        print("soak", r, flush=True)

    command = "python benchmarks/bench_reliability.py " + " ".join(argv or sys.argv[1:])
    stamp = {"command": command, "date": time.strftime("%Y-%m-%d")}
    for figs in out["cases"].values():
        figs["run"] = stamp
    if a.update and (RESULTS / a.output).exists():
        old = json.loads((RESULTS / a.output).read_text())
        for name, figs in old.get("cases", {}).items():
            if name not in out["cases"]:
                figs.setdefault("run", {"command": old.get("command"), "date": "earlier"})
                out["cases"][name] = figs
    out["machine"] = machine()
    out["targets"] = TARGETS
    out["command"] = command
    print_table(out)
    path = write_json(a.output, out)
    print(f"wrote {path}")
    return out


def print_table(out: dict) -> None:
    print(f"\n{'case':<20} {'figure':<32} value")
    for case, figs in out["cases"].items():
        for k, v in figs.items():
            if not isinstance(v, (list, dict)):
                print(f"{case:<20} {k:<32} {v}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
