#!/usr/bin/env python
"""Benchmarks of the KV-sharded attention kernels (medha_vllm.kernels).

    python benchmarks/bench_kernels.py            # defaults: the issue's spec, ~5 min on 2 cores
    python benchmarks/bench_kernels.py --quick    # seconds, smoke test

Writes benchmarks/results/kernels.json (CPU) and, when CUDA is present,
benchmarks/results/kernels_gpu.json; prints a table. Figures:

* chunk_cost_curve: total attention time of one long prompt (``--context``
  tokens) prefilled in chunks of 32..2048 tokens, each chunk a causal call
  over all KV so far (paged). Target chunk_cost_ratio_32_vs_2048 <= 1.5 (CPU).
* merge_overhead: a ``--decode-context`` decode split into 2..8 equal shards;
  merge time / summed shard-attention time (target <= 0.05), also reported
  against the slowest shard (the critical path when groups run in parallel).
  Calls are interleaved, so the merge runs with caches as attention left them.
* shard_attention_vs_sdpa: fast paged shard attention / torch
  F.scaled_dot_product_attention (enable_gqa) on the same unpaged shape.
  Target <= 1.25.
* GPU only: decode bandwidth utilisation over a 128K shard and the chunk
  ratio at 256K.

Block tables are "contiguous" (blocks in physical order, as a fresh vLLM
pool hands them out), "random" (blocks scattered over a pool twice the size:
fragmentation) or "reversed"; the CPU path reads runs of consecutive blocks
in place and copies (gathers) scattered ones, so both default orders are
reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    from medha_vllm.kernels import ShardMetadata, merge_attn_states, shard_attention
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kernels import ShardMetadata, merge_attn_states, shard_attention  # type: ignore[no-redef]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RESULTS = Path(__file__).resolve().parent / "results"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int, warmup: int = 1, reduce=statistics.median) -> float:
    """Wall time of fn() in seconds over `repeats` runs (median by default)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return reduce(times)


