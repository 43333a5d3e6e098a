"""An engine simulator over the real planner (no vLLM, no model).

`simulate_engine` is the second driver of `planner.plan_iteration` (the first
is MedhaScheduler): a fake clock, arrivals, a running set with a slot limit, a
KV cache counted in blocks, and a cost model (by default the predictor itself)
that says how long each planned iteration takes. Every decision (LARS order,
waiting cut, solo budget, chunk search, space sharing, eviction) is the
planner's, so a policy change is testable here without an engine, and the
property tests exercise what is served.

What the simulator does itself is only what vLLM does around the plan:
admitting the planned waiting requests, freeing the plan's victims (their
prefill restarts from 0: recompute), growing decodes by one token and, when a
decode finds no free block, preempting the last running request as vLLM's
FCFS victim rule does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from medha_vllm.policy.planner import (EngineView, IterationPlan, PlannerSettings, RequestView,
                                       plan_iteration)
from medha_vllm.policy.predictor import BatchShape, LinearBatchPredictor
from medha_vllm.policy.waiting import WaitingSet
from medha_vllm.policy.work import DeadlineRules, PrefillWork


@dataclass
class SimRequest:
    req_id: str
    arrival: float
    prompt_len: int
    output_len: int
    # Own TTFT deadline (s); None: the length-aware default.
    ttft_deadline_s: float | None = None
    # Filled in by the simulation.
    computed: int = 0
    generated: int = 0
    first_token: float | None = None
    finished: float | None = None
    recomputed: int = 0

    @property
    def total(self) -> int:
        return self.prompt_len + self.generated


@dataclass
class SimStep:
    # Start time of the iteration (s).
    t: float
    # The planner's decision.
    plan: IterationPlan
    # Predicted (= simulated) duration (s).
    duration_s: float


@dataclass
class EngineSimResult:
    requests: list[SimRequest]
    steps: list[SimStep] = field(default_factory=list)
    # Deadline state the planner used per request (ttft_deadline_s, total_work_s).
    slack: dict = field(default_factory=dict)

    @property
    def iterations(self) -> int:
        return len(self.steps)

    def chunks_by_step(self) -> list[tuple[float, dict[str, int]]]:
        return [(s.t, dict(s.plan.chunks)) for s in self.steps]


def simulate_engine(reqs: list[SimRequest], predictor: LinearBatchPredictor,
                    settings: PlannerSettings, rules: DeadlineRules | None = None,
                    token_budget: int = 2048, max_num_seqs: int = 256,
                    num_blocks: int = 1 << 30, block_size: int = 16, max_len: int = 1 << 17,
                    cost: Callable[[BatchShape], float] | None = None,
                    max_iterations: int = 200_000) -> EngineSimResult:
    """Run `reqs` to completion (or max_iterations) and return what happened."""
    rules = rules or DeadlineRules(tbt_slo_s=1.5 * settings.target_batch_time_s)
    work = PrefillWork(predictor, settings.target_batch_time_s, settings.min_chunk,
                       min(settings.max_chunk, token_budget), max_len)
    cost = cost or predictor.predict
    by_id = {r.req_id: r for r in reqs}
    slack = {r.req_id: work.new_slack_state(r.arrival, r.prompt_len, rules, r.ttft_deadline_s)
             for r in reqs}
    res = EngineSimResult(requests=reqs, slack=slack)
    pending = sorted(reqs, key=lambda r: (r.arrival, r.req_id))
    waiting: list[SimRequest] = []
    running: list[SimRequest] = []
    blocks: dict[str, int] = {}
    t = 0.0

    def free_blocks() -> int:
        return num_blocks - sum(blocks.values())

    def view_of(r: SimRequest) -> RequestView:
        return RequestView(r.req_id, r.prompt_len, r.total, r.computed, 0, slack[r.req_id],
                           blocks.get(r.req_id, 0), r.recomputed)

    def preempt(r: SimRequest) -> None:
        running.remove(r)
        blocks.pop(r.req_id, None)
        r.computed = 0
        r.recomputed += 1
        waiting.insert(0, r)

    last_company = float("-inf")  # the solo budget's quiet period
    while len(res.steps) < max_iterations:
        while pending and pending[0].arrival <= t + 1e-12:
            waiting.append(pending.pop(0))
        if not running and not waiting:
            if not pending:
                break
            t = pending[0].arrival
            continue
        if len(running) + len(waiting) > 1:
            last_company = t
        view = EngineView(now=t, running=tuple(view_of(r) for r in running),
                          waiting=WaitingSet.of([view_of(r) for r in waiting]),
                          num_waiting=len(waiting),
                          free_slots=max_num_seqs - len(running), free_kv_blocks=free_blocks(),
                          block_size=block_size, token_budget=token_budget,
                          last_company=last_company)
        plan = plan_iteration(view, settings, work)
        for rid in plan.victims:
            preempt(by_id[rid])
        order = {rid: i for i, rid in enumerate(plan.running_order)}
        running.sort(key=lambda r: order.get(r.req_id, len(order)))
        # vLLM's running loop: each scheduled request gets KV slots for its
        # tokens; when none are free the last running request is preempted
        # (the least urgent, by the plan's order), possibly itself.
        work_items = [(by_id[rid], by_id[rid].total - by_id[rid].computed)
                      for rid in plan.decodes] + [
            (by_id[rid], plan.chunks[rid]) for rid in plan.running_order if rid in plan.chunks]
        scheduled: list[tuple[SimRequest, int]] = []
        for r, n in work_items:
            if r not in running:
                continue
            need = -(-(r.computed + n) // block_size) - blocks.get(r.req_id, 0)
            while need > free_blocks() and running[-1] is not r:
                victim = running[-1]
                preempt(victim)
                scheduled = [(q, m) for q, m in scheduled if q is not victim]
            if need > free_blocks():
                preempt(r)
                continue
            blocks[r.req_id] = blocks.get(r.req_id, 0) + max(need, 0)
            scheduled.append((r, n))
        # vLLM's waiting loop: admit in plan order while the whole sequence fits.
        for rid in plan.admit:
            r = by_id[rid]
            if r not in waiting or -(-r.total // block_size) > free_blocks() \
                    or len(running) >= max_num_seqs:
                break
            waiting.remove(r)
            running.append(r)
            n = plan.chunks[rid]
            blocks[rid] = -(-(r.computed + n) // block_size)
            scheduled.append((r, n))
        # As MedhaScheduler measures it: one token past the prompt is a decode.
        shape = BatchShape(
            tuple((n, r.computed) for r, n in scheduled if n > 1 or r.computed < r.prompt_len),
            tuple(r.computed for r, n in scheduled if n == 1 and r.computed >= r.prompt_len))
        if not shape.num_tokens:
            if not pending:
                raise RuntimeError(f"simulation stuck at t={t:.3f}: nothing schedulable")
            t = max(t, pending[0].arrival)
            continue
        dt = cost(shape)
        res.steps.append(SimStep(t, plan, dt))
        t += dt
        for r, n in scheduled:
            r.computed += n
            if r.computed >= r.total:
                # A decode, or the last chunk of a prefill (or of a recompute),
                # samples a token.
                _sample(r, t, running, blocks)
    return res


def _sample(r: SimRequest, t: float, running: list, blocks: dict) -> None:
    """r produced one output token at time t; finish it after its last."""
    r.generated += 1
    if r.first_token is None:
        r.first_token = t
    if r.generated >= r.output_len:
        r.finished = t
        running.remove(r)
        blocks.pop(r.req_id, None)
