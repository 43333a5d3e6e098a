"""Scheduler overhead (`make bench-sched`): wall time of one `schedule()` call
with 1,000 waiting and 256 running (decoding) requests, for Medha and for
vLLM's own Scheduler, on the same synthetic state. No model runs: each step's
model output is faked (one sampled token per scheduled request), which is
exactly what the scheduler sees. Writes benchmarks/results/sched.json."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, write_json  # noqa: E402


def build(scheduler_cls, model: str, max_num_seqs: int, num_blocks: int):
    import torch
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    ea = EngineArgs(model=model, max_model_len=16384, max_num_seqs=max_num_seqs,
                    max_num_batched_tokens=4096, enable_prefix_caching=True, block_size=32,
                    additional_config={"medha": {"profile": False}})
    vc: VllmConfig = ea.create_engine_config()
    vc.cache_config.num_gpu_blocks = num_blocks
    spec = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=64, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec([f"layers.{i}" for i in range(4)], spec)])
    return scheduler_cls(vllm_config=vc, kv_cache_config=kv,
                         structured_output_manager=StructuredOutputManager(vc), block_size=32,
                         hash_block_size=32, log_stats=False)


_HASHER = None


def make_request(i: int, prompt_len: int, max_tokens: int):
    global _HASHER
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    if _HASHER is None:  # as EngineCore does it (prefix caching on)
        init_none_hash(get_hash_fn_by_name("sha256"))
        _HASHER = get_request_block_hasher(32, get_hash_fn_by_name("sha256"))
    return Request(request_id=f"r{i}", prompt_token_ids=[(i * 7 + k) % 30000 + 1 for k in range(prompt_len)],
                   sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   pooling_params=None, arrival_time=time.time(), block_hasher=_HASHER)


def fake_output(sched_out):
    from vllm.v1.outputs import ModelRunnerOutput

    ids = list(sched_out.num_scheduled_tokens)
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                             sampled_token_ids=[[5] for _ in ids], logprobs=None,
                             prompt_logprobs_dict={}, pooler_output=[])


def measure(scheduler_cls, model: str, steps: int, running: int, waiting: int) -> list[float]:
    s = build(scheduler_cls, model, max_num_seqs=running, num_blocks=running * 8 + 4000)
    for i in range(running):
        s.add_request(make_request(i, 64, 10_000))
    # Bring the running set into decode.
    for _ in range(200):
        out = s.schedule()
        s.update_from_output(out, fake_output(out))
        if all(r.num_computed_tokens >= r.num_prompt_tokens for r in s.running) and len(s.running) == running:
            break
    for j in range(waiting):
        s.add_request(make_request(running + j, 512, 64))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = s.schedule()
        times.append(time.perf_counter() - t0)
        s.update_from_output(out, fake_output(out))
    assert len(s.running) == running and len(s.waiting) == waiting, (len(s.running), len(s.waiting))
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--running", type=int, default=256)
    ap.add_argument("--waiting", type=int, default=1000)
    a = ap.parse_args(argv)
    from vllm.v1.core.sched.scheduler import Scheduler

    from medha_vllm.models import build_synthetic
    from medha_vllm.scheduler import MedhaScheduler

    model = str(build_synthetic())
    res = {}
    for name, cls in (("vllm", Scheduler), ("medha", MedhaScheduler)):
        t = measure(cls, model, a.steps, a.running, a.waiting)[10:]  # drop warm-up steps
        res[name] = {"median_ms": 1000 * statistics.median(t), "p90_ms": 1000 * sorted(t)[int(0.9 * len(t))],
                     "mean_ms": 1000 * statistics.fmean(t), "steps": len(t)}
    out = {"running": a.running, "waiting": a.waiting, "results": res,
           "medha_median_ms": res["medha"]["median_ms"],
           "medha_over_vllm_median": res["medha"]["median_ms"] / res["vllm"]["median_ms"],
           "targets": {"medha_median_ms": "<= 1.0", "medha_over_vllm_median": "<= 2.0"},
           "machine": machine(), "command": "python benchmarks/bench_sched.py " + " ".join(argv or sys.argv[1:])}
    print(f"{'scheduler':10s} {'median':>10s} {'p90':>10s}")
    for n, r in res.items():
        print(f"{n:10s} {r['median_ms']:8.3f}ms {r['p90_ms']:8.3f}ms")
    print(f"medha / vllm median: {out['medha_over_vllm_median']:.2f}")
    print(f"wrote {write_json('sched.json', out)}")


if __name__ == "__main__":
    main()
