"""Scheduler overhead (`make bench-sched`): wall time of `schedule()` alone
and of a whole engine step (`schedule()` + `update_from_output()`), Medha
against vLLM's own Scheduler, on the same synthetic state, with no model:
each step's model output is faked (one sampled token for every request whose
prefill completed or that decoded), which is exactly what the scheduler sees.

The state exercises Medha's real path: 256 running decodes, running
prefills in progress, free running slots (max_num_seqs 512) and 1,000
waiting requests of mixed lengths (prompt and output lengths from the Azure
trace, prompts capped at 4,096 tokens), so every step ranks the waiting queue
(LARS keys, the waiting cut), searches chunk sizes for the prefills in the
plan and admits some; Medha uses a fixed, profile-like predictor.

Same state: each sample builds the state afresh with vLLM's own scheduling
logic (the base-class methods, identical for both schedulers: same request
ids, lengths, arrival times, same running set), then times the first few
steps of the scheduler under test; waiting requests are replenished to 1,000
after every step. The two schedulers' samples are interleaved.
Writes benchmarks/results/sched.json."""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from common import machine, write_json  # noqa: E402

# Coefficients of the synthetic model's profile on the project's CPU (s):
# const, per token, per M prefill pairs, per M context read, per M decode pairs, per seq.
PREDICTOR = [0.012, 6.0e-5, 0.040, 0.010, 0.030, 5.0e-5]


def build(scheduler_cls, model: str, max_num_seqs: int, num_blocks: int, token_budget: int):
    import torch
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    ea = EngineArgs(model=model, max_model_len=16384, max_num_seqs=max_num_seqs,
                    max_num_batched_tokens=token_budget, enable_prefix_caching=True,
                    block_size=32, additional_config={"medha": {"profile": False}})
    vc = ea.create_engine_config()
    vc.cache_config.num_gpu_blocks = num_blocks
    spec = FullAttentionSpec(block_size=32, num_kv_heads=2, head_size=64, dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec([f"layers.{i}" for i in range(4)], spec)])
    s = scheduler_cls(vllm_config=vc, kv_cache_config=kv,
                      structured_output_manager=StructuredOutputManager(vc), block_size=32,
                      hash_block_size=32, log_stats=False)
    if hasattr(s, "set_predictor"):
        from medha_vllm.policy.predictor import LinearBatchPredictor

        s.set_predictor(LinearBatchPredictor(list(PREDICTOR)))
    return s


_HASHER = None


def make_request(rid: str, prompt_len: int, max_tokens: int, arrival: float):
    global _HASHER
    from vllm.sampling_params import SamplingParams
    from vllm.utils.hashing import get_hash_fn_by_name
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
    from vllm.v1.request import Request

    if _HASHER is None:  # as EngineCore does it (prefix caching on)
        init_none_hash(get_hash_fn_by_name("sha256"))
        _HASHER = get_request_block_hasher(32, get_hash_fn_by_name("sha256"))
    seed = sum(map(ord, rid))
    return Request(request_id=rid,
                   prompt_token_ids=[(seed * 7 + k * 13) % 30000 + 1 for k in range(prompt_len)],
                   sampling_params=SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                   pooling_params=None, arrival_time=arrival, block_hasher=_HASHER)


def fake_output(sched, sched_out):
    from vllm.v1.outputs import ModelRunnerOutput

    ids = list(sched_out.num_scheduled_tokens)
    done = [sched.requests[r].num_computed_tokens >= sched.requests[r].num_tokens for r in ids]
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                             sampled_token_ids=[[5] if d else [] for d in done], logprobs=None,
                             prompt_logprobs_dict={}, pooler_output=[])


