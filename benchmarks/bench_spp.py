"""SPP benchmark (`make bench-spp`): time to first token of one long prompt on
one pipeline stage and on two, Medha against plain vLLM; stage utilisation
from the stage timeline; decode TBT with the long context in place; and the
HOL benchmark's short-request figures with `-pp 2`. Writes
benchmarks/results/spp.json (and hol_pp2.json) and prints a table.

One core is one device here: the 1-stage runs bind their single worker to one
core (VLLM_CPU_OMP_THREADS_BIND=0), the 2-stage runs bind one worker to each
of two cores. The API server, the engine core and this client share the
machine with them (see the note in the JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import RESULTS, machine, write_json  # noqa: E402

from benchmarks.harness.launch import VllmServer  # noqa: E402
from medha_vllm.layout import cpu_thread_binding  # noqa: E402
from benchmarks.harness.loadgen import replay  # noqa: E402
from benchmarks.harness.models import build_synthetic  # noqa: E402
from medha_vllm.timeline import (load_spans, overlapping_chunks, prefill_tokens_by_request,  # noqa: E402,E501
                                 prefill_window, stage_utilisation)
from benchmarks.harness.workload import WorkItem  # noqa: E402

SERVED = "synthetic"
TARGETS = {"spp2_scaling_efficiency": ">= 0.8", "spp2_vs_plain_pp2": ">= 1.0",
           "stage_utilisation": ">= 0.8", "decode_tbt_ratio_pp2_vs_pp1": "<= 1.3"}
# name -> (pipeline stages, extra vllm serve args)
LAYOUTS = {
    "medha-pp1": (1, ["--scheduler", "medha"]),
    "medha-pp2": (2, ["--scheduler", "medha"]),
    "plain-pp2": (2, []),
    "plain-pp1": (1, []),
}


def long_prompt(n: int, rep: int) -> list[int]:
    # Distinct per repetition (no prefix-cache hits even if caching were on).
    return [10 + (k * 104729 + rep * 7919) % 40000 for k in range(n)]


def run_layout(name: str, model: str, args: argparse.Namespace, log_dir: Path) -> dict:
    stages, extra = LAYOUTS[name]
    timeline = log_dir / f"{name}.timeline.json"
    timeline.unlink(missing_ok=True)
    serve_args = ["--max-model-len", str(args.prompt_tokens + args.output_tokens + 64),
                  "--seed", "0", "--no-enable-prefix-caching", "-pp", str(stages)] + extra
    if "medha" in name:
        serve_args += ["--medha-timeline-path", str(timeline)]
    else:
        serve_args += ["--additional-config", json.dumps({"medha": {"timeline_path": str(timeline)}})]
    env = {"VLLM_CPU_OMP_THREADS_BIND": "0" if stages == 1 else cpu_thread_binding(2)}
    print(f"== {name}: VLLM_CPU_OMP_THREADS_BIND={env['VLLM_CPU_OMP_THREADS_BIND']} "
          f"vllm serve <synthetic> {' '.join(serve_args)}", flush=True)
    t0 = time.time()
    with VllmServer(model, serve_args, served_name=SERVED, env=env,
                    log_path=str(log_dir / f"{name}.log")) as srv:
        startup = time.time() - t0
        warm = [WorkItem("warmup", 0.0, [7 + (k * 131) % 30000 for k in range(256)], 4, "warmup")]
        asyncio.run(replay(srv.base_url, SERVED, warm, progress=False))
        reps = []
        for rep in range(args.reps):
            item = WorkItem(f"long-{rep}", 0.0, long_prompt(args.prompt_tokens, rep),
                            args.output_tokens, "long")
            (res,) = asyncio.run(replay(srv.base_url, SERVED, [item], progress=False))
            if res.error:
                raise RuntimeError(f"{name}: {res.error}")
            # NOTE: a streamed chunk may carry several tokens (the detokenizer
            # holds back incomplete characters), so the decode time per token
            # is the span of the stream over the tokens after the first.
            tpot = (res.token_times[-1] - res.token_times[0]) / (args.output_tokens - 1)
            reps.append({"ttft_s": res.ttft_s, "decode_ms_per_token": 1000 * tpot,
                         "stream_chunks": len(res.token_times)})
            print(f"   rep {rep}: TTFT {res.ttft_s:.2f} s, decode {1000 * tpot:.1f} ms/token",
                  flush=True)
    out = {"stages": stages, "args": serve_args, "bind": env["VLLM_CPU_OMP_THREADS_BIND"],
           "startup_s": startup, "reps": reps,
           "ttft_s": statistics.median(r["ttft_s"] for r in reps),
           "decode_tbt_ms": statistics.median(r["decode_ms_per_token"] for r in reps)}
    if stages > 1 and timeline.exists():
        out["timeline"] = str(timeline.relative_to(RESULTS.parent.parent))
        out.update(timeline_figures(timeline, args.prompt_tokens))
    return out


def timeline_figures(path: Path, prompt_tokens: int) -> dict:
    spans = load_spans(path)
    totals = prefill_tokens_by_request(spans)
    longs = [rid for rid, n in totals.items() if n >= prompt_tokens]
    per_req = []
    for rid in longs:
        window = prefill_window(spans, rid)
        util = stage_utilisation(spans, window)
        chunks = sum(1 for s in spans if s.stage == 0 and s.has_prefill_of(rid))
        per_req.append({"utilisation": util, "mean": statistics.fmean(util.values()),
                        "chunks": chunks, "overlapping_chunk_pairs": len(overlapping_chunks(spans, rid)),
                        "window_s": window[1] - window[0]})
    if not per_req:
        return {}
    return {"stage_utilisation": statistics.fmean(r["mean"] for r in per_req),
            "stage_utilisation_by_stage": {
                str(st): statistics.fmean(r["utilisation"][st] for r in per_req)
                for st in per_req[0]["utilisation"]},
            "long_prefills": per_req}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompt-tokens", type=int, default=32768)
    ap.add_argument("--output-tokens", type=int, default=33)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--layouts", default=",".join(LAYOUTS))
    ap.add_argument("--skip-hol", action="store_true", help="skip the HOL run with -pp 2")
    ap.add_argument("--output", default="spp.json")
    a = ap.parse_args(argv)
    model = str(build_synthetic())
    log_dir = RESULTS / "logs" / Path(a.output).stem
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = {name: run_layout(name, model, a, log_dir) for name in a.layouts.split(",")}
    ttft = {k: v["ttft_s"] for k, v in runs.items()}
    out: dict = {"workload": {"model": "synthetic 4-layer Llama (benchmarks.harness.models)",
                              "prompt_tokens": a.prompt_tokens, "output_tokens": a.output_tokens,
                              "reps": a.reps, "dtype": "model default (float32 on CPU)"},
                 "note": "2-core CPU: each stage is one core; the API server, engine core and "
                         "client run on the same two cores (in the 1-stage runs they have "
                         "the second core to themselves).",
                 "layouts": runs, "ttft_s": ttft}
    m1, m2, p2, p1 = (runs.get(k) for k in ("medha-pp1", "medha-pp2", "plain-pp2", "plain-pp1"))
    if m1 and m2:
        out["spp2_scaling_efficiency"] = m1["ttft_s"] / (2 * m2["ttft_s"])
        out["decode_tbt_ratio_pp2_vs_pp1"] = m2["decode_tbt_ms"] / m1["decode_tbt_ms"]
    if m2 and p2:
        out["spp2_vs_plain_pp2"] = p2["ttft_s"] / m2["ttft_s"]
    if p1 and p2:
        out["plain_pp2_scaling_efficiency"] = p1["ttft_s"] / (2 * p2["ttft_s"])
    if m2 and "stage_utilisation" in m2:
        out["stage_utilisation"] = m2["stage_utilisation"]
    if p2 and "stage_utilisation" in p2:
        out["plain_pp2_stage_utilisation"] = p2["stage_utilisation"]
    if not a.skip_hol:
        import bench_hol

        hol = bench_hol.main(["--servers", "plain,medha", "--common-args", "-pp 2",
                              "--output", "hol_pp2.json"])
        keys = ("short_ttft_p50_speedup", "short_ttft_p90_speedup", "tbt_p99_ms",
                "tbt_p99_over_target", "long_ttft_ratio", "outputs_identical")
        out["hol_pp2"] = {k: hol.get(k) for k in keys}
        out["hol_pp2"]["servers"] = {n: {k: s[k] for k in ("short_ttft_p50_s", "short_ttft_p90_s",
                                                          "long_ttft_mean_s", "tbt_p99_ms")}
                                     for n, s in hol["servers"].items()}
    out["machine"] = machine()
    out["targets"] = TARGETS
    out["command"] = "python benchmarks/bench_spp.py " + " ".join(argv or sys.argv[1:])
    print_table(out)
    path = write_json(a.output, out)
    print(f"wrote {path}")
    return out


def print_table(out: dict) -> None:
    print()
    print(f"{'layout':12s} {'stages':>6s} {'TTFT':>9s} {'decode TBT':>11s} {'stage util':>10s}")
    for name, r in out["layouts"].items():
        util = r.get("stage_utilisation")
        print(f"{name:12s} {r['stages']:6d} {r['ttft_s']:8.2f}s {r['decode_tbt_ms']:9.1f}ms "
              f"{'' if util is None else f'{util:10.2f}'}")
    print()
    for k in ("spp2_scaling_efficiency", "spp2_vs_plain_pp2", "stage_utilisation",
              "decode_tbt_ratio_pp2_vs_pp1", "plain_pp2_scaling_efficiency",
              "plain_pp2_stage_utilisation"):
        if k in out:
            print(f"  {k:32s} {out[k]:.3f}   target {TARGETS.get(k, '(info)')}")
    if "hol_pp2" in out:
        h = out["hol_pp2"]
        print(f"  hol -pp 2: short TTFT P50 speedup {h['short_ttft_p50_speedup']:.1f}x, "
              f"P90 {h['short_ttft_p90_speedup']:.1f}x, outputs identical {h['outputs_identical']}")


if __name__ == "__main__":
    main()
