"""KV-cache parallelism benchmark (`make bench-kvp`): KVP = 2 against KVP = 1,
synthetic model, float32, the same KV cache per worker, one core per worker,
all in one run on one machine. Writes benchmarks/results/kvp.json.

1. Capacity. Each worker holds `--blocks` blocks of 32 tokens (one is the
   null block): KVP = 1 serves contexts up to (blocks - 1) x 32 tokens, KVP = 2
   twice that. Each side serves a request of its largest context, and a
   start-up one block past it must be refused (`max_context_ratio_kvp2`).
2. Decode and prefill. At three contexts up to the longest both serve, one
   request alone: TTFT and mean decode step time (TPOT) from the engine's own
   step loop; `decode_tpot_ratio_kvp2` and `prefill_ttft_ratio_kvp2` at the
   longest, the curve in `curve`. KVP 2 runs this with shards of half that
   longest context (same KV memory per worker), so it spans both groups; the
   shorter contexts stay in the first group. Bytes each KVP = 2 worker sends per decode
   step, at two contexts 4x apart (`kvp_comm_bytes_per_decode_step`).
3. Head of line (`--hol`, on by default): `make bench-hol`'s workload against
   Medha on one worker (one core) and Medha with KVP = 2 (two workers, one
   core each), the long prompt's KV spanning both groups.

    python benchmarks/bench_kvp.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import RESULTS, machine, write_json  # noqa: E402

from benchmarks.harness.models import build_synthetic  # noqa: E402

SIDE = Path(__file__).resolve().parent / "harness" / "kvp_side.py"
BLOCK = 32
TARGETS = {"max_context_ratio_kvp2": ">= 1.9", "decode_tpot_ratio_kvp2": "<= 0.6",
           "prefill_ttft_ratio_kvp2": "<= 0.8",
           "kvp_comm_bytes_per_decode_step": "equal within 1 % at two contexts 4x apart",
           "hol": "KVP 2 short-request figures at least as good as KVP 1 (ratios <= 1), "
                  "outputs identical"}


def side(model: str, spec: dict, env: dict, timeout: float = 3600) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, str(SIDE), model, json.dumps(spec)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **env})
    sys.stderr.write("".join(l + "\n" for l in proc.stderr.splitlines() if "  kvp " in l))
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    return proc.returncode, (json.loads(line[7:]) if line else None), proc.stderr


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=1025, help="KV blocks of 32 tokens per worker")
    ap.add_argument("--decode-tokens", type=int, default=48)
    ap.add_argument("--hol", type=int, default=1, help="run the head-of-line part (1/0)")
    a = ap.parse_args(argv)
    model = str(build_synthetic())
    cap1 = (a.blocks - 1) * BLOCK
    contexts = [cap1 // 4, cap1 // 2, cap1]
    one_core = [min(os.sched_getaffinity(0))]
    out: dict = {"machine": machine(), "blocks_per_worker": a.blocks, "block_size": BLOCK,
                 "threads": "one core per worker: KVP 1 is one process (engine and its worker) "
                            "pinned to one core; KVP 2 has two workers on one core each and the "
                            "engine process unpinned", "targets": TARGETS}
    D = a.decode_tokens
    runs = {}
    for g, cores in ((1, one_core), (2, None)):
        # KVP 1: the whole engine (one worker, in process) pinned to one core;
        # KVP 2: two workers, one core each (VLLM_CPU_OMP_THREADS_BIND).
        cap = g * cap1
        if g > 1:
            # The curve: shards of half the longest common context, so that
            # context spans both groups (with the default shard, one worker's
            # whole cache, every context KVP 1 can hold stays in group 0).
            shard = cap1 // 2
            print(f"== KVP {g}, shards of {shard} tokens: contexts {contexts}", flush=True)
            rc, res, err = side(model, {"kvp": g, "blocks": a.blocks, "max_model_len": cap1,
                                        "shard": shard, "contexts": contexts,
                                        "decode_tokens": D}, {})
            assert rc == 0 and res, err[-4000:]
            runs[g] = res
            print(f"== KVP {g}, default shards: largest context {cap}", flush=True)
            rc, res, err = side(model, {"kvp": g, "blocks": a.blocks, "max_model_len": cap,
                                        "contexts": [cap], "decode_tokens": D}, {})
        else:
            print(f"== KVP {g}: contexts {contexts}", flush=True)
            rc, res, err = side(model, {"kvp": g, "blocks": a.blocks, "max_model_len": cap,
                                        "contexts": contexts, "decode_tokens": D, "cores": cores}, {})
            runs[g] = res
        assert rc == 0 and res, err[-4000:]
        rc, _, err = side(model, {"kvp": g, "blocks": a.blocks, "max_model_len": cap + BLOCK,
                                  "contexts": [], "decode_tokens": D, "cores": cores}, {})
        refused = rc != 0
        reason = next((l for l in reversed(err.splitlines()) if "max_model_len" in l or
                       "max-model-len" in l), "")[-400:]
        print(f"   start-up at {cap + BLOCK} tokens: {'refused' if refused else 'SERVED'}: {reason}",
              flush=True)
        out[f"kvp{g}"] = {"largest_context_served": cap, "refused_at": cap + BLOCK if refused else None,
                          "refusal": reason, "largest": res, "curve_run": runs[g]}
    out["max_context_ratio_kvp2"] = out["kvp2"]["largest_context_served"] / out["kvp1"]["largest_context_served"] \
        if out["kvp1"]["refused_at"] and out["kvp2"]["refused_at"] else None
    c1, c2 = runs[1]["contexts"], runs[2]["contexts"]
    shard2 = runs[2]["shard_tokens"]
    out["curve_kvp2_shard_tokens"] = shard2
    out["curve"] = [{"context": L, "kvp2_groups_spanned": -(-L // shard2), "tpot_ms_kvp1": 1000 * c1[str(L)]["tpot_s"],
                     "tpot_ms_kvp2": 1000 * c2[str(L)]["tpot_s"],
                     "decode_tpot_ratio_kvp2": c2[str(L)]["tpot_s"] / c1[str(L)]["tpot_s"],
                     "ttft_s_kvp1": c1[str(L)]["ttft_s"], "ttft_s_kvp2": c2[str(L)]["ttft_s"],
                     "prefill_ttft_ratio_kvp2": c2[str(L)]["ttft_s"] / c1[str(L)]["ttft_s"],
                     "merge_ms_per_decode_step_kvp2": 1000 * c2[str(L)]["merge_s_per_decode_step"]}
                    for L in contexts]
    out["decode_tpot_ratio_kvp2"] = out["curve"][-1]["decode_tpot_ratio_kvp2"]
    out["prefill_ttft_ratio_kvp2"] = out["curve"][-1]["prefill_ttft_ratio_kvp2"]
    lo, hi = str(contexts[0]), str(contexts[-1])
    b_lo, b_hi = c2[lo]["decode_sent_bytes_per_step"], c2[hi]["decode_sent_bytes_per_step"]
    out["kvp_comm_bytes_per_decode_step"] = {lo: b_lo, hi: b_hi, "ratio": b_hi / b_lo}
    if a.hol:
        from benchmarks.harness.hol import HolConfig, run_hol
        from benchmarks.harness.workload import default_trace_path

        cfg = HolConfig(model=model, trace=str(default_trace_path()),
                        servers=("medha-1core", "medha-kvp2"), log_dir=RESULTS / "logs" / "kvp_hol")
        hol = run_hol(cfg)
        out["hol"] = {k: v for k, v in hol.items() if k not in ("servers",)}
        out["hol"]["servers"] = {n: {k: v for k, v in s.items() if k != "short_ttft_all_s"}
                                 for n, s in hol["servers"].items()}
    out["command"] = "python benchmarks/bench_kvp.py " + " ".join(argv or sys.argv[1:])
    print_table(out)
    print(f"wrote {write_json('kvp.json', out)}")
    return out


def print_table(out: dict) -> None:
    print(f"\n{'context':>8s} {'TPOT KVP1':>10s} {'TPOT KVP2':>10s} {'ratio':>6s} {'TTFT KVP1':>10s} "
          f"{'TTFT KVP2':>10s} {'ratio':>6s} {'merge/step':>10s}")
    for r in out["curve"]:
        print(f"{r['context']:8d} {r['tpot_ms_kvp1']:8.2f}ms {r['tpot_ms_kvp2']:8.2f}ms "
              f"{r['decode_tpot_ratio_kvp2']:6.3f} {r['ttft_s_kvp1']:9.2f}s {r['ttft_s_kvp2']:9.2f}s "
              f"{r['prefill_ttft_ratio_kvp2']:6.3f} {r['merge_ms_per_decode_step_kvp2']:8.2f}ms")
    for k in ("max_context_ratio_kvp2", "decode_tpot_ratio_kvp2", "prefill_ttft_ratio_kvp2",
              "kvp_comm_bytes_per_decode_step"):
        print(f"  {k:32s} {out[k]}")
    for k, v in out.get("hol", {}).items():
        if k.startswith("kvp2_") or k == "outputs_identical":
            print(f"  hol {k:28s} {v}")


if __name__ == "__main__":
    main()