def timed_interleaved(fns, device, repeats: int) -> list[float]:
    """Median wall time of each fn, run in alternation so shared-machine noise hits all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def make_pool(num_tokens, args, device, order, seed=0):
    """Paged K/V for one sequence: (key_cache, value_cache, block_table [1, n] int32).

    order: "contiguous" (ids 0..n-1), "reversed" (n-1..0, what vLLM's free
    queue hands out after a request of the same size was freed) or "random"
    (n ids drawn at random from a pool of 2n+1 blocks, i.e. a fragmented pool
    shared with other requests).
    """
    bs, dtype = args.block_size, DTYPES[args.dtype]
    n_blocks = -(-num_tokens // bs)
    pool = 2 * n_blocks + 1 if order == "random" else n_blocks
    gen = torch.Generator().manual_seed(seed)
    shape = (pool, bs, args.num_kv_heads, args.head_size)
    kc = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    vc = torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
    ids = {
        "contiguous": lambda: torch.arange(n_blocks),
        "reversed": lambda: torch.arange(n_blocks).flip(0),
        "random": lambda: torch.randperm(pool, generator=gen)[:n_blocks],
    }[order]()
    return kc, vc, ids.to(device=device, dtype=torch.int32)[None]


def meta_for(table, kv_len, q_len, q_first, causal, device, table_offset=0, shard_start=0):
    """One sequence: q_len queries at absolute positions q_first..; the shard holds kv_len
    tokens from absolute position shard_start, in blocks table[0, table_offset:]."""
    return ShardMetadata(
        query_start_loc=torch.tensor([0, q_len], dtype=torch.int32, device=device),
        block_table=table[:, table_offset:],
        kv_lens=torch.tensor([kv_len], dtype=torch.int32, device=device),
        causal=causal,
        query_positions=torch.arange(q_first, q_first + q_len, dtype=torch.int32, device=device),
        shard_start=torch.tensor([shard_start], dtype=torch.int32, device=device),
        max_query_len=q_len,
        max_kv_len=kv_len,
    )


def chunk_cost_curve(args, device, context, order):
    """Total time to attend a `context`-token prompt in chunks of each size.

    NOTE(medha): the sizes are measured interleaved, in `rounds` passes that
    each time a strided 1/rounds of every size's calls, so a burst of other
    load on a shared machine lands on all sizes alike instead of on one; each
    call is timed `--chunk-repeats` times and its minimum kept.
    """
    kc, vc, table = make_pool(context, args, device, order)
    dtype, hq, d = DTYPES[args.dtype], args.num_q_heads, args.head_size
    queries = {c: torch.randn(c, hq, d, device=device).to(dtype) for c in args.chunks}
    metas = {c: [meta_for(table, p + c, c, p, True, device) for p in range(0, context, c)] for c in args.chunks}
    rounds = min(len(m) for m in metas.values())
    totals = dict.fromkeys(args.chunks, 0.0)
    for c in args.chunks:  # warm-up
        shard_attention(queries[c], kc, vc, metas[c][0])
    for r in range(rounds):
        for c in args.chunks:
            for m in metas[c][r::rounds]:
                totals[c] += timed(lambda: shard_attention(queries[c], kc, vc, m), device, args.chunk_repeats, 0, min)
    for c in args.chunks:
        print(f"  chunk {c:5d} [{order}]: {totals[c]:8.2f} s total, {len(metas[c])} calls", flush=True)
    # NOTE(medha): named after the default sweep; it is smallest chunk / largest chunk.
    ratio = totals[min(totals)] / totals[max(totals)] if len(totals) > 1 else float("nan")
    return {"context": context, "block_order": order, "total_s": totals, "chunk_cost_ratio_32_vs_2048": ratio,
            "ratio_chunks": [min(totals), max(totals)], "interleaved_rounds": rounds}  # fmt: skip


def merge_overhead(args, device, order):
    """Decode over `decode_context` tokens split in N equal shards: merge vs attention time."""
    ctx, hq, d = args.decode_context, args.num_q_heads, args.head_size
    dtype = DTYPES[args.dtype]
    kc, vc, table = make_pool(ctx, args, device, order, seed=1)
    q = torch.randn(1, hq, d, device=device).to(dtype)
    rows = []
    for n in args.shards:
        # Equal shards, block aligned; the last one owns the query token (causal).
        per = -(-ctx // n // args.block_size) * args.block_size
        bounds = [min(i * per, ctx) for i in range(n)] + [ctx]
        metas = [
            meta_for(table, hi - lo, 1, ctx - 1, j == n - 1, device, lo // args.block_size, lo)
            for j, (lo, hi) in enumerate(zip(bounds, bounds[1:]))
        ]
        states = [shard_attention(q, kc, vc, m) for m in metas]
        # NOTE(medha): stacked, as an all-gather across KVP groups delivers them.
        outs, lses = torch.stack([s[0] for s in states]), torch.stack([s[1] for s in states])
        fns = [lambda m=m: shard_attention(q, kc, vc, m) for m in metas] + [lambda: merge_attn_states(outs, lses)]
        *shard_times, t_merge = timed_interleaved(fns, device, args.repeats_fast)
        rows.append({
            "num_shards": n,
            "shard_attention_s": shard_times,
            "merge_s": t_merge,
            "merge_overhead_fraction": t_merge / sum(shard_times),
            "merge_vs_slowest_shard": t_merge / max(shard_times),
        })  # fmt: skip
        print(f"  {n} shards [{order}]: attention {sum(shard_times) * 1e3:.2f} ms (slowest "
              f"{max(shard_times) * 1e3:.2f}), merge {t_merge * 1e6:.0f} us", flush=True)  # fmt: skip
    return {"decode_context": ctx, "block_order": order, "rows": rows,
            "max_merge_overhead_fraction": max(r["merge_overhead_fraction"] for r in rows)}  # fmt: skip


def vs_sdpa(args, device, order):
    """Paged shard attention vs torch SDPA on the same unpaged tensors."""
    from torch.nn.attention.bias import causal_lower_right

    ctx, hq, hkv, d = args.sdpa_context, args.num_q_heads, args.num_kv_heads, args.head_size
    dtype = DTYPES[args.dtype]
    kc, vc, table = make_pool(ctx, args, device, order, seed=2)
    flat = table[0].long()
    k = kc[flat].flatten(0, 1)[:ctx].transpose(0, 1).unsqueeze(0).contiguous()  # [1, hkv, ctx, d]
    v = vc[flat].flatten(0, 1)[:ctx].transpose(0, 1).unsqueeze(0).contiguous()
    rows = []
    for name, q_len, causal in [("decode", 1, False), ("chunk_noncausal", args.sdpa_chunk, False),
                                ("chunk_causal_owner", args.sdpa_chunk, True)]:  # fmt: skip
        q = torch.randn(q_len, hq, d, device=device).to(dtype)
        m = meta_for(table, ctx, q_len, ctx - q_len, causal, device)
        q4 = q.transpose(0, 1).unsqueeze(0)
        mask = causal_lower_right(q_len, ctx) if causal else None
        reps = args.repeats_fast if q_len == 1 else args.repeats_slow
        t_ours, t_sdpa = timed_interleaved(
            [lambda: shard_attention(q, kc, vc, m),
             lambda: F.scaled_dot_product_attention(q4, k, v, attn_mask=mask, enable_gqa=True)], device, reps
        )  # fmt: skip
        rows.append({"shape": name, "q_len": q_len, "kv_len": ctx, "causal": causal, "ours_s": t_ours,
                     "sdpa_s": t_sdpa, "ratio": t_ours / t_sdpa})  # fmt: skip
        print(f"  {name:20s} [{order}]: ours {t_ours * 1e3:9.2f} ms  sdpa {t_sdpa * 1e3:9.2f} ms  "
              f"ratio {t_ours / t_sdpa:.3f}", flush=True)  # fmt: skip
    return {"block_order": order, "rows": rows, "max_ratio": max(r["ratio"] for r in rows)}


def decode_bandwidth(args, device, context):
    """GPU: bytes of K+V read by one decode over `context` tokens / time, vs a device copy."""
    kc, vc, table = make_pool(context, args, device, "random", seed=3)
    q = torch.randn(1, args.num_q_heads, args.head_size, device=device).to(DTYPES[args.dtype])
    m = meta_for(table, context, 1, context - 1, True, device)
    t = timed(lambda: shard_attention(q, kc, vc, m), device, args.repeats_fast * 4)
    kv_bytes = 2 * context * args.num_kv_heads * args.head_size * kc.element_size()
    buf = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    t_copy = timed(lambda: buf.clone(), device, 10)
    copy_bw = 2 * buf.numel() / t_copy  # read + write
    return {"context": context, "time_s": t, "kv_bytes": kv_bytes, "achieved_GBps": kv_bytes / t / 1e9,
            "device_copy_GBps": copy_bw / 1e9, "bandwidth_utilisation": (kv_bytes / t) / copy_bw}  # fmt: skip


def machine_info(device):
    # NOTE(medha): the load average says whether other processes shared the
    # cores during the run (2-core CI machines often run a vLLM worker too).
    info = {"load_avg_1_5_15": os.getloadavg(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(args, device, gpu: bool):
    orders = {"both": ["contiguous", "random"], "all": ["contiguous", "reversed", "random"]}.get(
        args.block_order, [args.block_order]
    )
    res = {"machine": machine_info(device), "parameters": {k: v for k, v in vars(args).items()},
           "backend": "triton" if gpu else "cpu", "targets": {"chunk_cost_ratio_32_vs_2048": 1.5,
           "merge_overhead_fraction": 0.05, "shard_attention_vs_sdpa": 1.25}}  # fmt: skip
    ctx = args.gpu_context if gpu else args.context
    print(f"== chunk_cost_curve ({ctx} tokens, {args.num_q_heads}/{args.num_kv_heads} heads x {args.head_size}, "
          f"{args.dtype}, block {args.block_size}) on {device}")  # fmt: skip
    res["chunk_cost_curve"] = [chunk_cost_curve(args, device, ctx, o) for o in orders]
    print(f"== merge_overhead ({args.decode_context}-token decode)")
    res["merge_overhead"] = [merge_overhead(args, device, o) for o in orders]
    print(f"== shard_attention_vs_sdpa ({args.sdpa_context}-token shard)")
    res["shard_attention_vs_sdpa"] = [vs_sdpa(args, device, o) for o in orders]
    if gpu:
        print(f"== decode bandwidth ({args.gpu_decode_context}-token shard)")
        res["decode_bandwidth"] = decode_bandwidth(args, device, args.gpu_decode_context)
    return res


def summary_table(res) -> str:
    lines = [f"{'metric':44s} {'block order':12s} {'value':>9s} {'target':>8s}"]
    tg = res["targets"]
    for c in res["chunk_cost_curve"]:
        lines.append(f"{'chunk_cost_ratio_32_vs_2048':44s} {c['block_order']:12s} "
                     f"{c['chunk_cost_ratio_32_vs_2048']:9.3f} {'<= ' + str(tg['chunk_cost_ratio_32_vs_2048']):>8s}")  # fmt: skip
    for m in res["merge_overhead"]:
        for r in m["rows"]:
            lines.append(f"{'merge_overhead_fraction (' + str(r['num_shards']) + ' shards)':44s} {m['block_order']:12s} "
                         f"{r['merge_overhead_fraction']:9.4f} {'<= ' + str(tg['merge_overhead_fraction']):>8s}")  # fmt: skip
    for s in res["shard_attention_vs_sdpa"]:
        for r in s["rows"]:
            lines.append(f"{'shard_attention_vs_sdpa (' + r['shape'] + ')':44s} {s['block_order']:12s} "
                         f"{r['ratio']:9.3f} {'<= ' + str(tg['shard_attention_vs_sdpa']):>8s}")  # fmt: skip
    if "decode_bandwidth" in res:
        b = res["decode_bandwidth"]
        lines.append(f"{'decode bandwidth utilisation':44s} {'random':12s} {b['bandwidth_utilisation']:9.3f}")
    return "\n".join(lines)


def parse_args(argv=None):
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--context", type=int, default=32768, help="prompt length for the CPU chunk curve")
    p.add_argument("--chunks", type=ints, default=[32, 64, 128, 256, 512, 1024, 2048])
    p.add_argument("--decode-context", type=int, default=32768)
    p.add_argument("--shards", type=ints, default=[2, 3, 4, 5, 6, 7, 8])
    p.add_argument("--sdpa-context", type=int, default=32768)
    p.add_argument("--sdpa-chunk", type=int, default=512)
    # NOTE(medha): default heads = one tensor-parallel rank (TP 4) of Llama-3-8B
    # (32 query / 8 KV heads of 128), so the default run fits ~10 minutes on 2 cores.
    p.add_argument("--num-q-heads", type=int, default=8)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--head-size", type=int, default=128)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--block-size", type=int, default=128, help="vLLM's CPU default")
    p.add_argument("--block-order", choices=["contiguous", "reversed", "random", "both", "all"], default="both",
                   help="both = contiguous + random; all adds reversed")  # fmt: skip
    p.add_argument("--chunk-repeats", type=int, default=1, help="timings per chunk call (min kept)")
    p.add_argument("--repeats-fast", type=int, default=7, help="repeats of ms-scale measurements")
    p.add_argument("--repeats-slow", type=int, default=3, help="repeats of 100ms-scale measurements")
    p.add_argument("--gpu-context", type=int, default=262144, help="chunk-curve prompt length on GPU")
    p.add_argument("--gpu-dtype", choices=sorted(DTYPES), default="bfloat16", help="dtype of the GPU section")
    p.add_argument("--gpu-decode-context", type=int, default=131072)
    # NOTE(medha): one thread by default: every figure is a ratio taken at equal
    # thread counts, and on a 2-core machine shared with a vLLM worker (which
    # polls a core) two OpenMP threads stall at barriers and the ratios swing
    # by 2x from run to run. Use --threads 2 (or 0: torch's default) for throughput.
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--no-gpu", action="store_true", help="skip the CUDA section even if a GPU is present")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    args = p.parse_args(argv)
    if args.quick:
        args.context = args.decode_context = args.sdpa_context = 2048
        args.gpu_context, args.gpu_decode_context = 4096, 4096
        args.chunks, args.shards, args.sdpa_chunk = [32, 256], [2, 4], 128
        args.repeats_fast = args.repeats_slow = 2
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    res = run(args, torch.device("cpu"), gpu=False)
    res["wall_s"] = time.perf_counter() - t0
    res["load_avg_at_end"] = os.getloadavg()
    (args.out_dir / "kernels.json").write_text(json.dumps(res, indent=2, default=str))
    print("\n" + summary_table(res) + f"\n(CPU section {res['wall_s']:.0f} s) -> {args.out_dir / 'kernels.json'}")
    if torch.cuda.is_available() and not args.no_gpu:
        t0 = time.perf_counter()
        gargs = argparse.Namespace(**{**vars(args), "dtype": args.gpu_dtype})
        gres = run(gargs, torch.device("cuda"), gpu=True)
        gres["wall_s"] = time.perf_counter() - t0
        (args.out_dir / "kernels_gpu.json").write_text(json.dumps(gres, indent=2, default=str))
        print("\n" + summary_table(gres) + f"\n-> {args.out_dir / 'kernels_gpu.json'}")
    else:
        print("no CUDA device: GPU section skipped (kernels_gpu.json not written)")


if __name__ == "__main__":
    main()
