"""Attention-op cost per query token at long context: vLLM's CPU_ATTN vs Medha's native kernel.

One sequence whose last ``c`` tokens are the query chunk (causal) over
``--context`` tokens of KV in vLLM's CPU cache (written by vLLM's own
writer, ISA vec), synthetic-model shapes (4 query / 2 KV heads, head 64),
the process's torch thread count. Both kernels run in the same process on
the same cache and queries; the table and JSON give microseconds per query
token and the per-token cost ratio of each chunk size to the 2048 chunk.
Attention op only: the engine-iteration figure the issue names
(serving_chunk_cost_ratio_32_vs_2048) needs the backend inside vLLM.

    python benchmarks/bench_attention_kernel.py   # -> benchmarks/results/attention_kernel.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--chunks", type=int, nargs="+", default=[1, 16, 32, 128, 512, 2048])
    ap.add_argument("--repeats", type=int, default=3, help="timed passes per point; the best is kept")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "attention_kernel.json"))
    args = ap.parse_args()
    import vllm._custom_ops as ops

    from medha_vllm.kernels import ShardMetadata, cpu_attn_kv_views
    from medha_vllm.kernels import native

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    hq, hkv, d, bs, ctx = 4, 2, 64, 128, args.context
    nb = -(-ctx // bs) + 1
    kv = torch.zeros(nb, hkv, bs, 2 * d, dtype=dtype)
    kc, vc = kv.view(nb, hkv, 2 * bs, d).chunk(2, dim=2)
    k, v = torch.randn(ctx, hkv, d, dtype=dtype), torch.randn(ctx, hkv, d, dtype=dtype)
    ops.cpu_attn_reshape_and_cache(k, v, kc, vc, torch.arange(ctx), "vec")
    key_cache, value_cache = cpu_attn_kv_views(kv, "vec")
    bt = torch.arange(nb, dtype=torch.int32)[None]
    rows = []
    for c in args.chunks:
        q = torch.randn(c, hq, d, dtype=dtype)
        out = torch.empty_like(q)
        qsl, sl = torch.tensor([0, c], dtype=torch.int32), torch.tensor([ctx], dtype=torch.int32)
        md = ops.cpu_attn_get_scheduler_metadata(1, hq, hkv, d, sl, dtype, qsl, True, -1, "vec", True)
        meta = ShardMetadata(qsl, bt, sl, True, torch.arange(ctx - c, ctx), torch.tensor([0]))

        def vllm_op():
            ops.cpu_attention_with_kv_cache(q, kc, vc, out, qsl, sl, d**-0.5, True, None, -1, bt, 0.0, md, None)

        def medha_op():
            native.shard_attention_native(q, key_cache, value_cache, meta)

        n = max(3, 2048 // c) if c > 1 else 50
        us = {}
        for name, f in (("vllm", vllm_op), ("medha", medha_op)):
            f()
            best = float("inf")
            for _ in range(args.repeats):
                t = time.perf_counter()
                for _ in range(n):
                    f()
                best = min(best, (time.perf_counter() - t) / n)
            us[name] = best / c * 1e6
        vllm_op()
        o, _ = native.shard_attention_native(q, key_cache, value_cache, meta)
        rows.append({"chunk": c, "us_per_token_vllm": us["vllm"], "us_per_token_medha": us["medha"],
                     "max_abs_diff": float((o.float() - out.float()).abs().max())})
    base = next((r for r in rows if r["chunk"] == 2048), rows[-1])
    for r in rows:
        r["ratio_vs_2048_vllm"] = r["us_per_token_vllm"] / base["us_per_token_vllm"]
        r["ratio_vs_2048_medha"] = r["us_per_token_medha"] / base["us_per_token_medha"]
    print(f"context {ctx}, {args.dtype}, {torch.get_num_threads()} threads, ISA {native.host_isa()}")
    print(f"{'chunk':>6} {'vLLM us/tok':>12} {'Medha us/tok':>13} {'vLLM/2048':>10} {'Medha/2048':>11} {'max|diff|':>10}")
    for r in rows:
        print(f"{r['chunk']:>6} {r['us_per_token_vllm']:>12.1f} {r['us_per_token_medha']:>13.1f} "
              f"{r['ratio_vs_2048_vllm']:>10.2f} {r['ratio_vs_2048_medha']:>11.2f} {r['max_abs_diff']:>10.2e}")
    result = {"context": ctx, "dtype": args.dtype, "threads": torch.get_num_threads(), "isa": native.host_isa(),
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
