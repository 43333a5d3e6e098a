"""Engine-level attention benchmark (`make bench-attention`): chunk cost at 64K context and a 64K prefill alone,
plain vLLM (CPU_ATTN) against Medha with its attention backend, all in one run.

Every side is one in-process engine (`LLM`, engine core and worker in one
process, its real thread count) on the synthetic model, float32 by default,
run in its own subprocess one after the other:

- ``plain``: vLLM's scheduler and CPU_ATTN, `vllm serve`'s default chunking on
  CPU (2,048 tokens a step), prefix caching on;
- ``medha``: `--scheduler medha` with every default (start-up profile, budget,
  ``--medha-attention-backend auto``);
- ``medha-chunks`` / ``medha-native-chunks``: Medha with the iteration budget
  lifted (so a 2,048-token chunk is one iteration), attention ``auto`` / forced
  ``medha`` (native kernel on every step).

TTFT: one 65,536-token prompt alone, ``max_tokens=1``. Chunk cost: after that
prompt, with the engine's token budget set to ``c``, requests of 65,536 tokens
whose first ``65,536 - 2c`` are the long prompt's (a prefix-cache hit of its
whole blocks) and the rest fresh, so the tail runs as consecutive ``c``-token
chunks at ~64K context (32: 4 chunks, as the hit stops at a 128-token block's
boundary; 2048: 2). The per-token cost is the last chunk's engine iteration
(the engine core's step: schedule, forward, output) / c, best of
``--repeats``; the two sizes alternate within each pass, so a drift of the
host's speed hits both alike. The first chunk's iteration, which also admits
the 64K-token request (its prefix lookup, its block table and token ids into
the model runner), is reported beside it (``first_chunk_us_per_token``,
``..._first_chunk_*``).
``prefill_64k_speedup_bound``: plain vLLM's 64K TTFT over the time the
prompt's attention FLOPs alone take at the host's measured float32 FMA peak
(``benchmarks/harness/peak.py``), an upper bound on any exact kernel's gain.
Writes benchmarks/results/attention.json.

    python benchmarks/bench_attention.py
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

CONTEXT = 65536
CHUNKS = (32, 2048)
TARGETS = {"serving_chunk_cost_ratio_32_vs_2048_medha": "<= 1.25", "prefill_64k_speedup_vs_vllm": ">= 1.5"}
SIDES = ("plain", "medha", "medha-chunks", "medha-native-chunks")


def side_kwargs(side: str, dtype: str) -> dict:
    from medha_vllm import SCHEDULER_CLS

    kw = dict(dtype=dtype, max_model_len=CONTEXT + 64, seed=0, enable_prefix_caching=True,
              max_num_batched_tokens=2048)
    if side == "plain":
        return kw
    kw["scheduler_cls"] = SCHEDULER_CLS
    if side == "medha":
        kw["additional_config"] = {"medha": {}}
        return kw
    kw["additional_config"] = {"medha": {
        "min_chunk_size": 32, "max_chunk_size": 2048, "target_batch_time_s": 60.0, "solo_batch_time_s": 60.0,
        "profile": False, "attention_backend": "auto" if side == "medha-chunks" else "medha"}}
    return kw


def run_side(side: str, model: str, dtype: str, repeats: int) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    import random

    import torch
    from vllm import LLM, SamplingParams

    from medha_vllm.attention.backend import CALLS

    rng = random.Random(0)
    long_ids = [rng.randrange(10, 40000) for _ in range(CONTEXT)]
    sp = SamplingParams(max_tokens=1, temperature=0.0)
    llm = LLM(model=model, **side_kwargs(side, dtype))

    # Engine iterations: (scheduled tokens, seconds from schedule() through
    # update_from_output()), recorded around the in-process engine core.
    core = llm.llm_engine.engine_core.engine_core
    steps: list = []
    schedule, step_fn = core.scheduler.schedule, core.step_fn

    def recording_schedule(*args, **kwargs):
        out = schedule(*args, **kwargs)
        steps.append([out.total_num_scheduled_tokens, None])
        return out

    def timed_step():
        t = time.perf_counter()
        result = step_fn()
        if steps and steps[-1][1] is None:
            steps[-1][1] = time.perf_counter() - t
        return result

    core.scheduler.schedule, core.step_fn = recording_schedule, timed_step

    def timed(ids) -> float:
        t = time.perf_counter()
        llm.generate([{"prompt_token_ids": ids}], sp, use_tqdm=False)
        return time.perf_counter() - t

    timed([rng.randrange(10, 40000) for _ in range(64)])  # warm-up (and Medha's start-up profile)
    CALLS.clear()
    out = {"side": side, "threads": torch.get_num_threads(), "ttft_64k_s": timed(long_ids),
           "ttft_attention_calls": dict(CALLS)}
    if side == "medha":
        return out
    # Chunk cost: the engine's token budget is set to c for these requests (as
    # `--max-num-batched-tokens c` would), so the fresh tail of 2c tokens after
    # the prefix hit runs as consecutive c-token chunks at ~64K context.
    sched = core.scheduler
    best = {c: float("inf") for c in CHUNKS}
    best_first = dict(best)
    calls: dict = {c: collections.Counter() for c in CHUNKS}
    for r in range(repeats + 1):  # the first pass warms the shapes up; sizes alternate within a pass
        for c in CHUNKS:
            sched.max_num_scheduled_tokens = c
            steps.clear()
            before = collections.Counter(CALLS)
            timed(long_ids[:CONTEXT - 2 * c] + [rng.randrange(10, 40000) for _ in range(2 * c)])
            chunk_steps = [s for n, s in steps if n == c and s is not None]
            assert len(chunk_steps) >= 2 and all(n <= c for n, _ in steps), \
                f"the tail did not run as {c}-token chunks: {steps}"
            if r:
                calls[c] += collections.Counter(CALLS) - before
                best[c] = min(best[c], chunk_steps[-1])
                best_first[c] = min(best_first[c], chunk_steps[0])
    out["us_per_token"] = {c: best[c] / c * 1e6 for c in CHUNKS}
    out["first_chunk_us_per_token"] = {c: best_first[c] / c * 1e6 for c in CHUNKS}
    out["attention_calls"] = {c: dict(calls[c]) for c in CHUNKS}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32")
    # NOTE(medha): best of 5, not 3: on the 2-core AMD host, one best-of-3 run
    # timed the same kernel's 32-token iteration at 2091 and 1860 us/token
    # (auto, native forced); best of 5 gave 1898 and 1923.
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sides", default=",".join(SIDES))
    ap.add_argument("--output", default="attention.json")
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.side:  # child: one engine
        print("RESULT " + json.dumps(run_side(a.side, a.model, a.dtype, a.repeats)), flush=True)
        return {}
    from common import machine, write_json

    from benchmarks.harness.models import build_synthetic
    from medha_vllm.kernels import native

    model = str(build_synthetic())
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "4")}
    sides = {}
    for side in a.sides.split(","):
        t = time.time()
        proc = subprocess.run([sys.executable, __file__, "--side", side, "--model", model, "--dtype", a.dtype,
                               "--repeats", str(a.repeats)], capture_output=True, text=True, env=env)
        line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise SystemExit(f"side {side} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")
        sides[side] = json.loads(line[len("RESULT "):])
        sides[side]["wall_s"] = time.time() - t
        print(f"{side}: done in {sides[side]['wall_s']:.0f} s", flush=True)

    out = {"model": "synthetic-llama-4l (4 q / 2 kv heads, head 64)", "dtype": a.dtype, "context": CONTEXT,
           "isa": native.host_isa(), "sides": sides}
    for key, infix in (("us_per_token", ""), ("first_chunk_us_per_token", "first_chunk_")):
        for side, name in (("plain", "vllm"), ("medha-chunks", "medha"), ("medha-native-chunks", "medha_native")):
            out[f"serving_chunk_cost_ratio_32_vs_2048_{infix}{name}"] = chunk_ratio(sides.get(side, {}).get(key))
    if "plain" in sides and "medha" in sides:
        out["prefill_64k_speedup_vs_vllm"] = sides["plain"]["ttft_64k_s"] / sides["medha"]["ttft_64k_s"]
    if "plain" in sides:
        out.update(prefill_bound(model, sides["plain"]["ttft_64k_s"], sides["plain"]["threads"]))
    for side in ("medha-chunks", "medha-native-chunks"):
        if "plain" in sides and side in sides:
            for c in ("32", "2048"):
                out[f"chunk_{c}_cost_vs_vllm_{side.removesuffix('-chunks').replace('-', '_')}"] = (
                    sides[side]["us_per_token"][c] / sides["plain"]["us_per_token"][c])
    out["targets"] = TARGETS
    out["machine"] = machine()
    out["command"] = "python benchmarks/bench_attention.py " + " ".join(argv or sys.argv[1:])
    print_table(out)
    print(f"wrote {write_json(a.output, out)}")
    return out


def prefill_bound(model: str, plain_ttft_s: float, threads: int) -> dict:
    """What any exact float32 kernel could give the 64K prefill on this host:
    the causal attention's FLOPs (QK^T and PV, every layer and query head:
    2 x d x N(N+1) FLOPs for both) at the host's measured FMA peak, everything else in
    the model free. Plain vLLM's TTFT over that time bounds the speed-up
    from above (float32; bfloat16 products have another peak)."""
    from benchmarks.harness.peak import fma_peak_flops

    cfg = json.loads((Path(model) / "config.json").read_text())
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    flops = cfg["num_hidden_layers"] * cfg["num_attention_heads"] * 2 * d * CONTEXT * (CONTEXT + 1)
    peak = fma_peak_flops(threads)
    floor_s = flops / peak
    return {"fma_peak_gflops": peak / 1e9, "prefill_64k_attention_tflop": flops / 1e12,
            "prefill_64k_attention_at_peak_s": floor_s,
            "plain_attention_share_of_peak": floor_s / plain_ttft_s,
            "prefill_64k_speedup_bound": plain_ttft_s / floor_s}


def chunk_ratio(per_token: dict | None) -> float | None:
    """Per-token cost of the 32-token chunk over the 2048-token one (None: not measured)."""
    return per_token["32"] / per_token["2048"] if per_token else None


def print_table(out: dict) -> None:
    print(f"\nsynthetic model, {out['dtype']}, context {out['context']}, ISA {out['isa']}")
    print(f"{'side':<22} {'TTFT 64K (s)':>12} {'us/tok @32':>11} {'us/tok @2048':>13} {'32/2048':>8} "
          f"{'first chunk: @32':>17} {'@2048':>8} {'32/2048':>8}")
    nan = float("nan")
    for name, s in out["sides"].items():
        per, first = s.get("us_per_token", {}), s.get("first_chunk_us_per_token", {})
        r, rf = (chunk_ratio(x) or nan for x in (per, first))
        print(f"{name:<22} {s['ttft_64k_s']:>12.1f} {per.get('32', nan):>11.1f} {per.get('2048', nan):>13.1f} "
              f"{r:>8.2f} {first.get('32', nan):>17.1f} {first.get('2048', nan):>8.1f} {rf:>8.2f}")
    for k, v in out.items():
        if isinstance(v, float):
            print(f"{k}: {v:.3f}" + (f"  (target {out['targets'][k]})" if k in out["targets"] else ""))


if __name__ == "__main__":
    main()