class Workload:
    """The same request stream for every scheduler and run."""

    def __init__(self, seed: int, max_prompt: int) -> None:
        from benchmarks.harness.workload import default_trace_path, read_trace

        rng = random.Random(seed)
        rows = read_trace(default_trace_path())
        self.items = [(max(16, min(p, max_prompt)), max(8, min(d, 512)))
                      for _, p, d in (rows[rng.randrange(len(rows))] for _ in range(20_000))]
        self.t0 = time.time()

    def request(self, i: int):
        p, d = self.items[i % len(self.items)]
        return make_request(f"w{i}", p, d, self.t0 + 0.001 * i)


def measure(scheduler_cls, model: str, wl: Workload, steps: int, running: int, waiting: int,
            max_num_seqs: int, token_budget: int, warm_steps: int) -> tuple[list[float], list[float], dict]:
    """Build the state with vLLM's own scheduling logic (the base-class
    methods, so it is the same state for both schedulers), then time `steps`
    steps of `scheduler_cls` itself."""
    from vllm.v1.core.sched.scheduler import Scheduler

    s = build(scheduler_cls, model, max_num_seqs, num_blocks=200_000, token_budget=token_budget)
    medha = scheduler_cls is not Scheduler
    if medha:
        hook, s.need_mamba_block_aligned_split = s.need_mamba_block_aligned_split, False

    def base_step():
        out = Scheduler.schedule(s)
        Scheduler.update_from_output(s, out, fake_output(s, out))

    for i in range(running):
        s.add_request(make_request(f"d{i}", 64, 100_000, wl.t0 - 10.0))
    for _ in range(200):  # bring the running set into decode
        base_step()
        if all(r.num_computed_tokens >= r.num_prompt_tokens for r in s.running):
            break
    next_id = 0

    def refill():
        nonlocal next_id
        while len(s.waiting) < waiting:
            s.add_request(wl.request(next_id))
            next_id += 1

    refill()
    for _ in range(warm_steps):  # running prefills in progress, as vLLM admits them
        base_step()
        refill()
    state = {"running": len(s.running), "running_prefills": sum(
        r.num_computed_tokens < r.num_prompt_tokens for r in s.running), "waiting": len(s.waiting)}
    if medha:
        from medha_vllm.engine_view import build_view

        s.need_mamba_block_aligned_split = hook
        # NOTE: in a live engine every request already has its slack state
        # (made once, when first seen); make them now, outside the timing.
        build_view(s)
    sched_t, step_t = [], []
    inner = []  # Medha: time in vLLM's own schedule() (super()), per step
    if medha:
        import functools

        base = Scheduler.schedule

        @functools.wraps(base)
        def timed_base(self, *args, **kwargs):
            t = time.perf_counter()
            try:
                return base(self, *args, **kwargs)
            finally:
                inner.append(time.perf_counter() - t)

        Scheduler.schedule = timed_base
    try:
        steps_out = _timed_steps(s, steps, refill, sched_t, step_t, state)
    finally:
        if medha:
            Scheduler.schedule = base
    if medha:
        state["vllm_part_ms"] = [round(1000 * x, 3) for x in inner]
        state["medha_part_ms"] = [round(1000 * (a - b), 3) for a, b in zip(sched_t, inner)]
    return sched_t, step_t, state


def _timed_steps(s, steps, refill, sched_t, step_t, state):
    for _ in range(steps):
        t0 = time.perf_counter()
        out = s.schedule()
        t1 = time.perf_counter()
        s.update_from_output(out, fake_output(s, out))
        t2 = time.perf_counter()
        sched_t.append(t1 - t0)
        step_t.append(t2 - t0)
        state.setdefault("admitted", []).append(len(out.scheduled_new_reqs))
        state.setdefault("scheduled_prefills", []).append(
            sum(1 for n in out.num_scheduled_tokens.values() if n > 1))
        refill()


