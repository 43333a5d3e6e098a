"""One side of `make bench-kvp`, run in its own process: a Medha engine with
KV-cache parallelism G (1 or more) on the synthetic model, float32, a fixed
KV cache per worker, one core per worker; it serves one request at a time
and times each step.

argv: model, then a JSON object {"kvp": G, "blocks": per-worker blocks,
"max_model_len": M, "contexts": [L, ...], "decode_tokens": D, "shard": S | null,
"cores": [core, ...] | null}: with cores, this process (engine core and,
with KVP 1, its in-process worker) is pinned to them. For each context L: a prompt of L - D tokens, D
output tokens (greedy, ignore_eos); TTFT (arrival to first token) and the
mean decode step time (TPOT) are taken from the engine's own step loop, and
the bytes the workers sent to other groups during the decode steps are read
from the workers (kvp/runtime.py counters). Prints `RESULT <json>`; a refused
start-up exits non-zero with vLLM's message.
"""

import json
import os
import sys
import time


def worker_counters(worker):
    from medha_vllm.kvp import runtime

    rt = runtime.get()
    return None if rt is None else {"group": rt.group, "bytes": rt.bytes_sent, "merges": rt.merges,
                                    "merge_s": rt.merge_time_s}


def worker_threads(worker):
    import torch

    return {"threads": torch.get_num_threads(), "affinity": sorted(os.sched_getaffinity(0)),
            "pid": os.getpid()}


if __name__ == "__main__":
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # worker_counters travels pickled
    spec = json.loads(sys.argv[2])
    if spec.get("cores"):
        # KVP 1: the whole engine (one in-process worker) on these cores,
        # pinned before torch sizes its thread pool.
        os.sched_setaffinity(0, spec["cores"])
    from vllm import LLM, SamplingParams

    from medha_vllm import SCHEDULER_CLS

    model = sys.argv[1]
    medha = {"profile": False, "attention_backend": "medha", "kv_parallel_size": spec["kvp"],
             "min_chunk_size": 32, "max_chunk_size": 2048, "target_batch_time_s": 10.0,
             "solo_batch_time_s": 10.0}
    if spec.get("shard"):
        medha["kvp_max_tokens_per_group"] = spec["shard"]
    t0 = time.perf_counter()
    llm = LLM(model=model, dtype="float32", max_model_len=spec["max_model_len"], seed=0,
              block_size=32, enforce_eager=True, enable_prefix_caching=False,
              num_gpu_blocks_override=spec["blocks"], max_num_batched_tokens=2048,
              scheduler_cls=SCHEDULER_CLS, additional_config={"medha": medha})
    out = {"startup_s": time.perf_counter() - t0, "contexts": {}}
    out["worker_threads"] = llm.collective_rpc(worker_threads)
    sched = llm.llm_engine.engine_core.engine_core.scheduler
    out["shard_tokens"] = sched.kvp.shard_tokens if sched.kvp else None
    out["scheduler_blocks"] = sched.kv_cache_config.num_blocks
    engine = llm.llm_engine
    D = spec["decode_tokens"]
    for L in spec.get("contexts", []):
        prompt = {"prompt_token_ids": [(k * 104729 + L) % 40000 + 10 for k in range(L - D)]}
        sp = SamplingParams(max_tokens=D, temperature=0.0, ignore_eos=True)
        before = llm.collective_rpc(worker_counters)
        t_add = time.perf_counter()
        engine.add_request(f"ctx{L}", prompt, sp)
        first, steps, counters_at_first = None, [], None
        while engine.has_unfinished_requests():
            outs = engine.step()
            now = time.perf_counter()
            for o in outs:
                n = len(o.outputs[0].token_ids)
                if n and first is None:
                    first = now
                    counters_at_first = llm.collective_rpc(worker_counters)
                    t_last = time.perf_counter()  # the RPC is not a decode step
                elif n and first is not None:
                    steps.append(now - t_last)
                    t_last = now
        after = llm.collective_rpc(worker_counters)
        row = {"ttft_s": first - t_add, "tpot_s": sum(steps) / len(steps), "decode_steps": len(steps),
               "tpot_steps_s": steps}
        if counters_at_first[0] is not None:
            sent = sum(a["bytes"] - c["bytes"] for a, c in zip(after, counters_at_first))
            merges = sum(a["merges"] - c["merges"] for a, c in zip(after, counters_at_first))
            row.update(decode_sent_bytes_per_step=sent / len(steps),
                       decode_merges_per_step=merges / len(steps),
                       merge_s_per_decode_step=sum(a["merge_s"] - c["merge_s"] for a, c in
                                                   zip(after, counters_at_first)) / len(after) / len(steps),
                       prefill_merge_s=sum(c["merge_s"] - b["merge_s"] for c, b in
                                           zip(counters_at_first, before)) / len(after))
        out["contexts"][str(L)] = row
        print(f"  kvp {spec['kvp']} context {L}: TTFT {row['ttft_s']:.2f} s, TPOT "
              f"{1000 * row['tpot_s']:.2f} ms", file=sys.stderr, flush=True)
    print("RESULT " + json.dumps(out), flush=True)
