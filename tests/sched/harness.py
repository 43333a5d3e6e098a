"""Drive vLLM's real Scheduler (and MedhaScheduler on top of it) step by step
with faked model outputs, as vLLM's own tests/v1/core/test_scheduler.py does:
no engine, no model, a real KV-cache manager and block pool. Time is a fake
clock advanced by a predictor's cost of each batch, so adaptive chunking is
deterministic. A step's row says which requests ran with how many tokens, who
was paused (a running prefill given no chunk) and who was freed for
recompute."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

MODEL_BLOCK = 16


class FakeClock:
    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class Row:
    # Start time of the step (fake clock).
    t: float
    # req_id -> tokens scheduled (prefill chunk, or 1 for a decode).
    run: dict[str, int]
    # Running prefills given no chunk (kept in KV), by Medha's plan.
    paused: tuple[str, ...] = ()
    # Requests freed for recompute this step (Medha's victims and vLLM's own).
    recomputed: tuple[str, ...] = ()


def make_scheduler(model: str, *, medha: dict | None = None, cls=None, num_blocks: int = 4096,
                   block_size: int = MODEL_BLOCK, max_num_seqs: int = 64,
                   token_budget: int = 4096, max_model_len: int = 32768, pp: int = 1,
                   prefix_caching: bool = False, async_scheduling: bool = False,
                   prefill_schedule_interval: int = 1):
    """A scheduler on the built-in synthetic model's config (no weights loaded).
    `async_scheduling` sets the config as vLLM does on CUDA (the CPU platform
    turns it off), so MedhaScheduler builds MedhaAsyncScheduler."""
    import torch
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    from medha_vllm.scheduler import MedhaScheduler

    cls = cls or MedhaScheduler
    # The tables set urgency through declared deadlines, so the client is
    # trusted (floor 0) unless a test asks for the default floor.
    opts = {"profile": False, "min_request_deadline_s": 0.0, **(medha or {})}
    ea = EngineArgs(model=model, max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                    max_num_batched_tokens=token_budget, enable_prefix_caching=prefix_caching,
                    block_size=block_size, pipeline_parallel_size=pp,
                    prefill_schedule_interval=prefill_schedule_interval,
                    additional_config={"medha": opts},
                    # KVP's start-up wiring checks that Medha schedules.
                    **({"scheduler_cls": "medha_vllm.scheduler.MedhaScheduler"}
                       if "kv_parallel_size" in opts else {}))
    vc = ea.create_engine_config()
    vc.scheduler_config.async_scheduling = async_scheduling
    vc.cache_config.num_gpu_blocks = num_blocks
    spec = FullAttentionSpec(block_size=block_size, num_kv_heads=2, head_size=64,
                             dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=num_blocks, kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec([f"layers.{i}" for i in range(4)],
                                                         spec)])
    return cls(vllm_config=vc, kv_cache_config=kv,
               structured_output_manager=StructuredOutputManager(vc), block_size=block_size,
               hash_block_size=block_size, log_stats=False)


def make_request(req_id: str, prompt_len: int, arrival: float, max_tokens: int = 1,
                 ttft_deadline_s: float | None = None, priority: int = 0):
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request

    xargs = {"ttft_deadline_s": ttft_deadline_s} if ttft_deadline_s is not None else None
    sp = SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0,
                        extra_args=xargs)
    ids = [(hash(req_id) % 1000 + 7 * k) % 30000 + 10 for k in range(prompt_len)]
    return Request(request_id=req_id, prompt_token_ids=ids, sampling_params=sp,
                   pooling_params=None, arrival_time=arrival, priority=priority)


@dataclass
class Driver:
    """Runs a scheduler with arrivals on a fake clock, as vLLM's engine loop
    does with `stages` pipeline stages (`step_with_batch_queue`): dispatch a
    batch while fewer than `stages` are in flight and the scheduler has
    requests, else wait for the oldest batch and hand its output back. Each
    stage takes cost(batch) / stages and the stages are FIFO, so a batch's
    output returns after its whole cost (one stage: plain sequential steps).
    `in_flight` is the engine's batch queue size: `stages`, or one more with
    async scheduling (schedule the next batch while one runs)."""

    sched: object
    cost: object  # BatchShape -> seconds (e.g. a LinearBatchPredictor.predict)
    arrivals: list = field(default_factory=list)
    stages: int = 1
    in_flight: int = 0  # 0: `stages`
    clock: FakeClock = field(default_factory=FakeClock)
    rows: list[Row] = field(default_factory=list)
    finished: dict[str, float] = field(default_factory=dict)
    first_token: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if hasattr(self.sched, "clock"):
            self.sched.clock = self.clock
            self.sched.perf_clock = self.clock
        self.arrivals = sorted(self.arrivals, key=lambda r: r.arrival_time)
        self._queue: deque = deque()  # (output, done ids, return time)
        self._stage_free = [0.0] * self.stages
        self.in_flight = self.in_flight or self.stages

    def _admit_arrivals(self) -> None:
        while self.arrivals and self.arrivals[0].arrival_time <= self.clock.t + 1e-12:
            self.sched.add_request(self.arrivals.pop(0))

    def _dispatch(self) -> Row:
        from medha_vllm.policy.predictor import BatchShape

        s = self.sched
        out = s.schedule()
        plan = getattr(s, "last_plan", None)
        victims = tuple(plan.victims) if plan is not None else ()
        row = Row(self.clock.t, dict(out.num_scheduled_tokens),
                  tuple(plan.paused) if plan is not None else (),
                  tuple(sorted(set(victims) | set(out.preempted_req_ids or ()))))
        if plan is not None:
            s.last_plan = None
        done = {rid for rid in out.num_scheduled_tokens
                if s.requests[rid].num_computed_tokens >= s.requests[rid].num_tokens}
        sched_n = out.num_scheduled_tokens
        shape = BatchShape(
            tuple((n, s.requests[rid].num_computed_tokens - n) for rid, n in sched_n.items()
                  if n > 1 or rid not in done),
            tuple(s.requests[rid].num_computed_tokens - 1 for rid, n in sched_n.items()
                  if n == 1 and rid in done))
        per_stage = self.cost(shape) / self.stages if shape.num_tokens else 0.0
        t = self.clock.t
        for i in range(self.stages):
            t = max(t, self._stage_free[i]) + per_stage
            self._stage_free[i] = t
        self._queue.append((out, done, t))
        self.rows.append(row)
        return row

    def _return_oldest(self) -> None:
        out, done, t = self._queue.popleft()
        self.clock.t = max(self.clock.t, t)
        self.sched.update_from_output(out, fake_output(out, done))
        for rid in done:
            self.first_token.setdefault(rid, self.clock.t)
            req = self.sched.requests.get(rid)
            if req is None or req.is_finished():
                self.finished[rid] = self.clock.t

    def step(self) -> bool:
        """One engine-loop step; False when everything is done."""
        self._admit_arrivals()
        s = self.sched
        if len(self._queue) < self.in_flight and s.has_requests():
            self._dispatch()
            return True
        if self._queue:
            self._return_oldest()
            return True
        if self.arrivals:
            self.clock.t = max(self.clock.t, self.arrivals[0].arrival_time)
            return True
        return False

    def run(self, max_steps: int = 20_000) -> list[Row]:
        for _ in range(max_steps):
            if not self.step():
                break
        return self.rows


def fake_output(sched_out, done: set[str]):
    """One sampled token (id 7) for each request whose prefill completed or
    which decoded in this batch; nothing for partial prefill chunks."""
    from vllm.v1.outputs import ModelRunnerOutput

    ids = list(sched_out.num_scheduled_tokens)
    return ModelRunnerOutput(req_ids=ids, req_id_to_index={r: i for i, r in enumerate(ids)},
                             sampled_token_ids=[[7] if r in done else [] for r in ids],
                             logprobs=None, prompt_logprobs_dict={}, pooler_output=[])


def compress(rows: list[Row]) -> list[tuple[int, dict, tuple, tuple]]:
    """Run-length table: (number of consecutive equal steps, run, paused, recomputed)."""
    out: list[list] = []
    for r in rows:
        key = (r.run, r.paused, r.recomputed)
        if out and (out[-1][1], out[-1][2], out[-1][3]) == key:
            out[-1][0] += 1
        else:
            out.append([1, r.run, r.paused, r.recomputed])
    return [tuple(x) for x in out]