def stats(ts: list[float]) -> dict:
    ts = sorted(ts)
    return {"median_ms": 1000 * statistics.median(ts), "p90_ms": 1000 * ts[int(0.9 * (len(ts) - 1))],
            "mean_ms": 1000 * statistics.fmean(ts), "samples": len(ts)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=3, help="measured steps per built state")
    ap.add_argument("--runs", type=int, default=30, help="states built per scheduler")
    ap.add_argument("--warm-steps", type=int, default=10,
                    help="vLLM steps that admit running prefills before the timing")
    ap.add_argument("--running", type=int, default=256)
    ap.add_argument("--waiting", type=int, default=1000)
    ap.add_argument("--max-num-seqs", type=int, default=512)
    ap.add_argument("--token-budget", type=int, default=4096)
    ap.add_argument("--max-prompt-tokens", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    from vllm.v1.core.sched.scheduler import Scheduler

    from benchmarks.harness.models import build_synthetic
    from medha_vllm.scheduler import MedhaScheduler

    model = str(build_synthetic())
    wl = Workload(a.seed, a.max_prompt_tokens)
    raw = {"vllm": ([], [], []), "medha": ([], [], [])}
    # Interleave the runs (vLLM, Medha, vLLM, ...) so drift hits both alike.
    for _ in range(a.runs):
        for name, cls in (("vllm", Scheduler), ("medha", MedhaScheduler)):
            st, sp, info = measure(cls, model, wl, a.steps, a.running, a.waiting,
                                   a.max_num_seqs, a.token_budget, a.warm_steps)
            raw[name][0].extend(st)
            raw[name][1].extend(sp)
            raw[name][2].append(info)
    res = {n: {"schedule": stats(v[0]), "step": stats(v[1]), "runs": v[2]} for n, v in raw.items()}
    # Medha's schedule() = its planning (view, planner, applying the plan,
    # accounting) + vLLM's own schedule() on the planned state.
    runs = res["medha"]["runs"]
    res["medha"]["schedule_split"] = {
        "planning_median_ms": statistics.median(x for r in runs for x in r["medha_part_ms"]),
        "vllm_schedule_median_ms": statistics.median(x for r in runs for x in r["vllm_part_ms"])}
    ratio_s = res["medha"]["schedule"]["median_ms"] / res["vllm"]["schedule"]["median_ms"]
    ratio_t = res["medha"]["step"]["median_ms"] / res["vllm"]["step"]["median_ms"]
    res = {n: {k: v for k, v in r.items() if k != "runs"} | {"state_first_run": r["runs"][0]}
           for n, r in res.items()}
    out = {"state": {"running_decodes": a.running, "waiting": a.waiting, "max_num_seqs": a.max_num_seqs,
                     "token_budget": a.token_budget, "max_prompt_tokens": a.max_prompt_tokens,
                     "steps_per_state": a.steps, "states": a.runs, "warm_steps": a.warm_steps,
                     "seed": a.seed},
           "results": res,
           "medha_over_vllm_schedule_median": ratio_s,
           "medha_over_vllm_step_median": ratio_t,
           "targets": {"medha_over_vllm_schedule_median": "<= 1.5",
                       "medha_over_vllm_step_median": "<= 1.5"},
           "machine": machine(),
           "command": "python benchmarks/bench_sched.py " + " ".join(argv or sys.argv[1:])}
    print(f"{'scheduler':10s} {'schedule P50':>13s} {'P90':>9s} {'step P50':>10s} {'P90':>9s}  state")
    for n, r in res.items():
        print(f"{n:10s} {r['schedule']['median_ms']:11.3f}ms {r['schedule']['p90_ms']:7.3f}ms "
              f"{r['step']['median_ms']:8.3f}ms {r['step']['p90_ms']:7.3f}ms  {r['state_first_run']}")
    split = res["medha"]["schedule_split"]
    print(f"medha schedule() = planning {split['planning_median_ms']:.3f} ms + vLLM's schedule() "
          f"{split['vllm_schedule_median_ms']:.3f} ms (medians)")
    print(f"medha / vllm median: schedule() {ratio_s:.2f}, whole step {ratio_t:.2f} (target <= 1.5)")
    print(f"wrote {write_json('sched.json', out)}")


if __name__ == "__main__":
    main()
